package oci

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func fixture(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	write := func(p, data string) string {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, n := range []string{"keyguard-agent", "keyguard", "keyguard-collector"} {
		write(filepath.Join(dir, "bin", n), "fake "+n)
	}
	return Config{Version: "0~git20261124.abc+dirty", Repository: "keyguard", BinDir: filepath.Join(dir, "bin"),
		CACerts: write(filepath.Join(dir, "ca.crt"), "fake CA bundle"), Busybox: write(filepath.Join(dir, "busybox"), "fake busybox"),
		OutDir: filepath.Join(dir, "out"), MTime: time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)}
}

type entry struct {
	mode     int64
	uid, gid int
	typ      byte
	data     string
	link     string
}

func TestBuild(t *testing.T) {
	cfg := fixture(t)
	paths, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := func(mode int64, data string) entry { return entry{mode: mode, typ: tar.TypeReg, data: data} }
	dir := func(mode int64) entry { return entry{mode: mode, typ: tar.TypeDir} }
	base := map[string]entry{
		"etc/": dir(0o755), "etc/passwd": reg(0o644, passwd), "etc/group": reg(0o644, group),
		"etc/ssl/": dir(0o755), "etc/ssl/certs/": dir(0o755), "etc/ssl/certs/ca-certificates.crt": reg(0o644, "fake CA bundle"),
		"tmp/": dir(0o1777),
	}
	agentBase := map[string]entry{"bin/": dir(0o755), "bin/busybox": reg(0o755, "fake busybox")}
	for k, v := range base {
		agentBase[k] = v
	}
	for _, a := range []string{"sh", "cmp", "cp", "chmod", "mkdir", "mv"} {
		agentBase["bin/"+a] = entry{mode: 0o777, typ: tar.TypeSymlink, link: "busybox"}
	}
	usr := func(names ...string) map[string]entry {
		m := map[string]entry{"usr/": dir(0o755), "usr/bin/": dir(0o755)}
		for _, n := range names {
			m["usr/bin/"+n] = reg(0o755, "fake "+n)
		}
		return m
	}
	want := []struct {
		ref        string
		entrypoint string
		cmd        string
		user       string
		ports      []string
		layers     []map[string]entry
	}{
		{"keyguard/keyguard-agent:0-git20261124.abc_dirty", "/usr/bin/keyguard-agent", "run", "0:0", nil,
			[]map[string]entry{agentBase, usr("keyguard-agent", "keyguard")}},
		{"keyguard/keyguard-collector:0-git20261124.abc_dirty", "/usr/bin/keyguard-collector", "serve", "65532:65532", []string{"7443/tcp"},
			[]map[string]entry{base, usr("keyguard-collector")}},
	}
	if len(paths) != 2*len(want) {
		t.Fatalf("built %v", paths)
	}
	for i, w := range want {
		tag, err := name.NewTag(w.ref)
		if err != nil {
			t.Fatal(err)
		}
		ociPath, archivePath := paths[2*i], paths[2*i+1]
		if !strings.HasSuffix(ociPath, ".oci.tar") || !strings.HasSuffix(archivePath, ".image.tar") {
			t.Fatalf("paths %s %s", ociPath, archivePath)
		}
		img, err := tarball.ImageFromPath(archivePath, &tag)
		if err != nil {
			t.Fatalf("%s: read back %s: %v", w.ref, paths[i], err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cf.Config
		if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Time.Equal(cfg.MTime) {
			t.Errorf("%s: os/arch/created %s/%s/%v", w.ref, cf.OS, cf.Architecture, cf.Created)
		}
		if strings.Join(c.Entrypoint, " ") != w.entrypoint || strings.Join(c.Cmd, " ") != w.cmd || c.User != w.user {
			t.Errorf("%s: entrypoint %q cmd %q user %q", w.ref, c.Entrypoint, c.Cmd, c.User)
		}
		var ports []string
		for p := range c.ExposedPorts {
			ports = append(ports, p)
		}
		if strings.Join(ports, ",") != strings.Join(w.ports, ",") {
			t.Errorf("%s: ports %v, want %v", w.ref, ports, w.ports)
		}
		if c.Labels["org.opencontainers.image.version"] != cfg.Version {
			t.Errorf("%s: labels %v", w.ref, c.Labels)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(layers) != len(w.layers) {
			t.Fatalf("%s: %d layers, want %d", w.ref, len(layers), len(w.layers))
		}
		for li, l := range layers {
			rc, err := l.Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]entry{}
			tr := tar.NewReader(rc)
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(tr)
				got[h.Name] = entry{mode: h.Mode, uid: h.Uid, gid: h.Gid, typ: h.Typeflag, data: string(b), link: h.Linkname}
			}
			rc.Close()
			for n, we := range w.layers[li] {
				if ge, ok := got[n]; !ok {
					t.Errorf("%s: layer %d lacks %s", w.ref, li, n)
				} else if ge != we {
					t.Errorf("%s: layer %d %s = %+v, want %+v", w.ref, li, n, ge, we)
				}
			}
			var extra []string
			for n := range got {
				if _, ok := w.layers[li][n]; !ok {
					extra = append(extra, n)
				}
			}
			sort.Strings(extra)
			if len(extra) > 0 {
				t.Errorf("%s: layer %d has unexpected %v", w.ref, li, extra)
			}
		}
		checkOCILayout(t, ociPath, tag, img)
	}
	// The collector's user exists in its image's passwd (the Helm chart runs it as 65532).
	if !strings.Contains(passwd, ":65532:65532:") {
		t.Error("no 65532 user in passwd")
	}
}

func TestReproducible(t *testing.T) {
	cfg := fixture(t)
	a, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var first [][]byte
	for _, p := range a {
		b, _ := os.ReadFile(p)
		first = append(first, b)
	}
	b, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range b {
		second, _ := os.ReadFile(p)
		if len(second) == 0 || !bytes.Equal(first[i], second) {
			t.Errorf("two builds of %s differ", filepath.Base(p))
		}
	}
}

func TestBuildErrors(t *testing.T) {
	cfg := fixture(t)
	os.Remove(cfg.Busybox)
	if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "bin/busybox") {
		t.Errorf("missing busybox: %v", err)
	}
	cfg = fixture(t)
	cfg.Version = "a/b"
	if _, err := Build(cfg); err == nil {
		t.Error("a version with a slash was accepted")
	}
}

