package oci

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// goBinaries builds a small static Go program for goarch into dir under the three binary names (real
// ELF files of that machine; the keyguard binaries themselves take minutes to cross-build).
func goBinaries(t *testing.T, goarch, dir string) {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module m\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o755)
	os.Remove(filepath.Join(dir, "keyguard-agent")) // the fixture's placeholder
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "keyguard-agent"), ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build GOARCH=%s: %v\n%s", goarch, err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "keyguard-agent"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"keyguard", "keyguard-collector"} {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// With an arm64 platform the OCI archive names an image index with an amd64 and an arm64 manifest;
// each manifest's config says its architecture and each binary in it is an ELF of that machine.
func TestMultiArchIndex(t *testing.T) {
	cfg := fixture(t)
	goBinaries(t, "amd64", cfg.BinDir)
	armBin := filepath.Join(t.TempDir(), "bin-arm64")
	goBinaries(t, "arm64", armBin)
	cfg.More = []Platform{{Arch: "arm64", BinDir: armBin, Busybox: cfg.Busybox}}
	paths, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 6 {
		t.Fatalf("paths %q: want an .oci.tar and two .image.tar per image", paths)
	}
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for _, im := range Images(cfg) {
		base := filepath.Join(cfg.OutDir, im.Name+"_"+cfg.Version)
		dir := untar(t, base+".oci.tar")
		root, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			t.Fatal(err)
		}
		rm, err := root.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(rm.Manifests) != 1 || rm.Manifests[0].MediaType != types.OCIImageIndex {
			t.Fatalf("%s: index.json %+v: want one entry, an image index", im.Name, rm.Manifests)
		}
		if got := rm.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; got != "0-git20261124.abc_dirty" {
			t.Errorf("%s: ref.name %q", im.Name, got)
		}
		idx, err := root.ImageIndex(rm.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, d := range m.Manifests {
			if d.Platform == nil || d.Platform.OS != "linux" || machine[d.Platform.Architecture] == 0 {
				t.Fatalf("%s: manifest platform %+v", im.Name, d.Platform)
			}
			arch := d.Platform.Architecture
			seen[arch] = true
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Architecture != arch || cf.OS != "linux" {
				t.Errorf("%s %s: config says %s/%s", im.Name, arch, cf.OS, cf.Architecture)
			}
			bins := usrBin(t, img)
			if len(bins) == 0 {
				t.Fatalf("%s %s: no binaries in /usr/bin", im.Name, arch)
			}
			for n, b := range bins {
				f, err := elf.NewFile(bytes.NewReader(b))
				if err != nil {
					t.Fatalf("%s %s: /usr/bin/%s: %v", im.Name, arch, n, err)
				}
				if f.Machine != machine[arch] {
					t.Errorf("%s %s: /usr/bin/%s is %v, want %v", im.Name, arch, n, f.Machine, machine[arch])
				}
			}
		}
		if !seen["amd64"] || !seen["arm64"] || len(m.Manifests) != 2 {
			t.Errorf("%s: index platforms %v, want amd64 and arm64", im.Name, seen)
		}
		for _, p := range []string{base + ".image.tar", base + "_arm64.image.tar"} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("docker archive: %v", err)
			}
		}
	}
}

func untar(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// usrBin returns the regular files under usr/bin/ in img's layers.
func usrBin(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg && filepath.Dir(h.Name) == "usr/bin" {
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				out[filepath.Base(h.Name)] = b
			}
		}
		rc.Close()
	}
	return out
}
