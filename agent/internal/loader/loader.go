// Package loader is the one owner of keyguard's BPF state: the embedded object (package bpf, built
// from bpf/src), loading it with its settings, attaching and pinning every program the object holds,
// adopting what an earlier agent pinned, the agent's reads and writes of the maps (Guard), a read-only
// View of the pins for other processes (the core-dump handler), and removing everything on uninstall.
// Apart from the event decoder (package events), nothing else in the agent imports package bpf.
//
// Layout under Config.PinPath (default /sys/fs/bpf/keyguard):
//
//	<map name>              every map, pinned by name (state survives restarts and upgrades)
//	links/<build>/<program> the LSM links of one build of the BPF object
//
// A restarted agent of the same build and settings adopts links/<build>; a different build attaches its
// own links first and only then unpins the old ones, so enforcement never lapses during an upgrade.
package loader

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"
)

// DefaultPinPath is where keyguard pins its programs and maps.
const DefaultPinPath = "/sys/fs/bpf/keyguard"

// Config holds the load-time settings. The zero value is not valid; start from DefaultConfig.
type Config struct {
	// PinPath is a directory on bpffs for keyguard's pins.
	PinPath string
	// ReportNoAudit also reports PTRACE_MODE_NOAUDIT checks (ps, top reading /proc/PID/stat of a
	// protected process). They are decided either way; by default they are only counted.
	ReportNoAudit bool
	// DenyTraced refuses exec of a protected executable and opens of key files by a process under a
	// tracer that is not an allowed accessor.
	DenyTraced bool
	// NoDumpGuard leaves the dump guard out as if the kernel could not trace dump_emit (tests the
	// fallback: redact rules enforced as block). See variants.go.
	NoDumpGuard bool
	// DenyMetadata decides metadata reads of protected processes (readlink of /proc/PID/exe, cwd, root,
	// attr, ...) like memory reads: denied unless the rule allows the accessor (reported at low
	// severity). By default they are allowed and reported at info severity.
	DenyMetadata bool
	// NoInflightWait lets key-file opens succeed while memory reads of the opener are in flight and
	// spares /proc/PID/mem readers that passed their check before the mark: the race window is open
	// again. Only for the race test's control run, which must then see leaks.
	NoInflightWait bool
	// NoForkRecheck leaves out the second look at a forking parent's mark after the child's memory is
	// copied (kg_fork_copied) and lets key-file opens succeed while another process shares the opener's
	// memory: a fork racing a key-file open in another thread can leave an unmarked child holding the
	// key. Only for the fork race test's control run, which must then see leaks.
	NoForkRecheck bool
}

// DefaultConfig returns the production defaults.
func DefaultConfig() Config {
	return Config{PinPath: DefaultPinPath, DenyTraced: true}
}

// Guard is keyguard's loaded, attached and pinned BPF state.
type Guard struct {
	Maps kgbpf.KeyguardMaps
	// Build names the BPF build and settings whose links are pinned.
	Build string
	// Adopted is true when the links were already pinned by an earlier agent of the same build.
	Adopted bool
	// Variants are the program variants chosen for this kernel.
	Variants Variants
	links    []link.Link
}

// programs lists the BPF object's programs, all of which the agent attaches, in attach order: the ones
// that pass protection on to fork children first (so no child of a protected process escapes while
// the others attach), then the ends of in-flight memory reads, then by name. The list comes from the object itself: a program added in bpf/src
// is attached and pinned with no change here.
func programs(spec *ebpf.CollectionSpec) []string {
	names := slices.Sorted(maps.Keys(spec.Programs))
	slices.SortStableFunc(names, func(a, b string) int {
		return cmp.Compare(attachRank(spec.Programs[a]), attachRank(spec.Programs[b]))
	})
	return names
}

