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
	fmt.Fprintf(w, "\n=== vmtest summary (build %.1fs, initramfs %.1f MB, total %.1fs)\n", img.buildTime.Seconds(), float64(img.size)/1e6, total.Seconds())
	for _, vm := range vms {
		if !reportVM(w, cfg, vm) {
			ok = false
		}
	}
	if ok {
		fmt.Fprint(w, "\nvmtest: PASS on "+strings.Join(cfg.kernels, ", ")+"\n")
	} else {
		fmt.Fprint(w, "\nvmtest: FAIL\n")
	}
	return ok
}

// reportVM prints one kernel's verdict, suites, notes, failures and kernel lines; it returns whether
// the kernel passed.
func reportVM(w io.Writer, cfg *config, vm *vmResult) bool {
	s := vm.sess
	ok := len(vm.fails) == 0 && s != nil
	verdict := "PASS"
	if !ok {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "\n%s %s (%s)\n", verdict, vm.series, vm.pkg)
	if s == nil {
		for _, f := range vm.fails {
			fmt.Fprintf(w, "  FAIL: %s\n", f)
		}
		return ok
	}
	reportHeadline(w, cfg, vm)
	for _, name := range s.expected {
		if vm.held {
			break
		}
		sr := s.suites[name]
		fmt.Fprintf(w, "  %-12s %-40s %3d passed %3d failed %3d skipped %7.1fs\n", suiteState(sr), name, sr.passed, sr.failed, sr.skipped, sr.seconds)
	}
	for _, n := range s.notes {
		fmt.Fprintf(w, "  guest note: %s\n", n)
	}
	for _, f := range vm.fails {
		fmt.Fprintf(w, "  FAIL: %s\n", f)
	}
	for i, k := range s.kernel {
		if i == 20 {
			fmt.Fprintf(w, "  ... %d more kernel lines in %s\n", len(s.kernel)-i, relTo(cfg.root, filepath.Join(vm.outDir, "serial.log")))
			break
		}
		fmt.Fprintf(w, "  kernel: %s\n", k)
	}
	if len(vm.fails) > 0 && !cfg.demo {
		reportTails(w, cfg, vm)
	}
	fmt.Fprintf(w, "  logs: %s\n", relTo(cfg.root, vm.outDir))
	return ok
}

// reportHeadline prints the test counts (or the demo's outcome), boot and run times of one kernel.
func reportHeadline(w io.Writer, cfg *config, vm *vmResult) {
	s := vm.sess
	var passed, failed, skipped int
	for _, name := range s.expected {
		sr := s.suites[name]
		passed += sr.passed
		failed += sr.failed
		skipped += sr.skipped
	}
	boot, suites := "-", "-"
	if s.initRec != nil {
		boot = fmt.Sprintf("%.1fs (guest uptime at /init %ss)", s.bootTime.Seconds(), s.initRec.Fields["uptime"])
	}
	if s.resultRec != nil {
		suites = s.resultRec.Fields["seconds"] + "s"
	}
	switch {
	case vm.held:
		fmt.Fprintf(w, "  demo: DEMO OK, then stopped with Ctrl-C while the VM was held   boot: %s   VM wall: %.1fs\n", boot, vm.wall.Seconds())
	case cfg.demo:
		fmt.Fprintf(w, "  demo exit status %d   boot: %s   demo: %s   VM wall: %.1fs\n", s.suites["demo"].exit, boot, suites, vm.wall.Seconds())
	default:
		fmt.Fprintf(w, "  tests: %d passed, %d failed, %d skipped   boot: %s   suites: %s   VM wall: %.1fs\n",
			passed, failed, skipped, boot, suites, vm.wall.Seconds())
	}
}

// suiteState is a suite's one-word outcome in the summary.
func suiteState(sr *suiteResult) string {
	switch {
	case !sr.ended:
		return "INCOMPLETE"
	case sr.timedOut || sr.testTimedOut:
		return "TIMEOUT"
	case sr.exit != 0 || sr.failed > 0:
		return fmt.Sprintf("FAIL(exit %d)", sr.exit)
	}
	return "ok"
}

// reportTails prints the last lines of every suite that did not pass.
func reportTails(w io.Writer, cfg *config, vm *vmResult) {
	s := vm.sess
	for _, name := range s.expected {
		sr := s.suites[name]
		if sr.ended && sr.exit == 0 && sr.failed == 0 && !sr.timedOut {
			continue
		}
		tail := sr.tail
		if len(tail) > tailLines {
			tail = tail[len(tail)-tailLines:]
		}
		fmt.Fprintf(w, "  --- last %d lines of %s (full: %s)\n", len(tail), name, relTo(cfg.root, filepath.Join(vm.outDir, "suites", name+".log")))
		for _, l := range tail {
			fmt.Fprintf(w, "  | %s\n", l)
		}
	}
}

// relTo is p relative to root when it can be said so, else p.
func relTo(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil {
		return r
	}
	return p
}