// checkOCILayout unpacks the OCI archive and checks it holds the same image (config and layers) as
// the docker archive, with OCI media types, named by the ref.name annotation.
func checkOCILayout(t *testing.T, path string, tag name.Tag, want v1.Image) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(dst, dir+string(filepath.Separator)) {
			t.Fatalf("archive entry %q escapes", h.Name)
		}
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(dst, 0o755)
			continue
		}
		b, _ := io.ReadAll(tr)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		os.WriteFile(dst, b, 0o644)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("%s: not an OCI layout: %v", path, err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%s: %d manifests", path, len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.MediaType != types.OCIManifestSchema1 || d.Annotations["org.opencontainers.image.ref.name"] != tag.TagStr() ||
		d.Annotations["io.containerd.image.name"] != tag.Name() {
		t.Errorf("%s: descriptor %s %v", path, d.MediaType, d.Annotations)
	}
	img, err := ii.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	gotCfg, _ := img.ConfigName()
	wantCfg, _ := want.ConfigName()
	if gotCfg != wantCfg {
		t.Errorf("%s: config %s, the docker archive has %s", path, gotCfg, wantCfg)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	wl, _ := want.Layers()
	if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != len(wl) {
		t.Fatalf("%s: config %s, %d layers", path, m.Config.MediaType, len(m.Layers))
	}
	for i, l := range m.Layers {
		wd, _ := wl[i].Digest()
		if l.MediaType != types.OCILayer || l.Digest != wd {
			t.Errorf("%s: layer %d %s %s, want %s %s", path, i, l.MediaType, l.Digest, types.OCILayer, wd)
		}
	}
	if err := validateBlobs(img); err != nil {
		t.Errorf("%s: %v", path, err)
	}
}

// validateBlobs checks every layer blob of img against its digest.
func validateBlobs(img v1.Image) error {
	ls, err := img.Layers()
	if err != nil {
		return err
	}
	for i, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return err
		}
		d, _ := l.Digest()
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.String() {
			return fmt.Errorf("layer %d blob hashes to %s, its digest says %s", i, got, d)
		}
	}
	return nil
}
