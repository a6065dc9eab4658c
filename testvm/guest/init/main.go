// Command init is PID 1 of the testvm guest. It mounts the kernel file systems, brings up loopback,
// writes a minimal /etc, runs each test binary listed in /tests/manifest (or /bin/keyguard-demo in
// demo mode) with its output on the serial console, sends artifacts and the kernel log back to the
// host, prints a final result record and powers the VM off. It must stay free of cilium/ebpf (which
// reads mountinfo at package init, before anything is mounted).
//
// Settings arrive as kernel command-line words, which the kernel hands to init as environment:
//
//	KEYGUARD_KERNEL=<series>        kernel series the host booted (6.1, 6.12)
//	KEYGUARD_MODE=test|demo
//	KEYGUARD_RUN=<base64url>        -test.run pattern
//	KEYGUARD_BENCH=<base64url>      -test.bench pattern (also turns on -test.benchmem)
//	KEYGUARD_BENCHTIME=<base64url>  -test.benchtime value
//	KEYGUARD_ENV=<base64url>        extra environment for the tests, NUL-separated KEY=VAL
//	KEYGUARD_SUITE_TIMEOUT=<secs>   per-binary timeout
//
// In the systemd image (vmtest -systemd) the same binary runs as a systemd service instead of PID 1
// (it notices by its pid): systemd has mounted everything and /etc is Debian's, so it skips setup,
// reads the KEYGUARD_* words from /proc/cmdline, finds the suites below ServiceRoot, never kills
// other processes between suites (they are systemd's), and powers off through systemctl.
package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/testvm/console"
)

const (
	demoBinary = "/bin/keyguard-demo"
	// systemdDemoBinary is the demo in the systemd image (vmtest -demo -systemd), in ServiceRoot/bin.
	systemdDemoBinary = "keyguard-demo-systemd"
	artifactsRoot     = "/run/keyguard/artifacts"
	// ServiceRoot holds tests/, bin/ and debs/ in the systemd image.
	serviceRoot = "/opt/keyguard-test"
)

// service is true when this runs as a systemd service rather than as PID 1.
var service = os.Getpid() != 1

// root is where tests/ (and in service mode bin/) are.
func root() string {
	if service {
		return serviceRoot
	}
	return "/"
}

func main() {
	start := time.Now()
	con := console.NewWriter(os.Stdout)
	run(con)
	unix.Sync()
	if service {
		if out, err := exec.Command("systemctl", "poweroff", "--no-block").CombinedOutput(); err == nil {
			return
		} else {
			fmt.Fprintf(os.Stderr, "init: systemctl poweroff: %v: %s\n", err, out)
		}
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Not reached unless reboot failed; PID 1 exiting panics the kernel, which panic=-1 turns into
	// a reboot that -no-reboot turns into QEMU exiting.
	fmt.Fprintf(os.Stderr, "init: power off failed after %s\n", time.Since(start))
	os.Exit(1)
}

type settings struct {
	kernel       string
	mode         string
	run          string
	bench        string
	benchtime    string
	extraEnv     []string
	suiteTimeout time.Duration
}

// cmdlineEnv sets the KEYGUARD_* words of the kernel command line as environment (systemd does not
// hand them to services).
func cmdlineEnv() {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return
	}
	for _, w := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(k, "KEYGUARD_") {
			os.Setenv(k, v)
		}
	}
}

func readSettings() (settings, error) {
	if service {
		cmdlineEnv()
	}
	s := settings{
		kernel:       os.Getenv("KEYGUARD_KERNEL"),
		mode:         os.Getenv("KEYGUARD_MODE"),
		suiteTimeout: 10 * time.Minute,
	}
	if s.mode == "" {
		s.mode = "test"
	}
	for _, v := range []struct {
		key string
		dst *string
	}{{"KEYGUARD_RUN", &s.run}, {"KEYGUARD_BENCH", &s.bench}, {"KEYGUARD_BENCHTIME", &s.benchtime}} {
		b, err := base64.RawURLEncoding.DecodeString(os.Getenv(v.key))
		if err != nil {
			return s, fmt.Errorf("%s: %w", v.key, err)
		}
		*v.dst = string(b)
	}
	env, err := base64.RawURLEncoding.DecodeString(os.Getenv("KEYGUARD_ENV"))
	if err != nil {
		return s, fmt.Errorf("KEYGUARD_ENV: %w", err)
	}
	for _, kv := range strings.Split(string(env), "\x00") {
		if kv != "" {
			s.extraEnv = append(s.extraEnv, kv)
		}
	}
	if t := os.Getenv("KEYGUARD_SUITE_TIMEOUT"); t != "" {
		secs, err := strconv.Atoi(t)
		if err != nil || secs <= 0 {
			return s, fmt.Errorf("KEYGUARD_SUITE_TIMEOUT=%q is not a positive number of seconds", t)
		}
		s.suiteTimeout = time.Duration(secs) * time.Second
	}
	return s, nil
}

