package policy

import (
	"fmt"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"hash/fnv"
	"strconv"
)

// Mode says what a rule does with an access to a protected process. Values equal enum kg_mode in
// bpf/src/keyguard.h.
type Mode uint32

const (
	Enforce Mode = 0 // deny with EPERM and report
	Audit   Mode = 1 // allow and report
)

func (m Mode) String() string {
	switch m {
	case Enforce:
		return "enforce"
	case Audit:
		return "audit"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// DumpMode says what happens to a core dump of a rule's processes. Values are meant for enum
// kg_dump_mode (block = 0, redact = 1, allow = 2).
type DumpMode uint32

const (
	DumpBlock  DumpMode = 0 // no dump bytes anywhere; reported
	DumpRedact DumpMode = 1 // dump goes through keyguard's redacting handler
	DumpAllow  DumpMode = 2 // dump passes unchanged; reported
)

func (d DumpMode) String() string {
	switch d {
	case DumpBlock:
		return "block"
	case DumpRedact:
		return "redact"
	case DumpAllow:
		return "allow"
	}
	return "DumpMode(" + strconv.Itoa(int(d)) + ")"
}

// AnyUID is the UID value the kernel's allow map uses for "any uid" (KG_ANY_UID). It is also the
// value of Accessor.UID when Accessor.AnyUID is set.
const AnyUID = ^uint32(0)

// BPFLoaderRule is the rule id under which BPFLoaders appear in Resolved.Accessors and Maps().Allow.
const BPFLoaderRule = 0

// Pseudo rule ids of the other side-door allow lists (KG_ALLOW_SYSCTL, KG_ALLOW_KMEM in
// bpf/src/keyguard.h). Rule ids are FNV hashes; a clash with these is refused like a duplicate.
const (
	SysctlWriterRule = 0xfffffff0
	KernelMemoryRule = 0xfffffff1
	KeyManagerRule   = 0xfffffff2 // KG_ALLOW_KEYMGR: key_managers
	RawDiskRule      = 0xfffffff3 // KG_ALLOW_RAWDISK: raw_disk_readers; also marks loop images in key_rules
	PackageMgrRule   = 0xfffffff4 // KG_ALLOW_PKGMGR: package_managers
)

// ModuleMode says what happens to kernel module and kexec image loads. Values equal enum
// kg_module_mode.
type ModuleMode uint32

const (
	ModulesDeny  ModuleMode = 0 // refused and reported (default)
	ModulesAudit ModuleMode = 1 // allowed and reported
	ModulesAllow ModuleMode = 2 // allowed silently
)

func (m ModuleMode) String() string {
	switch m {
	case ModulesDeny:
		return "deny"
	case ModulesAudit:
		return "audit"
	case ModulesAllow:
		return "allow"
	}
	return "ModuleMode(" + strconv.Itoa(int(m)) + ")"
}

// MaxUID is the largest uid a policy may name ((uid_t)-1 is not a uid).
const MaxUID = AnyUID - 1

// Policy is a parsed and validated policy file. It holds no filesystem state; see Resolve.
type Policy struct {
	Source string // file name as given to Load or Parse
	// SHA256 is the digest of the file's bytes as parsed: what an operator's policy token approves.
	SHA256 [32]byte
	Rules  []Rule
	// BPFLoaders may load BPF programs that can read user memory (tracing, kprobe, perf_event, LSM,
	// sleepable, ...), besides keyguard itself: another security agent, say. In the kernel's allow map
	// they are accessors of the pseudo rule BPFLoaderRule.
	BPFLoaders []Accessor
	// SysctlWriters may write kernel.core_pattern, kernel.core_pipe_limit, fs.suid_dumpable and
	// kernel.yama.ptrace_scope while keyguard runs (besides keyguard itself).
	SysctlWriters []Accessor
	// KernelMemoryReaders may open /proc/kcore, /dev/mem, /dev/kmem and /dev/port.
	KernelMemoryReaders []Accessor
	// SideDoors decides the BPF, perf, sysctl and kernel-memory side doors: Enforce (refuse and report,
	// the default) or Audit (report only).
	SideDoors Mode
	// Modules decides kernel module and kexec image loads (default ModulesDeny).
	Modules ModuleMode
	// KeyManagers may open, link, rename, unlink, truncate, chmod/chown and set xattrs on every rule's
	// key files (deployment and rotation tools); opening a key file protects them like a holder.
	KeyManagers []Accessor
	// RawDiskReaders may open the block devices and loop images that hold a key file's filesystem.
	RawDiskReaders []Accessor
	// PackageManagers may write, truncate, rename or unlink the executables rules list.
	PackageManagers []Accessor
	// RoutineReaders are the executables (exact paths) of tools that read /proc files of every process as
	// routine: ps, top, systemctl status, journald, systemd-coredump. Their opens of a protected process's
	// /proc files stay denied, but are reported at low severity (no alert) unless the file hands out
	// memory or open files (mem, pagemap, map_files, fd): see keyguardv1.RoutineRead. The key
	// `routine_readers` replaces DefaultRoutineReaders; an empty list reports every such open as an attack.
	RoutineReaders []string

	pos map[string]Pos // key path → position of its value
}

// Rule selects key-holding processes and says how to protect them.
type Rule struct {
	Name  string
	ID    uint32 // FNV-1a of Name, never 0, unique within the policy; the kernel's rule id
	Mode  Mode
	Dumps DumpMode
	// Severity, when set (policy key "severity"), replaces the severity of this rule's events that are
	// at warning level or above by default (keyguardv1.ApplyRuleSeverity): raise a rule that guards a
	// root CA key to critical, or lower a noisy one to low. Informational events keep theirs.
	Severity keyguardv1.Severity

	Executables []string // absolute paths (exact, no globs)
	Cgroups     []string // absolute cgroup v2 paths ("/system.slice/x.service") or unit names ("x.service")
	KeyFiles    []string // absolute path globs ("*", "?", "[...]" per element, "**" for any depth)

	Allow      []Accessor
	PublicKeys []string // absolute path globs of PEM public keys, certificates or JWKS files

	// Openers may open the rule's key files besides its own processes (matched by executables or
	// cgroups), and become protected by that open. Required for a rule with key_files and no executables
	// or cgroups. AnyOpener (`openers: any`) keeps the old behaviour, any process that opens a key file
	// becomes protected, which posture reports: such a process can still print what it read.
	Openers   []Accessor
	AnyOpener bool

	// Strict (policy `strict: true`) admits to the rule's key files only processes whose executable, one
	// of Executables, matched one of Digests (SHA-256 of the whole file) when the kernel executed it: a
	// replaced signer binary is refused its key (key managers still open them). The kernel hashes at exec
	// with IMA (loader variant DigestIMA); a kernel that cannot admits nobody. Digests come with the
	// policy, so a policy token that approves the policy approves them.
	Strict  bool
	Digests [][32]byte

	index int // position in Policy.Rules, for key paths
}

// Accessor is a process allowed to read a rule's processes: an executable run by a uid.
type Accessor struct {
	Executable string
	UID        uint32 // AnyUID when AnyUID is set
	AnyUID     bool
}

// Key returns the key path of rule r, "rules[3]".
func (r *Rule) Key() string { return fmt.Sprintf("rules[%d]", r.index) }

// Where returns "file:line:col: key" for a key path such as "rules[0].match.executables[1]", or
// "file: key" when its position is unknown. Resolution warnings use it to point at the policy.
func (p *Policy) Where(key string) string {
	if ps, ok := p.pos[key]; ok {
		return fmt.Sprintf("%s:%d:%d: %s", p.Source, ps.Line, ps.Col, key)
	}
	return p.Source + ": " + key
}

// Rule returns the rule with the given ID, or nil.
func (p *Policy) Rule(id uint32) *Rule {
	for i := range p.Rules {
		if p.Rules[i].ID == id {
			return &p.Rules[i]
		}
	}
	return nil
}

func (p *Policy) errAt(key, msg string, err error) *Error {
	ps := p.pos[key]
	return &Error{File: p.Source, Line: ps.Line, Col: ps.Col, Key: key, Msg: msg, Err: err}
}

// RuleID derives the kernel rule id from a rule name: 32-bit FNV-1a, with 0 (reserved for "no rule")
// mapped to 1. Parse reports two names with the same id as an error.
func RuleID(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	if id := h.Sum32(); id != 0 {
		return id
	}
	return 1
}

// DefaultRoutineReaders is RoutineReaders when the policy does not set routine_readers: procps-ng 4
// reads /proc/PID/environ of every process on each ps run, systemd-coredump reads maps, auxv and environ
// of the crashing process, journald reads exe and attr.
var DefaultRoutineReaders = []string{
	"/usr/bin/ps", "/usr/bin/top", "/usr/bin/pgrep", "/usr/bin/pkill", "/usr/bin/pidof", "/usr/bin/systemctl",
	"/usr/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-coredump",
}
