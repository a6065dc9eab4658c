package guesttest

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// CorePattern is the kernel's core_pattern sysctl.
const CorePattern = "/proc/sys/kernel/core_pattern"

// SetCorePattern sets core_pattern to p until the test ends.
func SetCorePattern(t *testing.T, p string) {
	t.Helper()
	old, _ := os.ReadFile(CorePattern)
	if err := os.WriteFile(CorePattern, []byte(p), 0); err != nil {
		t.Fatalf("set core_pattern: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(CorePattern, old, 0) })
}

// Crash runs "exe crash ..." in Dir/cwd and returns how it ended.
func Crash(t *testing.T, exe string, args ...string) syscall.WaitStatus {
	t.Helper()
	cmd := exec.Command(exe, append([]string{"crash"}, args...)...)
	cmd.Dir = Dir + "/cwd"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("%s crash %v: %v (want death by signal)", exe, args, err)
	}
	return ee.Sys().(syscall.WaitStatus)
}
