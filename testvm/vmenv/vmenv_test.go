package vmenv

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSaveArtifact(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KEYGUARD_ARTIFACTS", dir)
	SaveArtifact(t, "bench/results.txt", []byte("42\n"))
	got, err := os.ReadFile(filepath.Join(dir, "bench", "results.txt"))
	if err != nil || string(got) != "42\n" {
		t.Fatalf("artifact = %q, %v; want \"42\\n\" in KEYGUARD_ARTIFACTS", got, err)
	}
	p, err := ArtifactPath("x/y")
	if err != nil || p != filepath.Join(dir, "x", "y") {
		t.Errorf("ArtifactPath = %q, %v", p, err)
	}
	t.Setenv("KEYGUARD_ARTIFACTS", "")
	if _, err := ArtifactPath("x"); err == nil {
		t.Error("ArtifactPath outside the VM: no error")
	}
}

func TestRequireSkipsOutsideTheVM(t *testing.T) {
	t.Setenv("KEYGUARD_VM", "")
	skipped := true
	t.Run("inner", func(t *testing.T) {
		Require(t)
		skipped = false
	})
	if !skipped || InVM() {
		t.Error("Require did not skip with KEYGUARD_VM unset")
	}
	t.Setenv("KEYGUARD_VM", "1")
	t.Setenv("KEYGUARD_KERNEL", "6.12")
	if !InVM() || Kernel() != "6.12" {
		t.Errorf("InVM=%v Kernel=%q with KEYGUARD_VM=1 KEYGUARD_KERNEL=6.12", InVM(), Kernel())
	}
}
