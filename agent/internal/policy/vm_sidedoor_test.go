package policy

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// BPF programs that can read user memory are refused at load for everyone but keyguard and the
// policy's bpf_loaders; the same programs load for an allowed loader (so the refusal is keyguard's, not
// the verifier's); harmless program types load for everyone.
func TestBPFLoadRefused(t *testing.T) {
	vmenv.Require(t)
	for _, tc := range []struct {
		exe, kind, want, decision string
	}{
		{guesttest.ProcBin, "tracepoint", "ERR EPERM", "denied"},
		{guesttest.ProcBin, "sleepable", "ERR EPERM", "denied"},
		{guesttest.BPFTool, "tracepoint", "OK 1", "allowed_policy"},
		{guesttest.BPFTool, "sleepable", "OK 1", "allowed_policy"},
		{guesttest.ProcBin, "socket", "OK 1", ""},
	} {
		t.Run(tc.kind+"/"+tc.exe, func(t *testing.T) {
			before := guesttest.Count()
			cmd := exec.Command(tc.exe, "bpfload", tc.kind)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Fatalf("loading a %s program as %s: %q, want %q", tc.kind, tc.exe, got, tc.want)
			}
			if tc.decision == "" {
				return
			}
			guesttest.WaitEventAfter(t, before, "bpf_load event", func(e guesttest.Event) bool {
				return e.Kind == "side_door" && e.Operation == "bpf_load" &&
					e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid) && e.Decision == tc.decision
			})
		})
	}
}

// perf sampling that copies user stacks is refused for a protected target (root skips ptrace checks
// for perf) and while keyguard runs for CPU-wide sampling; an unprotected target can be sampled.
func TestPerfUserStackRefused(t *testing.T) {
	vmenv.Require(t)
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, 0)
	w := guesttest.StartVictim(t, guesttest.VictimPlain, 0)
	for _, tc := range []struct {
		name, pid, want string
	}{
		{"protected", strconv.Itoa(v.PID), "ERR EPERM"},
		{"cpu-wide", "-1", "ERR EPERM"},
		{"unprotected", strconv.Itoa(w.PID), "OK 1"},
	} {
		out, err := exec.Command(guesttest.ProcBin, "perf", tc.pid).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("perf_event_open with PERF_SAMPLE_STACK_USER, %s: %q, want %q", tc.name, got, tc.want)
		}
	}
	guesttest.WaitEvent(t, "perf side-door event", func(e guesttest.Event) bool {
		return e.Kind == "side_door" && e.Operation == "perf_event" && e.Target != nil && e.Target.PID == uint32(v.PID)
	})
}

// The sysctls that decide where core dumps go and who may trace cannot be written while keyguard runs,
// by root with `sysctl -w` or a shell redirect, except by keyguard and the policy's sysctl_writers (this
// test binary); reading them still works.
func TestSysctlWritesRefused(t *testing.T) {
	vmenv.Require(t)
	files := map[string]string{
		"core_pattern": "/proc/sys/kernel/core_pattern", "core_pipe_limit": "/proc/sys/kernel/core_pipe_limit",
		"suid_dumpable": "/proc/sys/fs/suid_dumpable", "ptrace_scope": "/proc/sys/kernel/yama/ptrace_scope",
	}
	orig := map[string]string{}
	for n, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("reading %s: %v", f, err)
		}
		orig[n] = string(b)
	}
	for _, tc := range []struct {
		name, sysctl string
		cmd          []string
	}{
		{"sysctl -w core_pattern", "core_pattern", []string{"/bin/busybox", "sysctl", "-w", "kernel.core_pattern=|/tmp/evil %p"}},
		{"shell redirect core_pattern", "core_pattern", []string{"/bin/busybox", "sh", "-c", "echo /tmp/core.%p > /proc/sys/kernel/core_pattern"}},
		{"sysctl -w core_pipe_limit", "core_pipe_limit", []string{"/bin/busybox", "sysctl", "-w", "kernel.core_pipe_limit=0"}},
		{"shell redirect suid_dumpable", "suid_dumpable", []string{"/bin/busybox", "sh", "-c", "echo 1 > /proc/sys/fs/suid_dumpable"}},
		{"sysctl -w ptrace_scope", "ptrace_scope", []string{"/bin/busybox", "sysctl", "-w", "kernel.yama.ptrace_scope=0"}},
		{"open for writing", "core_pattern", []string{guesttest.ProcBin, "open", "/proc/sys/kernel/core_pattern", "w"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := guesttest.Count()
			cmd := exec.Command(tc.cmd[0], tc.cmd[1:]...)
			out, _ := cmd.CombinedOutput()
			if cmd.ProcessState.Success() && tc.cmd[0] != guesttest.ProcBin {
				t.Fatalf("%v succeeded: %s", tc.cmd, out)
			}
			if tc.cmd[0] == guesttest.ProcBin && strings.TrimSpace(string(out)) != "ERR EPERM" {
				t.Fatalf("%v: %q, want ERR EPERM", tc.cmd, out)
			}
			for n, f := range files {
				if b, _ := os.ReadFile(f); string(b) != orig[n] {
					t.Fatalf("%s changed to %q", f, b)
				}
			}
			guesttest.WaitEventAfter(t, before, "sysctl_write event", func(e guesttest.Event) bool {
				return e.Kind == "side_door" && e.Operation == "sysctl_write" && e.Decision == "denied" &&
					e.Detail == tc.sysctl && e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid)
			})
		})
	}
	// Reading is fine, and an unrelated sysctl can still be written.
	if out, err := exec.Command("/bin/busybox", "sysctl", "kernel.core_pattern").CombinedOutput(); err != nil {
		t.Fatalf("reading core_pattern: %v: %s", err, out)
	}
	// Put it back afterwards: with core_uses_pid set, a later package's file core_pattern without %p
	// gets ".PID" appended (dumphandler's TestDumpRedacted/control reads cores/plain).
	usesPID, _ := os.ReadFile("/proc/sys/kernel/core_uses_pid")
	t.Cleanup(func() { os.WriteFile("/proc/sys/kernel/core_uses_pid", usesPID, 0) })
	if out, err := exec.Command("/bin/busybox", "sysctl", "-w", "kernel.core_uses_pid=1").CombinedOutput(); err != nil {
		t.Fatalf("writing an unrelated sysctl: %v: %s", err, out)
	}
	// The policy's sysctl_writers (this test binary) may write.
	if err := os.WriteFile(files["core_pipe_limit"], []byte(orig["core_pipe_limit"]), 0); err != nil {
		t.Fatalf("allowed writer: %v", err)
	}
}

