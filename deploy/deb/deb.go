// Package deb builds keyguard's Debian packages, keyguard-agent, keyguard (the operator CLI, also for
// operators' machines) and keyguard-collector, with nfpm (as a Go library: no dpkg-deb, no debhelper).
// Contents: the static binaries, a man page per binary made from its own help output (package
// manpage: the binaries are run, so they must be for the build machine's architecture), the
// copyright file (DEP-5: Apache-2.0, the BPF programs GPL-2) and a changelog in
// /usr/share/doc/<package>, a lintian override for the static Go binaries, the systemd units and
// default files from deploy/systemd (configuration files marked as conffiles), and the maintainer
// scripts in scripts/ (embedded), which follow dh_installsystemd except where keyguard needs more:
//
//   - keyguard-agent is enabled and started only once /etc/keyguard/policy.yaml and
//     /etc/keyguard/operator.pub exist (postinst says what to do otherwise);
//   - an upgrade never stops the agent: the running agent sees the new binary land and trusts it,
//     and only then does postinst restart it (an agent binary it never saw cannot take over);
//   - removal while keyguard enforces goes through `keyguard-agent uninstall -token-file
//     /etc/keyguard/uninstall.token` (an operator-signed token); without it prerm refuses and
//     nothing is removed.
package deb

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the "deb" packager
	"github.com/goreleaser/nfpm/v2/files"

	"github.com/keyguard/keyguard/deploy/manpage"
)

//go:embed scripts
var scripts embed.FS

//go:embed copyright
var copyright []byte

// Config says where the inputs are and what to write.
type Config struct {
	Version    string    // Debian version, see Version
	Arch       string    // Debian architecture of BinDir's binaries (amd64, arm64); "" is amd64
	BinDir     string    // holds keyguard-agent, keyguard and keyguard-collector (static linux/<Arch>)
	HelpBinDir string    // the same binaries for this machine, run for the man pages; "" is BinDir
	SystemdDir string    // deploy/systemd: units, /etc/default files, collector.yaml
	PolicyFile string    // example policy installed as /usr/share/keyguard/policy.example.yaml
	OutDir     string    // where the .deb files go
	MTime      time.Time // timestamp of every file (reproducible builds); zero: now
}

func (cfg Config) arch() string {
	if cfg.Arch == "" {
		return "amd64"
	}
	return cfg.Arch
}

// File is one file a package installs.
type File struct {
	Src, Dst string
	Mode     fs.FileMode
	Conffile bool
}

// Man is a man page made from a binary's help (see package manpage).
type Man struct {
	Binary  string // in Config.BinDir; the page is /usr/share/man/man1/<Binary>.1.gz
	Summary string
	Helps   [][]string
}

// Package describes one .deb.
type Package struct {
	Name        string
	Description string
	Depends     []string
	Replaces    []string
	Overrides   string // lintian overrides beyond the static binaries, each with its reason
	Files       []File
	Man         []Man
	Scripts     map[string]string // preinst, postinst, prerm, postrm -> file in scripts/
}