// run does everything between boot and power-off and reports whether the guest side passed.
func run(con *console.Writer) bool {
	start := time.Now()
	var setupErrs []error
	if !service {
		setupErrs = setup()
	}
	uptime := readUptime()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	con.Init(uptime, unix.ByteSliceToString(uts.Release[:]))
	for _, err := range setupErrs {
		con.Note("setup: %v", err)
	}
	s, err := readSettings()
	if err != nil {
		con.Note("bad settings from the host: %v", err)
		con.Result(false, 0, 0, time.Since(start).Seconds())
		return false
	}

	var suites []string
	if s.mode == "demo" {
		suites = []string{"demo"}
	} else {
		suites, err = readManifest()
		if err != nil {
			con.Note("%v", err)
			con.Result(false, 0, 0, time.Since(start).Seconds())
			return false
		}
	}
	failed := 0
	for _, name := range suites {
		if !runSuite(con, s, name) {
			failed++
		}
	}
	if err := sendKernelLog(con); err != nil {
		con.Note("reading the kernel log: %v", err)
		failed++
	}
	pass := failed == 0 && len(setupErrs) == 0
	con.Result(pass, len(suites), failed, time.Since(start).Seconds())
	return pass
}

func readManifest() ([]string, error) {
	data, err := os.ReadFile(path.Join(root(), "tests/manifest"))
	if err != nil {
		return nil, fmt.Errorf("reading the suite list: %w", err)
	}
	var names []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			names = append(names, l)
		}
	}
	return names, nil
}

// runSuite runs one test binary (or the demo) and ships its artifacts. It reports success.
func runSuite(con *console.Writer, s settings, name string) bool {
	artifacts := path.Join(artifactsRoot, name)
	if service {
		// /run/keyguard is the agent unit's RuntimeDirectory, which package removal deletes.
		artifacts = path.Join("/run/keyguard-vmtest/artifacts", name)
	}
	_ = os.RemoveAll(artifacts)
	if err := os.MkdirAll(artifacts, 0o777); err != nil {
		con.Note("%s: %v", name, err)
		return false
	}
	_ = os.Chmod(artifacts, 0o777) // tests running as the unprivileged user may write here too

	pathEnv := "PATH=/bin"
	if service {
		pathEnv = "PATH=" + path.Join(serviceRoot, "bin") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env := []string{
		pathEnv,
		"HOME=/root",
		"TMPDIR=/tmp",
		"KEYGUARD_VM=1",
		"KEYGUARD_KERNEL=" + s.kernel,
		"KEYGUARD_ARTIFACTS=" + artifacts,
	}
	if service {
		env = append(env, "KEYGUARD_SYSTEMD=1", "KEYGUARD_TEST_ROOT="+serviceRoot)
	}
	env = append(env, s.extraEnv...)

	var argv []string
	var dir string
	if s.mode == "demo" {
		argv = []string{demoBinary}
		if service {
			argv = []string{path.Join(serviceRoot, "bin", systemdDemoBinary)}
		}
		dir = "/root"
	} else {
		dir = path.Join(root(), "tests", name)
		argv = []string{path.Join(dir, name+".test"), "-test.v", "-test.count=1",
			"-test.timeout=" + s.suiteTimeout.String()}
		if s.run != "" {
			argv = append(argv, "-test.run="+s.run)
		}
		if s.bench != "" {
			argv = append(argv, "-test.bench="+s.bench, "-test.benchmem")
		}
		if s.benchtime != "" {
			argv = append(argv, "-test.benchtime="+s.benchtime)
		}
	}

	con.Begin(name)
	start := time.Now()
	// The test binary's own -test.timeout fires first and prints every goroutine; this one is
	// the backstop for a binary that is stuck beyond that.
	exit, timedOut, err := runBinary(argv, dir, env, s.suiteTimeout+30*time.Second)
	elapsed := time.Since(start).Seconds()
	if err != nil {
		con.Note("%s: %v", name, err)
	}
	if service {
		// systemd owns every other process; the suite cleans up after itself.
	} else if n := killLeftovers(); n > 0 {
		con.Note("%s: killed %d processes the suite left running", name, n)
	}
	sendErr := sendArtifacts(con, name, artifacts)
	if sendErr != nil {
		con.Note("%s: sending artifacts: %v", name, sendErr)
	}
	con.End(name, exit, elapsed, timedOut)
	return exit == 0 && !timedOut && err == nil && sendErr == nil
}

// runBinary starts argv with the console as stdout and stderr and waits for it, reaping every
// other child that ends meanwhile (as PID 1, orphans of the tests are ours). On timeout it sends
// SIGQUIT (a Go binary prints its goroutines) and SIGKILL 5 s later.
func runBinary(argv []string, dir string, env []string, timeout time.Duration) (exit int, timedOut bool, err error) {
	proc, err := os.StartProcess(argv[0], argv, &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return -1, false, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	pid := proc.Pid
	done := make(chan struct{})
	defer close(done)
	timer := make(chan bool, 1)
	go func() {
		select {
		case <-done:
			return
		case <-time.After(timeout):
		}
		timer <- true
		_ = unix.Kill(-pid, unix.SIGQUIT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = unix.Kill(-pid, unix.SIGKILL)
		}
	}()
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, false, fmt.Errorf("waiting for %s: %w", argv[0], err)
		}
		if got != pid {
			continue
		}
		select {
		case <-timer:
			timedOut = true
		default:
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus(), timedOut, nil
		case ws.Signaled():
			return 128 + int(ws.Signal()), timedOut, fmt.Errorf("%s killed by signal %v", argv[0], ws.Signal())
		}
		return -1, timedOut, fmt.Errorf("%s: unexpected wait status %#x", argv[0], uint32(ws))
	}
}

