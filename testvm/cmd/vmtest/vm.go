package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyguard/keyguard/testvm/console"
	"github.com/keyguard/keyguard/testvm/initramfs"
)

type vmResult struct {
	series  string
	vmlinuz string
	pkg     string // "<package> <version>" from the cache
	outDir  string
	blkDir  string // CACHE/kernels/<series>/blk (testvm/blkmods.sh): modules appended to this kernel's initramfs
	initrd  string // the initramfs this kernel boots, when not the shared one

	sess      *session
	fails     []string
	held      bool // -systemd -demo: stopped with Ctrl-C after DEMO OK, while held for the operator
	wall      time.Duration
	qemuStart time.Time
}

// findKernel locates CACHE/kernels/<series>/vmlinuz and warns when it is not the pinned package.
func findKernel(cache, out, series string) (*vmResult, error) {
	dir := filepath.Join(cache, "kernels", series)
	vm := &vmResult{series: series, vmlinuz: filepath.Join(dir, "vmlinuz"), outDir: filepath.Join(out, series)}
	if _, err := os.Stat(vm.vmlinuz); err != nil {
		return nil, fmt.Errorf("kernel %s is not in the cache (%w): run `bash testvm/setup.sh %s` (make deps) first, and check that testvm/kernels.txt lists %s", series, err, cache, series)
	}
	pkg, err := os.ReadFile(filepath.Join(dir, "package"))
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w: rerun testvm/setup.sh", series, err)
	}
	vm.pkg = strings.TrimSpace(string(pkg))
	if _, err := os.Stat(filepath.Join(dir, "blk", "order")); err == nil {
		vm.blkDir = filepath.Join(dir, "blk")
	}
	return vm, nil
}

// cmdline is the kernel command line: the guest /init reads the KEYGUARD_* words as environment.
// Free-form values travel base64url-encoded so that quoting never matters.
func cmdline(cfg *config, series string) string {
	b64 := base64.RawURLEncoding.EncodeToString
	mode := "test"
	if cfg.demo {
		mode = "demo"
	}
	// Under TCG on a busy 2-core host the guest can lose the CPU for seconds; the default RCU stall
	// (21 s) and soft-lockup (20 s) detectors would then print stack traces that fail the run. They
	// stay on, with their longest thresholds, to still catch a real hang.
	words := []string{"console=" + qemuFor(cfg.arch).console, "quiet", "panic=-1", "rcupdate.rcu_cpu_stall_timeout=300", "watchdog_thresh=60", systemdWords(cfg),
		"KEYGUARD_KERNEL=" + series, "KEYGUARD_MODE=" + mode,
		"KEYGUARD_SUITE_TIMEOUT=" + strconv.Itoa(int(cfg.suiteTimeout.Seconds()))}
	if cfg.demo && cfg.systemd {
		hold := -1 // until the host stops the VM
		if cfg.demoHold >= 0 {
			hold = int(cfg.demoHold.Seconds())
		}
		words = append(words, "KEYGUARD_DEMO_HOLD="+strconv.Itoa(hold))
	}
	if cfg.arch != "arm64" && !cfg.systemd {
		// Debian's amd64 kernels have the x32 ABI built in but off unless booted with this word: the
		// suites then exercise process_vm_readv's x32 entry too (a root attacker can set it at boot).
		words = append(words, "syscall.x32=y")
	}
	for _, kv := range []struct{ k, v string }{{"KEYGUARD_RUN", cfg.run}, {"KEYGUARD_BENCH", cfg.bench}, {"KEYGUARD_BENCHTIME", cfg.benchtime}, {"KEYGUARD_ENV", strings.Join(cfg.env, "\x00")}} {
		if kv.v != "" {
			words = append(words, kv.k+"="+b64([]byte(kv.v)))
		}
	}
	var out []string
	for _, w := range words {
		if w != "" {
			out = append(out, w)
		}
	}
	return strings.Join(out, " ")
}

// qemuArch is how one architecture's guests are booted.
type qemuArch struct {
	binary, pkg string   // QEMU binary and the Debian package that has it
	machine     []string // machine and CPU arguments
	console     string   // the serial console the kernel writes to
}