// Packages returns the three packages for cfg.
func Packages(cfg Config) []Package {
	bin := func(name string) File {
		return File{Src: filepath.Join(cfg.BinDir, name), Dst: "/usr/bin/" + name, Mode: 0o755}
	}
	sd := func(name, dst string, mode fs.FileMode, conf bool) File {
		return File{Src: filepath.Join(cfg.SystemdDir, name), Dst: dst, Mode: mode, Conffile: conf}
	}
	return []Package{
		{
			Name: "keyguard-agent",
			Description: "keyguard agent: keeps signing keys inside the processes that hold them\n" +
				"BPF LSM programs deny every other process, root included, every way\n" +
				"of reading a protected process's memory, block or redact its core\n" +
				"dumps, and report every attempt to a keyguard collector.",
			// The maintainer scripts run `keyguard status`.
			Depends: []string{"systemd", "keyguard"},
			Files: []File{
				bin("keyguard-agent"),
				sd("keyguard-agent.service", "/lib/systemd/system/keyguard-agent.service", 0o644, false),
				sd("keyguard-agent-failed.service", "/lib/systemd/system/keyguard-agent-failed.service", 0o644, false),
				sd("keyguard-agent-retry.timer", "/lib/systemd/system/keyguard-agent-retry.timer", 0o644, false),
				sd("keyguard-agent-failed", "/usr/libexec/keyguard/agent-failed", 0o755, false),
				sd("keyguard-agent.default", "/etc/default/keyguard-agent", 0o644, true),
				{Src: cfg.PolicyFile, Dst: "/usr/share/keyguard/policy.example.yaml", Mode: 0o644},
			},
			Man: []Man{{Binary: "keyguard-agent", Summary: "keyguard's BPF LSM agent",
				Helps: [][]string{{"-h"}, {"run", "-h"}, {"probe", "-h"}, {"uninstall", "-h"}}}},
			Scripts: map[string]string{"preinst": "agent-preinst", "postinst": "agent-postinst", "prerm": "agent-prerm", "postrm": "agent-postrm"},
			Overrides: "# Removal goes through the running agent (it checks the operator's token and unpins its programs):\n" +
				"# prerm starts it even when the unit is disabled, which deb-systemd-invoke would skip.\n" +
				"keyguard-agent: maintainer-script-calls-systemctl [prerm:*]\n",
		},
		{
			Name: "keyguard",
			Description: "operator CLI for keyguard\n" +
				"Makes operator keys and signs uninstall, break-glass and policy tokens,\n" +
				"queries the collector's events and hosts, verifies its hash chains, shows\n" +
				"the local agent's state and scans files for private keys. For operators'\n" +
				"machines and agent hosts.",
			// Before the split, keyguard-agent shipped /usr/bin/keyguard.
			Replaces: []string{"keyguard-agent (<< " + cfg.Version + ")"},
			Files:    []File{bin("keyguard")},
			Man: []Man{{Binary: "keyguard", Summary: "keyguard operator CLI",
				Helps: append([][]string{{"-h"}}, sub("break-glass", "events", "hosts", "scan", "status", "token", "verify")...)}},
		},
		{
			Name: "keyguard-collector",
			Description: "keyguard collector: stores keyguard agents' events\n" +
				"Receives events over mutual-TLS gRPC and keeps them exactly once in a\n" +
				"tamper-evident chain, in SQLite or PostgreSQL.",
			Depends: []string{"systemd"},
			Files: []File{
				bin("keyguard-collector"),
				sd("keyguard-collector.service", "/lib/systemd/system/keyguard-collector.service", 0o644, false),
				sd("keyguard-collector.default", "/etc/default/keyguard-collector", 0o644, true),
				sd("collector.yaml", "/etc/keyguard/collector.yaml", 0o644, true),
			},
			Man: []Man{{Binary: "keyguard-collector", Summary: "keyguard's event collector",
				Helps: [][]string{{"-h"}, {"serve", "-h"}, {"certs"}, {"certs", "init", "-h"}, {"certs", "host", "-h"},
					{"certs", "operator", "-h"}, {"certs", "revoke", "-h"}, {"enroll"}, {"verify", "-h"}, {"console", "-h"}}}},
			Scripts: map[string]string{"postinst": "collector-postinst", "prerm": "collector-prerm", "postrm": "collector-postrm"},
		},
	}
}

// sub is the help invocation of each subcommand.
func sub(names ...string) [][]string {
	var out [][]string
	for _, n := range names {
		out = append(out, []string{n, "-h"})
	}
	return out
}