// killLeftovers SIGKILLs every user-space process but init and reaps them, so one suite's daemons
// cannot disturb the next. It returns how many it killed.
func killLeftovers() int {
	killed := 0
	for range 3 {
		n := 0
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == 1 || isKernelThread(pid) {
				continue
			}
			if unix.Kill(pid, unix.SIGKILL) == nil {
				n++
			}
		}
		if n == 0 {
			break
		}
		killed += n
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			var ws unix.WaitStatus
			got, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.ECHILD {
				break
			}
			if got <= 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	// Reap anything that exited on its own.
	for {
		var ws unix.WaitStatus
		if got, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); err != nil || got <= 0 {
			break
		}
	}
	return killed
}

// isKernelThread reads PF_KTHREAD from /proc/PID/stat.
func isKernelThread(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // gone already
	}
	// Fields after the parenthesised comm: state ppid pgrp session tty_nr tpgid flags ...
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return true
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 7 {
		return true
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	if err != nil {
		return true
	}
	const pfKthread = 0x00200000
	return flags&pfKthread != 0
}

// sendArtifacts sends every regular file under dir to the host as <suite>/<relative path>.
func sendArtifacts(con *console.Writer, suite, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return con.File(path.Join(suite, filepath.ToSlash(rel)), data)
	})
}

// sendKernelLog sends the whole kernel ring buffer as dmesg.txt. The console only shows messages
// above the quiet level; the host scans this file for oopses, BUGs and warnings as well.
func sendKernelLog(con *console.Writer) error {
	size, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil {
		return err
	}
	buf := make([]byte, size)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return err
	}
	return con.File("dmesg.txt", buf[:n])
}

func readUptime() float64 {
	data, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(data))[0], 64)
	return f
}

// setup prepares the guest: mounts, loopback, /etc. It returns every problem; the run fails then.
func setup() []error {
	var errs []error
	mounts := []struct {
		target, fstype, source string
		flags                  uintptr
		data                   string
	}{
		{"/proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/sys", "sysfs", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/dev", "devtmpfs", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"/dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "ptmxmode=0666,mode=0620"},
		{"/dev/shm", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"/sys/fs/bpf", "bpf", "bpf", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "mode=0700"},
		{"/sys/kernel/security", "securityfs", "securityfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/sys/kernel/tracing", "tracefs", "tracefs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/sys/kernel/debug", "debugfs", "debugfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/sys/fs/cgroup", "cgroup2", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
		{"/tmp", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"/run", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	if err := loopbackUp(); err != nil {
		errs = append(errs, err)
	}
	if err := loadModules("/lib/kg-modules"); err != nil {
		errs = append(errs, err)
	}
	if err := unix.Sethostname([]byte("keyguard-vm")); err != nil {
		errs = append(errs, fmt.Errorf("sethostname: %w", err))
	}
	files := []struct {
		name string
		perm fs.FileMode
		data string
	}{
		{"/etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nkguser:x:1000:1000:keyguard test user:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"},
		{"/etc/group", 0o644, "root:x:0:\nkguser:x:1000:\nnogroup:x:65534:\n"},
		{"/etc/hosts", 0o644, "127.0.0.1\tlocalhost keyguard-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		{"/etc/nsswitch.conf", 0o644, "passwd: files\ngroup: files\nhosts: files dns\n"},
	}
	for _, f := range files {
		if err := os.MkdirAll(path.Dir(f.name), 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.WriteFile(f.name, []byte(f.data), f.perm); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{"/root", "/var/tmp"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Chmod("/var/tmp", 0o1777)
	return errs
}

// loopbackUp sets IFF_UP on lo; the kernel then adds 127.0.0.1/8 (and ::1) by itself.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: SIOCGIFFLAGS: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// loadModules loads the modules vmtest appended for this kernel (testvm/blkmods.sh: loop, mtd, romfs
// for the raw-disk test), in dir/order, before any suite starts an agent (which refuses module loads).
func loadModules(dir string) error {
	order, err := os.ReadFile(path.Join(dir, "order"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, m := range strings.Fields(string(order)) {
		f, err := os.Open(path.Join(dir, m))
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", m, err)
		}
	}
	return nil
}
