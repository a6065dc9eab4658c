package guesttest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// FileOp runs "testproc fileop OP PATH [ARG]" as root (testproc is no holder, key manager or package
// manager) and returns its answer: "OK" or "ERR <errno>".
func FileOp(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := exec.Command(ProcBin, append([]string{"fileop"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// ProbeVariants is the "variants" object of `keyguard-agent probe -json`: what the agent chooses on
// this kernel.
func ProbeVariants(t *testing.T) map[string]any {
	t.Helper()
	out, err := exec.Command(AgentBin, "probe", "-json").Output()
	if err != nil {
		t.Fatalf("keyguard-agent probe: %v: %s", err, out)
	}
	var r struct {
		Variants map[string]any `json:"variants"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	return r.Variants
}

// VMRWEnd is how the agent traces the end of process_vm_readv/writev on this kernel (the probe's
// vm_rw_end: "fexit/process_vm_rw", "fexit/sys_process_vm_readv" or "none").
func VMRWEnd(t *testing.T) string {
	t.Helper()
	end, _ := ProbeVariants(t)["vm_rw_end"].(string)
	return end
}

// Compat32 reports whether this kernel runs 32-bit system calls of a 64-bit process (testproc compat32:
// int 0x80 in a child, so a kernel without ia32 emulation cannot take the test down).
func Compat32() bool {
	out, _ := exec.Command(ProcBin, "compat32").Output()
	return strings.TrimSpace(string(out)) == "OK"
}

// X32 reports whether the guest kernel runs x32 system calls (Debian: booted with syscall.x32=y, as
// testvm boots its amd64 guests).
func X32() bool {
	out, _ := exec.Command(ProcBin, "x32").Output()
	return strings.TrimSpace(string(out)) == "OK"
}
