package guesttest

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// FileOp runs "testproc fileop OP PATH [ARG]" as root (testproc is no holder, key manager or package
// manager) and returns its answer: "OK" or "ERR <errno>".
func FileOp(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := exec.Command(ProcBin, append([]string{"fileop"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// VMReadvTracked mirrors the loader's fallback choice: process_vm_readv's syscall function has one BTF
// entry.
func VMReadvTracked() bool {
	k, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	ts, _ := k.AnyTypesByName("__x64_sys_process_vm_readv")
	n := 0
	for _, ty := range ts {
		if _, ok := ty.(*btf.Func); ok {
			n++
		}
	}
	return n == 1
}
