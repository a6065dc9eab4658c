// Command vmtest runs keyguard's VM tests on stock Debian kernels in QEMU (TCG).
//
// It builds static test binaries for the packages in testvm/suites.txt and binaries for the main
// packages in testvm/bins.txt, packs them with the guest /init into an initramfs, boots one QEMU per
// kernel series (kernels fetched by testvm/setup.sh into CACHE/kernels/<series>/vmlinuz), and reads
// results, logs and files back over the serial console into testvm/out/<series>/. It exits non-zero
// on any test failure, timeout, missing result or kernel oops.
//
//	go run ./testvm/cmd/vmtest -cache .cache -kernels "6.1 6.12" [-run TestX] [-suites agent]
//	go run ./testvm/cmd/vmtest -cache .cache -demo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type config struct {
	root         string // module root
	cache        string
	kernels      []string
	arch         string // GOARCH of the kernels (all the same): amd64, or arm64 for series ending in -arm64
	run          string
	suiteFilter  *regexp.Regexp
	bench        string
	benchtime    string
	env          []string
	demo         bool
	keep         bool
	verbose      bool
	timeout      time.Duration
	suiteTimeout time.Duration
	parallel     int
	memMB        int
	cpus         int
	icount       string
	compress     string
	suitesFile   string
	binsFile     string
	out          string        // output folder, testvm/out by default
	systemd      bool          // boot the cached Debian 12 + systemd root instead of the Go /init image
	demoHold     time.Duration // -demo -systemd: how long the VM stays up after the demo; < 0 until Ctrl-C
	demoPort     int           // -demo -systemd: host loopback port forwarded to the guest console (:8443)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	os.Exit(mainErr())
}

func mainErr() int {
	var cfg config
	var kernels, suites string
	var env multiFlag
	flag.StringVar(&cfg.cache, "cache", "", "cache folder filled by testvm/setup.sh (default: <module root>/.cache)")
	flag.StringVar(&kernels, "kernels", "6.1 6.12", "kernel series to boot, space- or comma-separated (see testvm/kernels.txt)")
	flag.StringVar(&cfg.run, "run", "", "only tests matching this regexp (passed as -test.run to every suite)")
	flag.StringVar(&suites, "suites", "", "only suites whose import path matches this regexp")
	flag.StringVar(&cfg.bench, "bench", "", "also run benchmarks matching this regexp (-test.bench, -test.benchmem); results in out/<series>/bench.txt")
	flag.StringVar(&cfg.benchtime, "benchtime", "", "-test.benchtime for -bench")
	flag.Var(&env, "env", "KEY=VAL added to the tests' environment in the guest (repeatable)")
	flag.BoolVar(&cfg.demo, "demo", false, "boot the last kernel of -kernels and run /bin/keyguard-demo instead of the suites, output live (with -systemd: the demo on Debian 12 + systemd with the .deb packages and the web console)")
	flag.DurationVar(&cfg.demoHold, "demo-hold", -1, "-demo -systemd: keep the VM up this long after the demo for the operator to use the console (negative: until Ctrl-C; 0: power off at once)")
	flag.IntVar(&cfg.demoPort, "demo-port", 8443, "-demo -systemd: host port on 127.0.0.1 that QEMU forwards to the guest's console (:8443)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the build folder (binaries, initramfs) in testvm/out/build and print how to boot it by hand")
	flag.BoolVar(&cfg.verbose, "v", false, "stream every VM's console to stdout, prefixed with its series")
	flag.DurationVar(&cfg.timeout, "timeout", 45*time.Minute, "hard limit per VM, QEMU start to power-off")
	flag.DurationVar(&cfg.suiteTimeout, "suite-timeout", 35*time.Minute, "limit per test binary in the guest (its -test.timeout)")
	flag.IntVar(&cfg.parallel, "parallel", 2, "VMs run at the same time (each QEMU uses one host core)")
	flag.IntVar(&cfg.memMB, "mem", 2048, "guest memory in MB (the guard suite's event log and its parsed copy outgrow 1 GiB)")
	flag.IntVar(&cfg.cpus, "smp", 2, "guest CPUs")
	flag.StringVar(&cfg.icount, "icount", "", "QEMU -icount setting (e.g. shift=0,sleep=off): the guest clock counts executed instructions, so timings inside the guest do not depend on the host's load (make bench)")
	flag.StringVar(&cfg.compress, "compress", "none", "initramfs compression: none or gzip (the guest unpacks gzip ~1 s slower under TCG for a 60 MB image)")
	flag.StringVar(&cfg.out, "out", "testvm/out", "output folder (relative to the module root); one vmtest at a time per folder")
	flag.StringVar(&cfg.suitesFile, "suites-file", "testvm/suites.txt", "list of suite packages, relative to the module root")
	flag.StringVar(&cfg.binsFile, "bins-file", "testvm/bins.txt", "list of main packages for /bin, relative to the module root")
	flag.BoolVar(&cfg.systemd, "systemd", false, "boot Debian 12 with systemd as PID 1 (root from testvm/rootfs.sh in the cache) with the .deb packages, and run the suites in -suites-file (default testvm/systemd-suites.txt) as a systemd service")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.systemd {
		if !set["suites-file"] {
			cfg.suitesFile = "testvm/systemd-suites.txt"
		}
		if !set["bins-file"] {
			cfg.binsFile = "testvm/systemd-bins.txt"
			if cfg.demo {
				cfg.binsFile = "testvm/systemd-demo-bins.txt"
			}
		}
		if !set["mem"] {
			cfg.memMB = 1536
		}
		if !set["out"] {
			cfg.out = "testvm/out/systemd"
		}
		// Redacting a ~80 MB dump and scanning it take minutes under TCG on a busy host, and the
		// routine-tools test watches for 10 minutes (KEYGUARD_NOISE_DURATION).
		if !set["suite-timeout"] {
			cfg.suiteTimeout = 30 * time.Minute
		}
		if !set["timeout"] {
			cfg.timeout = 40 * time.Minute
			if cfg.demo {
				// The demo itself, then the operator's time with the console.
				cfg.timeout = 20*time.Minute + max(cfg.demoHold, 0)
				if cfg.demoHold < 0 {
					cfg.timeout = 100000 * time.Hour
				}
			}
		}
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vmtest: unexpected arguments %q\n", flag.Args())
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey || a.Key == slog.LevelKey {
			return slog.Attr{}
		}
		return a
	}}))

	cfg.kernels = strings.FieldsFunc(kernels, func(r rune) bool { return r == ' ' || r == ',' })
	cfg.env = env
	if err := cfg.check(suites); err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, log, &cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		return 1
	}
	if !ok {
		return 1
	}
	return 0
}

