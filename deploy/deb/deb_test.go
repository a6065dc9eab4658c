package deb

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/blakesmith/ar"
)

func TestVersion(t *testing.T) {
	at := time.Date(2026, 11, 24, 16, 14, 7, 0, time.UTC)
	for _, c := range []struct{ in, want, err string }{
		{in: "v1.2.3", want: "1.2.3"},
		{in: "1.2.3", want: "1.2.3"},
		{in: "v1.2.3-4-gabc1234", want: "1.2.3+4.gabc1234"},
		{in: "v1.2.3-4-gabc1234-dirty", want: "1.2.3+4.gabc1234+dirty"},
		{in: "v1.2.3rc1", want: "1.2.3rc1"},
		{in: "20bb454", want: "0~git20261124161407.20bb454"},
		{in: "20bb454-dirty\n", want: "0~git20261124161407.20bb454+dirty"},
		{in: "1.0~rc1+ds", want: "1.0~rc1+ds"},
		{in: "", err: "empty version"},
		{in: "release-one", err: "not a valid Debian version"},
		{in: "1.0 beta", err: "not a valid Debian version"},
	} {
		got, err := Version(c.in, at)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Version(%q) = %q, %v; want error %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Version(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	// Versions must sort like the commits: a later untagged commit, then a tag.
	if out, err := exec.Command("dpkg", "--compare-versions", "0~git20261124161407.20bb454", "lt", "0~git20261125000000.1111111").CombinedOutput(); err != nil {
		if _, lerr := exec.LookPath("dpkg"); lerr == nil {
			t.Errorf("dpkg --compare-versions: later commit does not sort later: %v %s", err, out)
		}
	}
	if _, err := exec.LookPath("dpkg"); err == nil {
		if err := exec.Command("dpkg", "--compare-versions", "0~git20261125000000.1111111", "lt", "0.1.0").Run(); err != nil {
			t.Errorf("an untagged build does not sort before the first tag 0.1.0")
		}
	}
}

// fixture writes fake binaries, copies the real deploy/systemd files and returns a Config.
func fixture(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	for _, n := range []string{"keyguard-agent", "keyguard", "keyguard-collector"} {
		// Stand-ins that print help the way the binaries do (the man pages are made from it).
		if err := os.WriteFile(filepath.Join(bin, n), []byte("#!/bin/sh\necho \"usage: "+n+" $*\"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return Config{Version: "1.2.3+4.gabc1234", BinDir: bin, SystemdDir: "../systemd",
		PolicyFile: "../../agent/internal/policy/testdata/example.yaml", OutDir: filepath.Join(dir, "out"),
		MTime: time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)}
}

type debFile struct {
	mode  fs.FileMode
	owner string
	data  []byte
}

type debPkg struct {
	control map[string]string
	ctlFile map[string]debFile // conffiles, md5sums, maintainer scripts
	data    map[string]debFile // regular files only, by absolute path
	dirs    []string
}

// readDeb reads a .deb with a Go ar and tar reader (no dpkg needed).
func readDeb(t *testing.T, path string) debPkg {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := debPkg{control: map[string]string{}, ctlFile: map[string]debFile{}, data: map[string]debFile{}}
	r := ar.NewReader(f)
	var members []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		members = append(members, name)
		b, _ := io.ReadAll(r)
		if !strings.HasSuffix(name, ".tar.gz") {
			continue
		}
		gz, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tr := tar.NewReader(gz)
		for {
			th, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			body, _ := io.ReadAll(tr)
			clean := "/" + strings.TrimPrefix(strings.TrimPrefix(th.Name, "./"), "/")
			df := debFile{mode: fs.FileMode(th.Mode).Perm(), owner: th.Uname + ":" + th.Gname, data: body}
			switch {
			case name == "control.tar.gz" && th.Typeflag == tar.TypeReg:
				p.ctlFile[strings.TrimPrefix(clean, "/")] = df
			case th.Typeflag == tar.TypeDir:
				p.dirs = append(p.dirs, clean)
			case th.Typeflag == tar.TypeReg:
				p.data[clean] = df
			default:
				t.Errorf("%s: unexpected entry %s type %c", name, th.Name, th.Typeflag)
			}
		}
	}
	if strings.Join(members, ",") != "debian-binary,control.tar.gz,data.tar.gz" {
		t.Fatalf("ar members %v", members)
	}
	for _, l := range strings.Split(string(p.ctlFile["control"].data), "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok && !strings.HasPrefix(l, " ") {
			p.control[k] = v
		}
	}
	return p
}

func TestBuild(t *testing.T) {
	cfg := fixture(t)
	paths, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		files     map[string]fs.FileMode
		conffiles []string
		scripts   map[string]string
		control   map[string]string
		man       []string // text each man page must hold: the binaries' help output
	}{
		"keyguard-agent": {
			files: map[string]fs.FileMode{"/usr/bin/keyguard-agent": 0o755,
				"/lib/systemd/system/keyguard-agent.service": 0o644, "/etc/default/keyguard-agent": 0o644,
				"/lib/systemd/system/keyguard-agent-failed.service": 0o644, "/lib/systemd/system/keyguard-agent-retry.timer": 0o644,
				"/usr/libexec/keyguard/agent-failed": 0o755, "/usr/share/keyguard/policy.example.yaml": 0o644},
			conffiles: []string{"/etc/default/keyguard-agent"},
			scripts:   map[string]string{"preinst": "agent-preinst", "postinst": "agent-postinst", "prerm": "agent-prerm", "postrm": "agent-postrm"},
			control:   map[string]string{"Depends": "systemd, keyguard"},
			man:       []string{`usage: keyguard\-agent \-h`, `usage: keyguard\-agent uninstall \-h`},
		},
		"keyguard": {
			files:   map[string]fs.FileMode{"/usr/bin/keyguard": 0o755},
			control: map[string]string{"Replaces": "keyguard-agent (<< 1.2.3+4.gabc1234)"},
			man:     []string{`usage: keyguard \-h`, `usage: keyguard token \-h`, `usage: keyguard break\-glass \-h`},
		},
		"keyguard-collector": {
			files: map[string]fs.FileMode{"/usr/bin/keyguard-collector": 0o755,
				"/lib/systemd/system/keyguard-collector.service": 0o644, "/etc/default/keyguard-collector": 0o644,
				"/etc/keyguard/collector.yaml": 0o644},
			conffiles: []string{"/etc/default/keyguard-collector", "/etc/keyguard/collector.yaml"},
			scripts:   map[string]string{"postinst": "collector-postinst", "prerm": "collector-prerm", "postrm": "collector-postrm"},
			control:   map[string]string{"Depends": "systemd"},
			man:       []string{`usage: keyguard\-collector serve \-h`, `usage: keyguard\-collector certs revoke \-h`},
		},
	}
	if len(paths) != len(want) {
		t.Fatalf("built %v", paths)
	}
	srcOf := map[string]string{}
	for _, p := range Packages(cfg) {
		for _, f := range p.Files {
			srcOf[f.Dst] = f.Src
		}
	}
	for _, path := range paths {
		p := readDeb(t, path)
		name := p.control["Package"]
		w, ok := want[name]
		if !ok {
			t.Fatalf("%s: unexpected package %q", path, name)
		}
		if filepath.Base(path) != name+"_1.2.3+4.gabc1234_amd64.deb" {
			t.Errorf("file name %s", filepath.Base(path))
		}
		ctl := map[string]string{"Version": cfg.Version, "Architecture": "amd64", "Section": "admin", "Priority": "optional"}
		for k, v := range w.control {
			ctl[k] = v
		}
		if _, ok := w.control["Depends"]; !ok && p.control["Depends"] != "" {
			t.Errorf("%s: Depends %q, want none", name, p.control["Depends"])
		}
		checkDocs(t, name, cfg, p, w.man)
		for k, v := range ctl {
			if p.control[k] != v {
				t.Errorf("%s: control %s = %q, want %q", name, k, p.control[k], v)
			}
		}
		// Exactly the expected files, root-owned, with their modes and their sources' content.
		var got []string
		for dst, f := range p.data {
			if isDoc(dst) {
				continue
			}
			got = append(got, dst)
			wm, ok := w.files[dst]
			if !ok {
				t.Errorf("%s: unexpected file %s", name, dst)
				continue
			}
			if f.mode != wm || f.owner != "root:root" {
				t.Errorf("%s: %s mode %v owner %s, want %v root:root", name, dst, f.mode, f.owner, wm)
			}
			src, _ := os.ReadFile(srcOf[dst])
			if !bytes.Equal(src, f.data) {
				t.Errorf("%s: %s differs from its source %s", name, dst, srcOf[dst])
			}
		}
		if len(got) != len(w.files) {
			sort.Strings(got)
			t.Errorf("%s: files %v, want %d files", name, got, len(w.files))
		}
		conf := strings.Fields(string(p.ctlFile["conffiles"].data))
		if strings.Join(conf, " ") != strings.Join(w.conffiles, " ") {
			t.Errorf("%s: conffiles %v, want %v", name, conf, w.conffiles)
		}
		for kind, src := range w.scripts {
			f, ok := p.ctlFile[kind]
			if !ok {
				t.Errorf("%s: no %s", name, kind)
				continue
			}
			emb, _ := scripts.ReadFile("scripts/" + src)
			if !bytes.Equal(f.data, emb) || f.mode&0o111 == 0 {
				t.Errorf("%s: %s is not the executable scripts/%s (mode %v)", name, kind, src, f.mode)
			}
		}
		for _, kind := range []string{"preinst", "postinst", "prerm", "postrm"} {
			if _, ok := p.ctlFile[kind]; ok && w.scripts[kind] == "" {
				t.Errorf("%s: unexpected %s", name, kind)
			}
		}
		// dpkg itself accepts the archive.
		if _, err := exec.LookPath("dpkg-deb"); err == nil {
			if out, err := exec.Command("dpkg-deb", "--info", path).CombinedOutput(); err != nil {
				t.Errorf("dpkg-deb --info %s: %v\n%s", path, err, out)
			}
		}
	}
}

