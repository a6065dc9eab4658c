package posture

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/testvm/guesttest"
)

// vmTests are this package's VM tests (vm_*_test.go): in the testvm guest only they run, with the
// agent started once for both (guesttest.Main); on the host they skip.
var vmTests = []string{"TestPostureStatus", "TestPostureChangeEvents"}

// helperEnv makes the test binary a child process for the process tests: "sleep" waits, "nodump"
// first makes itself non-dumpable. It prints "ready" when set up.
const helperEnv = "POSTURE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		guesttest.Main(m, guesttest.Options{Tests: vmTests})
	case "nodump":
		if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
			fmt.Println("prctl:", err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	time.Sleep(time.Minute)
	os.Exit(0)
}

// TestRealHost checks the findings against the values this machine's kernel shows.
func TestRealHost(t *testing.T) {
	fs := Checker{}.Host()
	for _, f := range fs {
		if f.Severity.Rank() == 0 || f.Remediation == "" {
			t.Errorf("finding %+v: no valid severity or no remediation", f)
		}
	}
	for _, name := range []string{"kernel.yama.ptrace_scope", "kernel.perf_event_paranoid", "kernel.unprivileged_bpf_disabled",
		"fs.suid_dumpable", "kernel.core_pattern", "kernel.core_pipe_limit", "kernel.kexec_load_disabled", "kernel.modules_disabled"} {
		f := find(t, fs, name)
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
		switch {
		case err != nil && !strings.HasPrefix(f.Value, "unavailable"):
			t.Errorf("%s: the file is not readable (%v) but the finding says %q", name, err, f.Value)
		case err == nil && f.Value != strings.TrimSpace(string(b)):
			t.Errorf("%s = %q, the kernel says %q", name, f.Value, strings.TrimSpace(string(b)))
		}
		t.Logf("%-34s %-10s %s", name, f.Severity, f.Value)
	}
	lock := find(t, fs, "lockdown")
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil && lock.Value != strings.TrimSpace(string(b)) {
		t.Errorf("lockdown %q, the kernel says %q", lock.Value, b)
	} else if err != nil && lock.Severity != High {
		t.Errorf("no lockdown file (%v) but lockdown is %s", err, lock.Severity)
	}
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")[1:]
	var swaps []Finding
	for _, f := range fs {
		if strings.HasPrefix(f.Name, "swap") {
			swaps = append(swaps, f)
		}
	}
	if len(lines) == 0 && (len(swaps) != 1 || swaps[0].Value != "none") {
		t.Errorf("no swap in /proc/swaps, findings %v", swaps)
	}
	if len(lines) > 0 && len(swaps) != len(lines) {
		t.Errorf("%d swap areas in /proc/swaps, %d findings", len(lines), len(swaps))
	}
	for _, n := range []string{"hibernation", "kdump"} {
		f := find(t, fs, n)
		t.Logf("%-34s %-10s %s", n, f.Severity, f.Value)
	}
}

// child starts the test binary as a helper process (as uid when uid >= 0) and waits until it is set up.
func child(t *testing.T, bin, mode string, uid int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper %s: %q %v", mode, line, err)
	}
	go io.Copy(io.Discard, out)
	return cmd
}

// TestRealProcess sets a real child's RLIMIT_CORE and coredump_filter, makes it non-dumpable, traces
// it, and checks what the findings say about it.
func TestRealProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs children as another user")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy of the test binary that user nobody may execute.
	dir, err := os.MkdirTemp("", "posture-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "helper")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534

	t.Run("limits and filter", func(t *testing.T) {
		// Root's child: prlimit on another user's process needs CAP_SYS_RESOURCE, which containers
		// often drop.
		cmd := child(t, bin, "sleep", -1)
		pid := cmd.Process.Pid
		if err := unix.Prlimit(pid, unix.RLIMIT_CORE, &unix.Rlimit{Cur: 8192, Max: 65536}, nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/coredump_filter", pid), []byte("0x23"), 0); err != nil {
			t.Fatal(err)
		}
		fs := Checker{}.Process(Target{PID: pid, Rule: "signer", Dumps: "allow"})
		want := map[string]struct {
			value string
			sev   Severity
		}{
			"rlimit_core":     {"soft 8192, hard 65536", High},
			"coredump_filter": {"0x23 (anon-private anon-shared hugetlb-private)", High},
			"dumpable":        {"unknown (euid 0)", Info},
			"tracer":          {"0", Info},
		}
		for item, w := range want {
			f := find(t, fs, fmt.Sprintf("process.%d.%s", pid, item))
			if f.Value != w.value || f.Severity != w.sev {
				t.Errorf("%s: %q %s, want %q %s", item, f.Value, f.Severity, w.value, w.sev)
			}
		}

		// Now quiet: limit 1 (no dump with any pattern), ELF headers only.
		if err := unix.Prlimit(pid, unix.RLIMIT_CORE, &unix.Rlimit{Cur: 1, Max: 1}, nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/coredump_filter", pid), []byte("0x10"), 0); err != nil {
			t.Fatal(err)
		}
		fs = Checker{}.Process(Target{PID: pid, Rule: "signer", Dumps: "allow"})
		for item, w := range map[string]string{"rlimit_core": "soft 1, hard 1", "coredump_filter": "0x10 (elf-headers)"} {
			f := find(t, fs, fmt.Sprintf("process.%d.%s", pid, item))
			if f.Value != w || f.Severity != Info {
				t.Errorf("%s: %q %s, want %q info", item, f.Value, f.Severity, w)
			}
		}
	})

	t.Run("not dumpable", func(t *testing.T) {
		pid := child(t, bin, "nodump", nobody).Process.Pid
		f := find(t, Checker{}.Process(Target{PID: pid, Rule: "signer"}), fmt.Sprintf("process.%d.dumpable", pid))
		if f.Value != "0" || f.Severity != Info {
			t.Errorf("prctl(PR_SET_DUMPABLE, 0) child: %+v", f)
		}
	})

	t.Run("dumpable", func(t *testing.T) {
		pid := child(t, bin, "sleep", nobody).Process.Pid
		f := find(t, Checker{}.Process(Target{PID: pid, Rule: "signer"}), fmt.Sprintf("process.%d.dumpable", pid))
		if f.Value != "1" || f.Severity != Low {
			t.Errorf("nobody's child: %+v", f)
		}
	})

	t.Run("traced", func(t *testing.T) {
		pid := child(t, bin, "sleep", nobody).Process.Pid
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := unix.PtraceSeize(pid); err != nil {
			t.Fatalf("ptrace the child: %v", err)
		}
		defer unix.PtraceDetach(pid)
		f := find(t, Checker{}.Process(Target{PID: pid, Rule: "signer"}), fmt.Sprintf("process.%d.tracer", pid))
		if !strings.HasPrefix(f.Value, fmt.Sprintf("%d (", unix.Gettid())) && !strings.HasPrefix(f.Value, fmt.Sprintf("%d (", os.Getpid())) || f.Severity != Critical {
			t.Errorf("traced child: %+v, want tracer %d critical", f, os.Getpid())
		}
	})
}

// The agent runs Host once a minute and Process for every protected process.
func BenchmarkHost(b *testing.B) {
	for b.Loop() {
		Checker{}.Host()
	}
}

func BenchmarkProcess(b *testing.B) {
	t := Target{PID: os.Getpid(), Rule: "signer", Dumps: "block"}
	for b.Loop() {
		if len(Checker{}.Process(t)) != 4 {
			b.Fatal("no process findings")
		}
	}
}