func (c *config) check(suites string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	c.root = root
	if c.cache == "" {
		c.cache = filepath.Join(root, ".cache")
	}
	if c.cache, err = filepath.Abs(c.cache); err != nil {
		return err
	}
	c.out = inRoot(root, c.out)
	if len(c.kernels) == 0 {
		return errors.New("-kernels is empty")
	}
	if c.demo && c.systemd && (c.demoPort < 1 || c.demoPort > 65535) {
		return fmt.Errorf("-demo-port %d: want 1..65535", c.demoPort)
	}
	if c.demo {
		c.kernels = c.kernels[len(c.kernels)-1:]
	}
	for i, k := range c.kernels {
		if !regexp.MustCompile(`^[0-9]+\.[0-9]+(-arm64)?$`).MatchString(k) {
			return fmt.Errorf("-kernels: %q is not a series like 6.1 or 6.12-arm64", k)
		}
		if a := archOf(k); i > 0 && a != c.arch {
			return fmt.Errorf("-kernels: %s is %s, %s is %s: run each architecture in its own vmtest (one image per run)", c.kernels[0], c.arch, k, a)
		}
		c.arch = archOf(k)
	}
	if c.arch != "amd64" && c.systemd {
		return fmt.Errorf("-systemd: the systemd root is amd64 only; %s is %s", c.kernels[0], c.arch)
	}
	if suites != "" {
		if c.suiteFilter, err = regexp.Compile(suites); err != nil {
			return fmt.Errorf("-suites: %w", err)
		}
	}
	for _, re := range []string{c.run, c.bench} {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("bad regexp %q: %w", re, err)
		}
	}
	for _, kv := range c.env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsAny(kv, "\x00") {
			return fmt.Errorf("-env %q: want KEY=VAL", kv)
		}
	}
	if c.compress != "gzip" && c.compress != "none" {
		return fmt.Errorf("-compress %q: want gzip or none", c.compress)
	}
	if c.parallel < 1 {
		c.parallel = 1
	}
	// More VMs than cores share them (each QEMU runs one thread under TCG); at most two per core.
	if c.parallel > 2*runtime.NumCPU() {
		c.parallel = 2 * runtime.NumCPU()
	}
	return nil
}

// run builds the image once, boots every kernel and prints the summary. ok is false when any
// kernel failed; err is for failures before any VM ran.
func run(ctx context.Context, log *slog.Logger, cfg *config) (bool, error) {
	total := time.Now()
	unlock, err := lockOut(ctx, log, cfg.out)
	if err != nil {
		return false, err
	}
	defer unlock()
	vms := make([]*vmResult, len(cfg.kernels))
	for i, k := range cfg.kernels {
		vm, err := findKernel(cfg.cache, cfg.out, k)
		if err != nil {
			return false, err
		}
		vms[i] = vm
	}

	buildDir, err := os.MkdirTemp("", "keyguard-vmtest-")
	if err != nil {
		return false, err
	}
	if cfg.keep {
		os.RemoveAll(buildDir)
		buildDir = filepath.Join(cfg.out, "build")
		if err := os.RemoveAll(buildDir); err != nil {
			return false, err
		}
		if err := os.MkdirAll(buildDir, 0o755); err != nil {
			return false, err
		}
	} else {
		defer os.RemoveAll(buildDir)
	}
	img, err := buildImage(ctx, log, cfg, buildDir)
	if err != nil {
		return false, err
	}
	log.Info("image built", "suites", len(img.suites), "bins", len(img.bins), "initramfs_MB", fmt.Sprintf("%.1f", float64(img.size)/1e6), "seconds", fmt.Sprintf("%.1f", img.buildTime.Seconds()))

	sem := make(chan struct{}, cfg.parallel)
	done := make(chan struct{})
	for _, vm := range vms {
		go func() {
			defer func() { done <- struct{}{} }()
			sem <- struct{}{}
			defer func() { <-sem }()
			runVM(ctx, log, cfg, img, vm)
		}()
	}
	for range vms {
		<-done
	}
	ok := report(os.Stdout, cfg, img, vms, time.Since(total))
	if cfg.keep {
		fmt.Printf("\nkept %s; boot by hand with the command in %s/<series>/qemu.txt\n", buildDir, cfg.out)
	}
	return ok, nil
}

// lockOut takes an exclusive lock on the output folder, waiting while another vmtest holds it: two
// runs would delete each other's logs.
func lockOut(ctx context.Context, log *slog.Logger, out string) (func(), error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(out, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	warned := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", out, err)
		}
		if !warned {
			log.Warn("another vmtest is using the output folder; waiting (or use -out)", "out", out)
			warned = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
