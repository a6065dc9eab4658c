package deb

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// arm64 packages: the Architecture field and file name say arm64, /usr/bin holds the arm64 binaries,
// and the man pages come from the help of the binaries that run here (HelpBinDir).
func TestArm64Packages(t *testing.T) {
	cfg := fixture(t)
	help := cfg.BinDir
	arm := filepath.Join(t.TempDir(), "bin-arm64")
	os.MkdirAll(arm, 0o755)
	for _, n := range []string{"keyguard-agent", "keyguard", "keyguard-collector"} {
		// Not runnable here: a man page made by running it would fail the build.
		if err := os.WriteFile(filepath.Join(arm, n), []byte("\x7fELF arm64 "+n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Arch, cfg.BinDir, cfg.HelpBinDir = "arm64", arm, help
	paths, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no packages")
	}
	for _, path := range paths {
		p := readDeb(t, path)
		name := p.control["Package"]
		if got := p.control["Architecture"]; got != "arm64" {
			t.Errorf("%s: Architecture %q, want arm64", name, got)
		}
		if filepath.Base(path) != name+"_"+cfg.Version+"_arm64.deb" {
			t.Errorf("file name %s", filepath.Base(path))
		}
		bins := 0
		for dst, f := range p.data {
			if strings.HasPrefix(dst, "/usr/bin/") {
				bins++
				if want := "\x7fELF arm64 " + filepath.Base(dst); string(f.data) != want {
					t.Errorf("%s: %s is %q, want the arm64 binary", name, dst, f.data)
				}
			}
		}
		if bins == 0 {
			t.Errorf("%s: no /usr/bin binaries", name)
		}
	}
}