func attachRank(p *ebpf.ProgramSpec) int {
	switch p.AttachTo {
	case "task_alloc":
		return 0
	case "copy_namespaces": // the second look at the parent's mark, after the child's memory is copied
		return 1
	}
	// The ends of in-flight memory reads (fexit) before the programs that start them, so no read
	// begun while the programs attach is left open.
	if p.AttachType == ebpf.AttachTraceFExit {
		return 2
	}
	return 3
}

func (c Config) spec() (*ebpf.CollectionSpec, string, error) {
	spec, err := kgbpf.LoadKeyguard()
	if err != nil {
		return nil, "", fmt.Errorf("parse embedded BPF object: %w", err)
	}
	set := func(name string, v uint32) error {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("BPF object has no setting %s", name)
		}
		return vs.Set(v)
	}
	b2u := func(b bool) uint32 {
		if b {
			return 1
		}
		return 0
	}
	if err := errors.Join(set("cfg_report_noaudit", b2u(c.ReportNoAudit)), set("cfg_deny_traced", b2u(c.DenyTraced)),
		set("cfg_deny_metadata", b2u(c.DenyMetadata)), set("cfg_inflight_wait", b2u(!c.NoInflightWait)),
		set("cfg_fork_recheck", b2u(!c.NoForkRecheck))); err != nil {
		return nil, "", err
	}
	d := kgbpf.ObjectDigest()
	h := sha256.New()
	h.Write(d[:])
	fmt.Fprintf(h, "noaudit=%v traced=%v nowait=%v", c.ReportNoAudit, c.DenyTraced, c.NoInflightWait)
	if c.DenyMetadata {
		fmt.Fprint(h, " metadata=deny")
	}
	if c.NoForkRecheck {
		fmt.Fprint(h, " forkrecheck=off")
	}
	return spec, hex.EncodeToString(h.Sum(nil))[:16], nil
}

// prepare is the object as this kernel gets it: settings, the variants the probe chose, and the load
// options (maps pinned in PinPath, kernel BTF with duplicate entries of traced functions renamed).
func (c Config) prepare() (*ebpf.CollectionSpec, *ebpf.CollectionOptions, Variants, string, error) {
	spec, build, err := c.spec()
	if err != nil {
		return nil, nil, Variants{}, "", err
	}
	v, build, err := c.variants(spec, build)
	if err != nil {
		return nil, nil, Variants{}, "", err
	}
	spec = withVariants(spec, v)
	cache, err := tracingCache(tracingTargets(spec))
	if err != nil {
		return nil, nil, Variants{}, "", err
	}
	return spec, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: c.PinPath}, Cache: cache}, v, build, nil
}

