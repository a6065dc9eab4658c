package deb

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLintian builds the three packages from the real binaries, built as `make packages` builds them,
// and runs Debian's lintian on them: no error or warning may remain; the only overrides are the
// static Go binaries and prerm's systemctl call (each explained in the override file).
// About 1-2 min (lintian reads 40 MB of binaries).
func TestLintian(t *testing.T) {
	lintian, err := exec.LookPath("lintian")
	if err != nil {
		t.Skip("lintian not installed (Debian package lintian, listed in .ci/packages.txt)")
	}
	if testing.Short() {
		t.Skip("-short: lintian takes a minute")
	}
	cfg := fixture(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"keyguard-agent", "keyguard", "keyguard-collector"} {
		os.Remove(filepath.Join(cfg.BinDir, n)) // the fixture's stand-ins
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+cfg.Version, "-o", cfg.BinDir+"/",
		"./agent/cmd/keyguard-agent", "./agent/cmd/keyguard", "./collector/cmd/keyguard-collector")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	paths, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--fail-on", "error,warning", "--display-info", "--allow-root"}, paths...)
	out, err := exec.CommandContext(ctx, lintian, args...).CombinedOutput()
	t.Logf("lintian:\n%s", out)
	if err != nil {
		t.Fatalf("lintian: %v", err)
	}
	// The override was used, so lintian did read a real static binary (the CLI's package, the smallest;
	// --show-overrides makes lintian 2.116 exit 2, so this is a separate run that fails on nothing).
	var cli string
	for _, p := range paths {
		if strings.HasPrefix(filepath.Base(p), "keyguard_") {
			cli = p
		}
	}
	out, _ = exec.CommandContext(ctx, lintian, "--fail-on", "none", "--show-overrides", "--allow-root", cli).CombinedOutput()
	if !strings.Contains(string(out), "O: keyguard: statically-linked-binary [usr/bin/keyguard]") {
		t.Errorf("lintian did not report the CLI's static binary as overridden:\n%s", out)
	}
}