// The maintainer scripts are valid POSIX sh (dash, Debian's /bin/sh), and a syntax error is caught.
func TestScriptsParse(t *testing.T) {
	sh, err := exec.LookPath("dash")
	if err != nil {
		t.Skip("dash not installed")
	}
	entries, _ := scripts.ReadDir("scripts")
	if len(entries) != 7 {
		t.Errorf("%d scripts, want 7", len(entries))
	}
	for _, e := range entries {
		b, _ := scripts.ReadFile("scripts/" + e.Name())
		if !bytes.HasPrefix(b, []byte("#!/bin/sh\n")) {
			t.Errorf("%s: does not start with #!/bin/sh", e.Name())
		}
		cmd := exec.Command(sh, "-n")
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: dash -n: %v\n%s", e.Name(), err, out)
		}
	}
	cmd := exec.Command(sh, "-n")
	cmd.Stdin = strings.NewReader("if true; then\n")
	if cmd.Run() == nil {
		t.Error("dash -n accepted a broken script: the check is useless")
	}
}

func TestBuildErrors(t *testing.T) {
	cfg := fixture(t)
	os.Remove(filepath.Join(cfg.BinDir, "keyguard"))
	if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "make packages") {
		t.Errorf("missing binary: %v", err)
	}
	cfg = fixture(t)
	cfg.Version = "v1.0"
	if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "not a valid Debian version") {
		t.Errorf("bad version: %v", err)
	}
}