// /proc/kcore, /dev/mem and /dev/port cannot be opened, also through a device node made elsewhere.
func TestKernelMemoryRefused(t *testing.T) {
	vmenv.Require(t)
	node := "/dev/kg-mem-copy" // /tmp is nodev
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 1))); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(node)
	for _, tc := range []struct{ path, op string }{
		{"/proc/kcore", "kcore"}, {"/dev/mem", "dev_mem"}, {"/dev/port", "dev_port"}, {node, "dev_mem"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			if _, err := os.Stat(tc.path); err != nil {
				t.Fatalf("%s missing in the guest: %v", tc.path, err)
			}
			before := guesttest.Count()
			cmd := exec.Command(guesttest.ProcBin, "open", tc.path, "r")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != "ERR EPERM" {
				t.Fatalf("open %s: %q, want ERR EPERM", tc.path, got)
			}
			guesttest.WaitEventAfter(t, before, tc.op+" event", func(e guesttest.Event) bool {
				return e.Kind == "side_door" && e.Operation == tc.op && e.Decision == "denied" &&
					e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid)
			})
		})
	}
	// Other /proc files and character devices are untouched.
	for _, p := range []string{"/proc/cpuinfo", "/dev/null", "/dev/zero"} {
		if out, _ := exec.Command(guesttest.ProcBin, "open", p, "r").CombinedOutput(); strings.TrimSpace(string(out)) != "OK 0" {
			t.Errorf("open %s: %q, want OK 0", p, out)
		}
	}
}

// Kernel module and kexec image loads are refused by default (modules: deny) before the kernel looks at
// the file: a module could read any memory and unhook keyguard, a kexec'd kernel runs without it.
func TestModuleLoadRefused(t *testing.T) {
	vmenv.Require(t)
	for _, tc := range []struct {
		name string
		args []string
		op   string
	}{
		{"finit_module", []string{"finit", guesttest.ProcBin}, "module_load"},
		{"init_module", []string{"initmod"}, "module_load"},
		{"kexec_file_load", []string{"kexec", guesttest.ProcBin}, "kexec_load"},
		{"kexec_load", []string{"kexecload"}, "kexec_load"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := guesttest.Count()
			cmd := exec.Command(guesttest.ProcBin, tc.args...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			got := strings.TrimSpace(string(out))
			if got == "ERR ENOSYS" { // the syscall table's sys_ni_syscall, before any LSM hook
				t.Skipf("this kernel (%s) has no %s: ENOSYS from the syscall table, before any LSM hook", os.Getenv("KEYGUARD_KERNEL"), tc.name)
			}
			if got != "ERR EPERM" {
				t.Fatalf("%s: %q, want ERR EPERM", tc.name, got)
			}
			guesttest.WaitEventAfter(t, before, tc.op+" event", func(e guesttest.Event) bool {
				return e.Kind == "side_door" && e.Operation == tc.op && e.Decision == "denied" &&
					e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid)
			})
		})
	}
}