// Load loads, attaches and pins the programs, or adopts the ones an earlier agent of the same build
// pinned. Maps are always reused from the pins when they exist, so protection marks, rules and
// undelivered events survive. Call Probe first for a clear message when the kernel lacks something.
func Load(cfg Config, log *slog.Logger) (*Guard, error) {
	if err := checkBPFFS(filepath.Dir(cfg.PinPath)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinPath, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin folder: %w", err)
	}
	spec, opts, v, build, err := cfg.prepare()
	if err != nil {
		return nil, err
	}
	g := &Guard{Build: build, Variants: v}
	linkDir := filepath.Join(cfg.PinPath, "links", build)

	names := programs(spec)
	if links, err := loadPinnedLinks(linkDir, names); err == nil {
		if err := spec.LoadAndAssign(&g.Maps, opts); err != nil {
			closeLinks(links)
			return nil, mapError(err, cfg.PinPath)
		}
		g.links, g.Adopted = links, true
		if err := g.rebuildFast(); err != nil {
			g.Close()
			return nil, err
		}
		log.Info("adopted pinned BPF programs", "build", build, "programs", len(links), "pin_path", cfg.PinPath)
		return g, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("pinned links of this build are unusable; attaching anew", "build", build, "error", err)
	}

	coll, err := ebpf.NewCollectionWithOptions(spec, *opts)
	if err != nil {
		return nil, mapError(err, cfg.PinPath)
	}
	defer coll.Close() // the programs: links hold their own references
	if err := coll.Assign(&g.Maps); err != nil {
		return nil, fmt.Errorf("load BPF maps: %w", err)
	}
	// Before the first program runs: the filter must cover every entry the pinned rule maps hold.
	if err := g.rebuildFast(); err != nil {
		g.Maps.Close()
		return nil, err
	}
	tmpDir := linkDir + "_new"
	_ = os.RemoveAll(tmpDir)
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		g.Maps.Close()
		return nil, fmt.Errorf("create link pin folder: %w", err)
	}
	for _, name := range names {
		l, err := attach(coll.Programs[name])
		if err != nil {
			closeLinks(g.links)
			g.Maps.Close()
			_ = os.RemoveAll(tmpDir)
			return nil, fmt.Errorf("attach BPF program %s: %w (is `bpf` in /sys/kernel/security/lsm? run `keyguard-agent probe`)", name, err)
		}
		if err := l.Pin(filepath.Join(tmpDir, name)); err != nil {
			l.Close()
			closeLinks(g.links)
			g.Maps.Close()
			_ = os.RemoveAll(tmpDir)
			return nil, fmt.Errorf("pin link %s in %s: %w", name, tmpDir, err)
		}
		g.links = append(g.links, l)
	}
	// bpffs allows renaming pins; the new links are attached before any old build's links are removed.
	_ = os.RemoveAll(linkDir)
	if err := os.Rename(tmpDir, linkDir); err != nil {
		return nil, fmt.Errorf("publish link pins: %w", err)
	}
	removed, err := removeOtherBuilds(filepath.Join(cfg.PinPath, "links"), build)
	if err != nil {
		log.Warn("could not remove links of an earlier build; both stay attached until removed", "error", err)
	}
	log.Info("attached and pinned BPF programs", "build", build, "variants", v.String(), "programs", len(g.links), "replaced_builds", removed, "pin_path", cfg.PinPath)
	return g, nil
}

// Close releases the agent's references. Pinned links keep enforcing.
func (g *Guard) Close() error {
	closeLinks(g.links)
	g.links = nil
	return g.Maps.Close()
}

// Uninstall removes every keyguard pin. Enforcement ends when the last reference goes away, so a
// running agent must be stopped first.
func Uninstall(pinPath string) error {
	if _, err := os.Stat(pinPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := checkBPFFS(filepath.Dir(pinPath)); err != nil {
		return err
	}
	if err := os.RemoveAll(pinPath); err != nil {
		return fmt.Errorf("remove %s: %w (only the agent may remove keyguard's pins: use `keyguard-agent uninstall` while the agent runs)", pinPath, err)
	}
	return nil
}

// Pinned reports whether a build's links are pinned under pinPath (enforcement persists).
func Pinned(pinPath string) (builds []string, err error) {
	ents, err := os.ReadDir(filepath.Join(pinPath, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	for _, e := range ents {
		if e.IsDir() && !strings.HasSuffix(e.Name(), "_new") {
			builds = append(builds, e.Name())
		}
	}
	return builds, err
}

func loadPinnedLinks(dir string, names []string) ([]link.Link, error) {
	var links []link.Link
	for _, name := range names {
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if err != nil {
			closeLinks(links)
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

func removeOtherBuilds(linksDir, keep string) ([]string, error) {
	ents, err := os.ReadDir(linksDir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if e.Name() == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(linksDir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

func closeLinks(ls []link.Link) {
	for _, l := range ls {
		l.Close()
	}
}

func mapError(err error, pinPath string) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("the kernel's verifier rejected keyguard's BPF programs (report this with the kernel version): %+v", ve)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("maps pinned in %s by another keyguard version are incompatible with this one: %w (stop the agent, run `keyguard-agent uninstall`, start it again)", pinPath, err)
	}
	return fmt.Errorf("load BPF programs: %w", err)
}

func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bpffs folder %s: %w (mount bpffs: mount -t bpf bpf /sys/fs/bpf)", dir, err)
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not on bpffs, so keyguard cannot pin its programs (mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}
