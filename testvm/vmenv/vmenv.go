// Package vmenv is what a VM test needs to know about the testvm guest it runs in.
//
// The testvm harness (testvm/cmd/vmtest) boots each stock kernel in QEMU and runs the test binaries
// of the packages listed in testvm/suites.txt as root, with the package's source folder layout
// (cwd /tests/<suite>, testdata/ copied) and this environment:
//
//	KEYGUARD_VM=1               set only inside the VM
//	KEYGUARD_KERNEL=<series>    "6.1", "6.12": the series from testvm/kernels.txt
//	KEYGUARD_ARTIFACTS=<dir>    files written here arrive on the host in testvm/out/<series>/files/<suite>/
//	plus every -env KEY=VAL given to vmtest.
//
// On the host (plain `go test ./...`) the same tests must skip: call Require first.
package vmenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// InVM reports whether the process runs inside the testvm guest.
func InVM() bool { return os.Getenv("KEYGUARD_VM") == "1" }

// Require skips the test unless it runs inside the testvm guest.
func Require(tb testing.TB) {
	tb.Helper()
	if !InVM() {
		tb.Skip("VM test: runs only in the testvm guest (make vmtest)")
	}
}

// Kernel returns the kernel series the VM booted ("6.1", "6.12"), or "" outside the VM.
func Kernel() string { return os.Getenv("KEYGUARD_KERNEL") }

// SaveArtifact writes data as name (a relative path) into the artifact folder, from where the
// guest sends it to the host after the test binary exits. Outside the VM it writes into
// tb.TempDir() and logs where.
func SaveArtifact(tb testing.TB, name string, data []byte) {
	tb.Helper()
	dir := os.Getenv("KEYGUARD_ARTIFACTS")
	if dir == "" {
		dir = tb.TempDir()
	}
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatalf("saving artifact %s: %v", name, err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		tb.Fatalf("saving artifact %s: %v", name, err)
	}
	if !InVM() {
		tb.Logf("artifact %s written to %s (not in the VM: nothing is sent anywhere)", name, p)
	}
}

// ArtifactPath returns where SaveArtifact would put name, for tools that write files themselves.
func ArtifactPath(name string) (string, error) {
	dir := os.Getenv("KEYGUARD_ARTIFACTS")
	if dir == "" {
		return "", fmt.Errorf("KEYGUARD_ARTIFACTS is not set: not running in the testvm guest")
	}
	return filepath.Join(dir, filepath.FromSlash(name)), nil
}
