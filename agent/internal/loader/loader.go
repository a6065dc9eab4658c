// Package loader loads keyguard's BPF LSM programs, attaches and pins them in bpffs, adopts what an
// earlier agent pinned, and removes everything on uninstall.
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
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
	links   []link.Link
}

// programNames lists the programs in attach order: marking before checking is not required (every
// program is attached before the agent reports ready), but inheritance first keeps forks covered.
var programNames = []string{
	// The ends of in-flight memory reads before the programs that start them, so no read is left open.
	"kg_mem_rw_exit",
	"kg_vm_readv_exit",
	"kg_vm_writev_exit",
	"kg_mem_rw_enter",
	"kg_task_alloc",
	"kg_bprm_check_security",
	"kg_bprm_committed_creds",
	"kg_file_open",
	"kg_ptrace_access_check",
	"kg_ptrace_traceme",
	"kg_file_permission",
	"kg_signal_deliver",
	"kg_cred_prepare",
	"kg_dump_emit",
	"kg_bpf_map",
	"kg_bpf_prog",
	"kg_bpf",
	"kg_inode_unlink",
	"kg_inode_rmdir",
	"kg_inode_rename",
	"kg_sb_umount",
	"kg_perf_event_alloc",
	"kg_kernel_read_file",
	"kg_kernel_load_data",
	"kg_inode_link",
	"kg_path_truncate",
	"kg_path_chmod",
	"kg_path_chown",
	"kg_inode_setxattr",
	"kg_inode_removexattr",
	"kg_inode_free_security",
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
	if err := errors.Join(set("cfg_report_noaudit", b2u(c.ReportNoAudit)), set("cfg_deny_traced", b2u(c.DenyTraced))); err != nil {
		return nil, "", err
	}
	d := kgbpf.ObjectDigest()
	h := sha256.New()
	h.Write(d[:])
	fmt.Fprintf(h, "noaudit=%v traced=%v", c.ReportNoAudit, c.DenyTraced)
	return spec, hex.EncodeToString(h.Sum(nil))[:16], nil
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
	spec, build, err := cfg.spec()
	if err != nil {
		return nil, err
	}
	g := &Guard{Build: build}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinPath}}
	linkDir := filepath.Join(cfg.PinPath, "links", build)

	if links, err := loadPinnedLinks(linkDir); err == nil {
		if err := spec.LoadAndAssign(&g.Maps, opts); err != nil {
			closeLinks(links)
			return nil, mapError(err, cfg.PinPath)
		}
		g.links, g.Adopted = links, true
		log.Info("adopted pinned BPF programs", "build", build, "programs", len(links), "pin_path", cfg.PinPath)
		return g, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("pinned links of this build are unusable; attaching anew", "build", build, "error", err)
	}

	var objs kgbpf.KeyguardObjects
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return nil, mapError(err, cfg.PinPath)
	}
	defer objs.KeyguardPrograms.Close() // links hold their own references
	g.Maps = objs.KeyguardMaps
	progs := map[string]*ebpf.Program{
		"kg_task_alloc":           objs.KgTaskAlloc,
		"kg_bprm_check_security":  objs.KgBprmCheckSecurity,
		"kg_bprm_committed_creds": objs.KgBprmCommittedCreds,
		"kg_file_open":            objs.KgFileOpen,
		"kg_ptrace_access_check":  objs.KgPtraceAccessCheck,
		"kg_ptrace_traceme":       objs.KgPtraceTraceme,
		"kg_file_permission":      objs.KgFilePermission,
		"kg_signal_deliver":       objs.KgSignalDeliver,
		"kg_cred_prepare":         objs.KgCredPrepare,
		"kg_dump_emit":            objs.KgDumpEmit,
		"kg_bpf_map":              objs.KgBpfMap,
		"kg_bpf_prog":             objs.KgBpfProg,
		"kg_bpf":                  objs.KgBpf,
		"kg_inode_unlink":         objs.KgInodeUnlink,
		"kg_inode_rmdir":          objs.KgInodeRmdir,
		"kg_inode_rename":         objs.KgInodeRename,
		"kg_sb_umount":            objs.KgSbUmount,
		"kg_perf_event_alloc":     objs.KgPerfEventAlloc,
		"kg_kernel_read_file":     objs.KgKernelReadFile,
		"kg_kernel_load_data":     objs.KgKernelLoadData,
		"kg_mem_rw_exit":          objs.KgMemRwExit,
		"kg_vm_readv_exit":        objs.KgVmReadvExit,
		"kg_vm_writev_exit":       objs.KgVmWritevExit,
		"kg_mem_rw_enter":         objs.KgMemRwEnter,
		"kg_inode_link":           objs.KgInodeLink,
		"kg_path_truncate":        objs.KgPathTruncate,
		"kg_path_chmod":           objs.KgPathChmod,
		"kg_path_chown":           objs.KgPathChown,
		"kg_inode_setxattr":       objs.KgInodeSetxattr,
		"kg_inode_removexattr":    objs.KgInodeRemovexattr,
		"kg_inode_free_security":  objs.KgInodeFreeSecurity,
	}
	tmpDir := linkDir + "_new"
	_ = os.RemoveAll(tmpDir)
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		g.Maps.Close()
		return nil, fmt.Errorf("create link pin folder: %w", err)
	}
	for _, name := range programNames {
		l, err := attach(progs[name])
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
	log.Info("attached and pinned BPF programs", "build", build, "programs", len(g.links), "replaced_builds", removed, "pin_path", cfg.PinPath)
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

func loadPinnedLinks(dir string) ([]link.Link, error) {
	var links []link.Link
	for _, name := range programNames {
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