var debVersion = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~-]*$`)

// Version turns `git describe --tags --always --dirty` output into a Debian version that sorts
// the way the commits do: v1.2.3 -> 1.2.3; v1.2.3-4-gabc1234 -> 1.2.3+4.gabc1234; without a tag,
// 0~git<commit time as YYYYMMDDhhmmss>.<hash> (commitTime: the commit's time). A -dirty suffix
// becomes +dirty. A version that already looks like a Debian one is kept.
func Version(describe string, commitTime time.Time) (string, error) {
	d := strings.TrimSpace(describe)
	if d == "" {
		return "", fmt.Errorf("empty version: pass -version or build from a git checkout")
	}
	dirty := strings.HasSuffix(d, "-dirty")
	d = strings.TrimSuffix(d, "-dirty")
	var v string
	switch m := regexp.MustCompile(`^v?([0-9][0-9A-Za-z.]*)(?:-([0-9]+)-(g[0-9a-f]+))?$`).FindStringSubmatch(d); {
	case regexp.MustCompile(`^[0-9a-f]{7,40}$`).MatchString(d): // no tag: an abbreviated commit hash
		v = "0~git" + commitTime.UTC().Format("20060102150405") + "." + d
	case m != nil && m[2] != "":
		v = m[1] + "+" + m[2] + "." + m[3]
	case m != nil:
		v = m[1]
	default:
		v = d
	}
	if dirty {
		v += "+dirty"
	}
	if !debVersion.MatchString(v) {
		return "", fmt.Errorf("version %q (from %q) is not a valid Debian version: it must start with a digit and use only A-Za-z0-9.+~-", v, describe)
	}
	return v, nil
}

// Build writes every package into cfg.OutDir as <name>_<version>_<arch>.deb and returns the paths.
func Build(cfg Config) ([]string, error) {
	if !debVersion.MatchString(cfg.Version) {
		return nil, fmt.Errorf("version %q is not a valid Debian version (see deb.Version)", cfg.Version)
	}
	if cfg.MTime.IsZero() {
		cfg.MTime = time.Now()
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "keyguard-deb-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var out []string
	for _, p := range Packages(cfg) {
		path, err := build(cfg, p, tmp)
		if err != nil {
			return nil, fmt.Errorf("package %s: %w", p.Name, err)
		}
		out = append(out, path)
	}
	return out, nil
}

func build(cfg Config, p Package, tmp string) (string, error) {
	info := &nfpm.Info{
		Name:          p.Name,
		Arch:          cfg.arch(),
		Platform:      "linux",
		Version:       cfg.Version,
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    maintainer,
		Description:   p.Description,
		Homepage:      "https://github.com/keyguard/keyguard",
		License:       "Apache-2.0 and GPL-2",
		MTime:         cfg.MTime,
	}
	info.Depends = p.Depends
	info.Replaces = p.Replaces
	docs, err := docFiles(cfg, p, tmp)
	if err != nil {
		return "", err
	}
	for _, f := range append(p.Files, docs...) {
		if _, err := os.Stat(f.Src); err != nil {
			return "", fmt.Errorf("missing input (build the binaries first: make packages): %w", err)
		}
		c := &files.Content{Source: f.Src, Destination: f.Dst,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: f.Mode, MTime: cfg.MTime}}
		if f.Conffile {
			c.Type = files.TypeConfig
		}
		info.Contents = append(info.Contents, c)
	}
	for kind, name := range p.Scripts {
		b, err := scripts.ReadFile("scripts/" + name)
		if err != nil {
			return "", err
		}
		path := filepath.Join(tmp, p.Name+"."+kind)
		if err := os.WriteFile(path, b, 0o755); err != nil {
			return "", err
		}
		switch kind {
		case "preinst":
			info.Scripts.PreInstall = path
		case "postinst":
			info.Scripts.PostInstall = path
		case "prerm":
			info.Scripts.PreRemove = path
		case "postrm":
			info.Scripts.PostRemove = path
		default:
			return "", fmt.Errorf("unknown maintainer script kind %q", kind)
		}
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", err
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	path := filepath.Join(cfg.OutDir, fmt.Sprintf("%s_%s_%s.deb", p.Name, cfg.Version, cfg.arch()))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	return path, f.Close()
}

// docFiles writes the package's man pages, copyright, changelog and lintian override into tmp and
// returns them as files to install.
func docFiles(cfg Config, p Package, tmp string) ([]File, error) {
	dir := filepath.Join(tmp, p.Name+"-doc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []File
	add := func(name, dst string, b []byte) error {
		src := filepath.Join(dir, name)
		out = append(out, File{Src: src, Dst: dst, Mode: 0o644})
		return os.WriteFile(src, b, 0o644)
	}
	var override strings.Builder
	for _, f := range p.Files {
		if strings.HasPrefix(f.Dst, "/usr/bin/") {
			// Go binaries are static on purpose (no libc in the images, one binary for every Debian).
			fmt.Fprintf(&override, "%s: statically-linked-binary [%s]\n", p.Name, strings.TrimPrefix(f.Dst, "/"))
		}
	}
	override.WriteString(p.Overrides)
	for _, m := range p.Man {
		var also []string
		for _, b := range []string{"keyguard-agent", "keyguard", "keyguard-collector"} {
			if b != m.Binary {
				also = append(also, b+"(1)")
			}
		}
		helpDir := cfg.HelpBinDir
		if helpDir == "" {
			helpDir = cfg.BinDir
		}
		page, err := manpage.FromBinary(context.Background(), filepath.Join(helpDir, m.Binary), manpage.Page{Name: m.Binary,
			Section: "1", Summary: m.Summary, Version: cfg.Version, Date: cfg.MTime, Helps: m.Helps, SeeAlso: also})
		if err != nil {
			return nil, fmt.Errorf("man page (build the binaries for this machine first: make packages): %w", err)
		}
		gz, err := manpage.Gzip(page)
		if err != nil {
			return nil, err
		}
		if err := add(m.Binary+".1.gz", "/usr/share/man/man1/"+m.Binary+".1.gz", gz); err != nil {
			return nil, err
		}
	}
	changelog, err := manpage.Gzip([]byte(Changelog(p.Name, cfg.Version, cfg.MTime)))
	if err != nil {
		return nil, err
	}
	doc := "/usr/share/doc/" + p.Name + "/"
	return out, errors.Join(add("copyright", doc+"copyright", copyright),
		add("changelog.gz", doc+"changelog.gz", changelog),
		add("lintian-override", "/usr/share/lintian/overrides/"+p.Name, []byte(override.String())))
}

// Changelog is the package's Debian changelog: one entry for the version built (keyguard is a
// native package built from git; the history is the repository's).
func Changelog(pkg, version string, at time.Time) string {
	return fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n"+
		"  * Built from git at version %s.\n"+
		"    The changes are the history of https://github.com/keyguard/keyguard\n\n"+
		" -- %s  %s\n", pkg, version, version, maintainer, at.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"))
}

const maintainer = "keyguard maintainers <keyguard@example.org>"