// qemuFor: amd64 boots the default PC machine (8250 UART ttyS0); arm64 the virt machine with its PL011
// UART (ttyAMA0), no i8042 or PCI legacy devices, and the TCG "max" CPU with QEMU's cheap pointer
// authentication (the architected QARMA algorithm would slow every function return).
func qemuFor(arch string) qemuArch {
	if arch == "arm64" {
		return qemuArch{"qemu-system-aarch64", "qemu-system-arm", []string{"-M", "virt", "-cpu", "max,pauth-impdef=on"}, "ttyAMA0"}
	}
	return qemuArch{"qemu-system-x86_64", "qemu-system-x86", nil, "ttyS0"}
}

func qemuArgs(cfg *config, img *image, vm *vmResult) []string {
	nic := "none"
	if cfg.demo && cfg.systemd {
		// QEMU user networking; only the host's loopback port reaches the guest's console.
		nic = fmt.Sprintf("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:%d-:8443", cfg.demoPort)
	}
	args := append(qemuFor(cfg.arch).machine,
		"-accel", "tcg,thread=single", // multi-threaded TCG crashed 6.12 while patching code (notes/kernel.md)
		"-m", strconv.Itoa(cfg.memMB), "-smp", strconv.Itoa(cfg.cpus),
		"-nographic", "-no-reboot", "-nic", nic,
		"-kernel", vm.vmlinuz, "-initrd", cmp.Or(vm.initrd, img.path),
		"-append", cmdline(cfg, vm.series),
	)
	if cfg.icount != "" {
		args = append(args, "-icount", cfg.icount)
	}
	return args
}

var errInterrupted = errors.New("interrupted")

// runVM boots one kernel and fills vm.sess and vm.fails.
func runVM(ctx context.Context, log *slog.Logger, cfg *config, img *image, vm *vmResult) {
	start := time.Now()
	defer func() { vm.wall = time.Since(start) }()
	if err := os.RemoveAll(vm.outDir); err != nil {
		vm.fails = []string{err.Error()}
		return
	}
	if err := os.MkdirAll(vm.outDir, 0o755); err != nil {
		vm.fails = []string{err.Error()}
		return
	}
	if vm.blkDir != "" && !cfg.systemd {
		var err error
		if vm.initrd, err = withModules(img.path, vm.blkDir, vm.outDir); err != nil {
			vm.fails = []string{err.Error()}
			return
		}
		defer os.Remove(vm.initrd)
	}
	demo := startSession(cfg, img, vm)
	runErr, err := runQEMU(ctx, log, cfg, img, vm)
	if err != nil {
		vm.fails = []string{err.Error()}
		return
	}
	vm.fails = vm.sess.finish(runErr)
	if cfg.demo && cfg.systemd {
		vm.fails, vm.held = checkSystemdDemo(ctx, demo, runErr, vm.fails)
	}
	if err := os.WriteFile(filepath.Join(vm.outDir, "bench.txt"), vm.sess.bench.Bytes(), 0o644); err != nil {
		vm.fails = append(vm.fails, err.Error())
	}
	if vm.sess.bench.Len() == 0 {
		os.Remove(filepath.Join(vm.outDir, "bench.txt"))
	}
}

// startSession sets vm.sess up for the suites (or the demo) and returns the demo watcher, if any.
func startSession(cfg *config, img *image, vm *vmResult) *demoWatch {
	var names []string
	for _, s := range img.suites {
		names = append(names, s.name)
	}
	if cfg.demo {
		names = []string{"demo"}
	}
	var live io.Writer
	var demo *demoWatch
	switch {
	case cfg.demo:
		port := 0
		if cfg.systemd {
			port = cfg.demoPort
		}
		demo = newDemoWatch(os.Stdout, port)
		live = demo
	case cfg.verbose:
		live = &prefixWriter{prefix: "[" + vm.series + "] ", w: os.Stdout}
	}
	vm.sess = newSession(vm.series, vm.outDir, names, cfg.demo, live)
	return demo
}

