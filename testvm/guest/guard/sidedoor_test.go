package guard

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// BPF programs that can read user memory are refused at load for everyone but keyguard and the
// policy's bpf_loaders; the same programs load for an allowed loader (so the refusal is keyguard's, not
// the verifier's); harmless program types load for everyone.
func TestBPFLoadRefused(t *testing.T) {
	for _, tc := range []struct {
		exe, kind, want, decision string
	}{
		{procBin, "tracepoint", "ERR EPERM", "denied"},
		{procBin, "sleepable", "ERR EPERM", "denied"},
		{bpfTool, "tracepoint", "OK 1", "allowed_policy"},
		{bpfTool, "sleepable", "OK 1", "allowed_policy"},
		{procBin, "socket", "OK 1", ""},
	} {
		t.Run(tc.kind+"/"+tc.exe, func(t *testing.T) {
			before := len(readEvents())
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
			waitEventAfter(t, before, "bpf_load event", func(e event) bool {
				return e.Kind == "side_door" && e.Operation == "bpf_load" &&
					e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid) && e.Decision == tc.decision
			})
		})
	}
}

// perf sampling that copies user stacks is refused for a protected target (root skips ptrace checks
// for perf) and while keyguard runs for CPU-wide sampling; an unprotected target can be sampled.
func TestPerfUserStackRefused(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	w := startVictim(t, victimPlain, 0)
	for _, tc := range []struct {
		name, pid, want string
	}{
		{"protected", strconv.Itoa(v.pid), "ERR EPERM"},
		{"cpu-wide", "-1", "ERR EPERM"},
		{"unprotected", strconv.Itoa(w.pid), "OK 1"},
	} {
		out, err := exec.Command(procBin, "perf", tc.pid).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("perf_event_open with PERF_SAMPLE_STACK_USER, %s: %q, want %q", tc.name, got, tc.want)
		}
	}
	waitEvent(t, "perf side-door event", func(e event) bool {
		return e.Kind == "side_door" && e.Operation == "perf_event" && e.Target != nil && e.Target.PID == uint32(v.pid)
	})
}
