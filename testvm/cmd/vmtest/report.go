package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// report prints the per-kernel summary and returns whether every kernel passed.
func report(w io.Writer, cfg *config, img *image, vms []*vmResult, total time.Duration) bool {
	ok := true
	rel := func(p string) string {
		if r, err := filepath.Rel(cfg.root, p); err == nil {
			return r
		}
		return p
	}
	fmt.Fprintf(w, "\n=== vmtest summary (build %.1fs, initramfs %.1f MB, total %.1fs)\n", img.buildTime.Seconds(), float64(img.size)/1e6, total.Seconds())
	for _, vm := range vms {
		s := vm.sess
		verdict := "PASS"
		if len(vm.fails) > 0 || s == nil {
			verdict = "FAIL"
			ok = false
		}
		var passed, failed, skipped int
		if s != nil {
			for _, name := range s.expected {
				sr := s.suites[name]
				passed += sr.passed
				failed += sr.failed
				skipped += sr.skipped
			}
		}
		fmt.Fprintf(w, "\n%s %s (%s)\n", verdict, vm.series, vm.pkg)
		if s == nil {
			for _, f := range vm.fails {
				fmt.Fprintf(w, "  FAIL: %s\n", f)
			}
			continue
		}
		boot, suites := "-", "-"
		if s.initRec != nil {
			boot = fmt.Sprintf("%.1fs (guest uptime at /init %ss)", s.bootTime.Seconds(), s.initRec.Fields["uptime"])
		}
		if s.resultRec != nil {
			suites = s.resultRec.Fields["seconds"] + "s"
		}
		if vm.held {
			fmt.Fprintf(w, "  demo: DEMO OK, then stopped with Ctrl-C while the VM was held   boot: %s   VM wall: %.1fs\n", boot, vm.wall.Seconds())
		} else if cfg.demo {
			fmt.Fprintf(w, "  demo exit status %d   boot: %s   demo: %s   VM wall: %.1fs\n", s.suites["demo"].exit, boot, suites, vm.wall.Seconds())
		} else {
			fmt.Fprintf(w, "  tests: %d passed, %d failed, %d skipped   boot: %s   suites: %s   VM wall: %.1fs\n",
				passed, failed, skipped, boot, suites, vm.wall.Seconds())
		}
		for _, name := range s.expected {
			if vm.held {
				break
			}
			sr := s.suites[name]
			state := "ok"
			switch {
			case !sr.ended:
				state = "INCOMPLETE"
			case sr.timedOut || sr.testTimedOut:
				state = "TIMEOUT"
			case sr.exit != 0 || sr.failed > 0:
				state = fmt.Sprintf("FAIL(exit %d)", sr.exit)
			}
			fmt.Fprintf(w, "  %-12s %-40s %3d passed %3d failed %3d skipped %7.1fs\n", state, name, sr.passed, sr.failed, sr.skipped, sr.seconds)
		}
		for _, n := range s.notes {
			fmt.Fprintf(w, "  guest note: %s\n", n)
		}
		for _, f := range vm.fails {
			fmt.Fprintf(w, "  FAIL: %s\n", f)
		}
		for i, k := range s.kernel {
			if i == 20 {
				fmt.Fprintf(w, "  ... %d more kernel lines in %s\n", len(s.kernel)-i, rel(filepath.Join(vm.outDir, "serial.log")))
				break
			}
			fmt.Fprintf(w, "  kernel: %s\n", k)
		}
		if len(vm.fails) > 0 && !cfg.demo {
			for _, name := range s.expected {
				sr := s.suites[name]
				if sr.ended && sr.exit == 0 && sr.failed == 0 && !sr.timedOut {
					continue
				}
				tail := sr.tail
				if len(tail) > tailLines {
					tail = tail[len(tail)-tailLines:]
				}
				fmt.Fprintf(w, "  --- last %d lines of %s (full: %s)\n", len(tail), name, rel(filepath.Join(vm.outDir, "suites", name+".log")))
				for _, l := range tail {
					fmt.Fprintf(w, "  | %s\n", l)
				}
			}
		}
		fmt.Fprintf(w, "  logs: %s\n", rel(vm.outDir))
	}
	var sum strings.Builder
	if ok {
		sum.WriteString("vmtest: PASS on " + strings.Join(cfg.kernels, ", ") + "\n")
	} else {
		sum.WriteString("vmtest: FAIL\n")
	}
	fmt.Fprint(w, "\n"+sum.String())
	return ok
}