// runQEMU runs the VM until it powers off, feeding its console to vm.sess. runErr says how the VM
// ended (nil: it powered off by itself); err means it could not be started.
func runQEMU(ctx context.Context, log *slog.Logger, cfg *config, img *image, vm *vmResult) (runErr, err error) {
	args := qemuArgs(cfg, img, vm)
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	q := qemuFor(cfg.arch)
	_ = os.WriteFile(filepath.Join(vm.outDir, "qemu.txt"), []byte(q.binary+" "+strings.Join(quoted, " ")+"\n"), 0o644)

	serial, err := os.Create(filepath.Join(vm.outDir, "serial.log"))
	if err != nil {
		return nil, err
	}
	defer serial.Close()

	vctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	cmd := exec.CommandContext(vctx, q.binary, args...)
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C goes to vmtest, which kills QEMU
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	log.Info("booting", "kernel", vm.series, "package", vm.pkg)
	vm.qemuStart = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v (is %s installed? make deps)", q.binary, err, q.pkg)
	}
	_ = console.Lines(io.TeeReader(stdout, serial), func(line string) {
		vm.sess.feed(line, time.Since(vm.qemuStart))
		if !cfg.demo && !cfg.verbose {
			progress(log, vm, line)
		}
	})
	waitErr := cmd.Wait()
	switch {
	case errors.Is(vctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("timed out: the VM ran longer than -timeout %s and was killed", cfg.timeout), nil
	case ctx.Err() != nil:
		return errInterrupted, nil
	case waitErr != nil:
		return fmt.Errorf("%s: %v: %s", q.binary, waitErr, strings.TrimSpace(stderr.String())), nil
	}
	return nil, nil
}

// checkSystemdDemo adds the systemd demo's failures to fails: DEMO OK not seen, or the host's console
// check failed. A Ctrl-C while the finished demo held the VM up is how it ends (held), not a failure.
func checkSystemdDemo(ctx context.Context, demo *demoWatch, runErr error, fails []string) ([]string, bool) {
	if !demo.seen() {
		return append(fails, "the demo did not reach DEMO OK"), false
	}
	held := false
	if ctx.Err() != nil && errors.Is(runErr, errInterrupted) {
		fails, held = nil, true
	}
	if ok, rep := demo.result(2 * time.Minute); !ok {
		fails = append(fails, "web console check from the host: "+rep)
	}
	return fails, held
}

// progress logs suite boundaries as they happen, so a long CI run shows signs of life.
func progress(log *slog.Logger, vm *vmResult, line string) {
	_, rec, ok := console.ParseLine(line)
	if !ok {
		return
	}
	switch rec.Kind {
	case console.KindInit:
		log.Info("guest up", "kernel", vm.series, "release", rec.Fields["release"], "uptime", rec.Fields["uptime"])
	case console.KindEnd:
		log.Info("suite done", "kernel", vm.series, "suite", rec.Arg(0), "exit", rec.Int("exit"), "seconds", rec.Fields["seconds"])
	case console.KindNote:
		log.Warn("guest", "kernel", vm.series, "note", rec.Arg(0))
	}
}

type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			if _, err := io.WriteString(p.w, p.prefix+l); err != nil {
				return 0, err
			}
		}
	}
	return len(b), nil
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,/:+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// withModules writes outDir/initramfs-blk.cpio: the shared initramfs followed by a second archive with
// this kernel's modules from blkDir under /lib/kg-modules (the kernel unpacks concatenated archives;
// the guest's init loads blk/order's modules before any suite).
func withModules(shared, blkDir, outDir string) (string, error) {
	order, err := os.ReadFile(filepath.Join(blkDir, "order"))
	if err != nil {
		return "", err
	}
	path := filepath.Join(outDir, "initramfs-blk.cpio")
	out, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer out.Close()
	in, err := os.Open(shared)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if _, err := io.Copy(out, in); err != nil {
		return "", fmt.Errorf("copy the initramfs: %w", err)
	}
	w := initramfs.NewWriter(out)
	if err := w.File("lib/kg-modules/order", 0o644, order); err != nil {
		return "", err
	}
	for _, m := range strings.Fields(string(order)) {
		if err := w.CopyFile("lib/kg-modules/"+m, filepath.Join(blkDir, m)); err != nil {
			return "", fmt.Errorf("add module %s: %w", m, err)
		}
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return path, out.Close()
}