func isDoc(path string) bool {
	for _, p := range []string{"/usr/share/doc/", "/usr/share/man/", "/usr/share/lintian/"} {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// checkDocs: exactly a copyright file, a changelog, a lintian override and the binaries' man pages,
// made from the help they print.
func checkDocs(t *testing.T, name string, cfg Config, p debPkg, man []string) {
	t.Helper()
	var got []string
	for dst, f := range p.data {
		if !isDoc(dst) {
			continue
		}
		got = append(got, dst)
		if f.mode != 0o644 || f.owner != "root:root" {
			t.Errorf("%s: %s mode %v owner %s", name, dst, f.mode, f.owner)
		}
	}
	sort.Strings(got)
	var want []string
	var bins []string
	for _, pk := range Packages(cfg) {
		if pk.Name != name {
			continue
		}
		for _, m := range pk.Man {
			want = append(want, "/usr/share/man/man1/"+m.Binary+".1.gz")
		}
		for _, f := range pk.Files {
			if strings.HasPrefix(f.Dst, "/usr/bin/") {
				bins = append(bins, f.Dst)
			}
		}
	}
	doc := "/usr/share/doc/" + name + "/"
	want = append(want, doc+"changelog.gz", doc+"copyright", "/usr/share/lintian/overrides/"+name)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s: doc files %v, want %v", name, got, want)
	}
	if !bytes.Equal(p.data[doc+"copyright"].data, copyright) || !bytes.Contains(copyright, []byte("License: GPL-2")) {
		t.Errorf("%s: copyright is not deb/copyright", name)
	}
	if cl := gunzip(t, p.data[doc+"changelog.gz"].data); !strings.HasPrefix(cl, name+" ("+cfg.Version+") unstable; urgency=medium\n") ||
		!strings.Contains(cl, " -- keyguard maintainers <keyguard@example.org>  Tue, 24 Nov 2026 00:00:00 +0000\n") {
		t.Errorf("%s: changelog\n%s", name, cl)
	}
	override := string(p.data["/usr/share/lintian/overrides/"+name].data)
	for _, b := range bins {
		if !strings.Contains(override, name+": statically-linked-binary ["+strings.TrimPrefix(b, "/")+"]\n") {
			t.Errorf("%s: lintian override lacks %s:\n%s", name, b, override)
		}
	}
	var pages string
	for _, f := range got {
		if strings.HasPrefix(f, "/usr/share/man/") {
			pages += gunzip(t, p.data[f].data)
		}
	}
	for _, m := range man {
		if !strings.Contains(pages, m) {
			t.Errorf("%s: man page lacks the help line %q:\n%s", name, m, pages)
		}
	}
}

func gunzip(t *testing.T, b []byte) string {
	t.Helper()
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return string(out)
}
