package posture

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/agent/internal/corepattern"
)

// sysctl reads /proc/sys/<name with dots as slashes>.
func (c Checker) sysctl(name string) (string, bool) {
	return read(c.proc(append([]string{"sys"}, strings.Split(name, ".")...)...))
}

func (c Checker) ptraceScope() Finding {
	const name = "kernel.yama.ptrace_scope"
	v, ok := c.sysctl(name)
	f := Finding{Name: name, Value: v, Severity: Info}
	switch {
	case !ok:
		f.Severity, f.Remediation = Low, "Yama is not active: any process may ptrace another of the same user (keyguard still denies it for protected processes); add yama to the lsm= boot argument and set kernel.yama.ptrace_scope=2"
	case v == "0":
		f.Severity, f.Remediation = Low, "any process may ptrace another of the same user; keyguard still denies it for protected processes. For everything else: sysctl -w kernel.yama.ptrace_scope=2 (and kernel.yama.ptrace_scope = 2 in /etc/sysctl.d/)"
	case v == "1":
		f.Remediation = "ptrace limited to descendants; kernel.yama.ptrace_scope=2 limits it to CAP_SYS_PTRACE"
	default:
		f.Remediation = "ptrace limited to CAP_SYS_PTRACE (2) or off (3)"
	}
	return f
}

func (c Checker) lockdown() Finding {
	v, ok := read(c.sys("kernel", "security", "lockdown"))
	f := Finding{Name: "lockdown", Value: v, Severity: Info}
	fix := "boot with lockdown=confidentiality (GRUB_CMDLINE_LINUX, update-grub), with Secure Boot"
	guarded := c.KernelMemoryGuarded && c.ModulesGuarded
	switch {
	case (!ok || strings.Contains(v, "[none]")) && guarded:
		f.Severity, f.Remediation = Low, "lockdown is off; keyguard refuses /proc/kcore, /dev/mem and module and kexec loads while it runs, but not debugfs, MSRs or PCI BARs, and nothing once it is uninstalled: "+fix
	case !ok || strings.Contains(v, "[none]"):
		f.Severity, f.Remediation = High, "lockdown is off: root can read all memory through /proc/kcore or /dev/mem, load a module or kexec a kernel (keyguard's policy does not refuse them all: side_doors: enforce and modules: deny do): "+fix
	case strings.Contains(v, "[integrity]") && c.KernelMemoryGuarded:
		f.Severity, f.Remediation = Low, "lockdown=integrity leaves /proc/kcore readable by root; keyguard refuses it while it runs: "+fix
	case strings.Contains(v, "[integrity]"):
		f.Severity, f.Remediation = Medium, "lockdown=integrity still lets root read kernel memory (/proc/kcore), which holds every process's pages: "+fix+", or side_doors: enforce in keyguard's policy"
	default:
		f.Remediation = "confidentiality: kernel memory reads are refused"
	}
	return f
}

func (c Checker) perfParanoid() Finding {
	const name = "kernel.perf_event_paranoid"
	v, ok := c.sysctl(name)
	f := Finding{Name: name, Value: v, Severity: Info}
	n, err := strconv.Atoi(v)
	fix := "sysctl -w kernel.perf_event_paranoid=3 (Debian: no perf for unprivileged users; upstream kernels: 2), persisted in /etc/sysctl.d/"
	switch {
	case !ok || err != nil:
		f.Severity, f.Remediation = Low, "could not read it: "+fix
	case n < 0:
		f.Severity, f.Remediation = Medium, "every user may sample every CPU and read raw tracepoints; keyguard refuses user-stack sampling of protected processes only while it runs: "+fix
	case n < 2:
		f.Severity, f.Remediation = Low, "unprivileged users may profile kernel code: "+fix
	default:
		f.Remediation = "perf limited to user-space profiling of one's own processes (2) or to privileged users (3)"
	}
	return f
}

func (c Checker) unprivilegedBPF() Finding {
	const name = "kernel.unprivileged_bpf_disabled"
	v, ok := c.sysctl(name)
	f := Finding{Name: name, Value: v, Severity: Info}
	switch {
	case !ok:
		f.Severity, f.Remediation = Low, "could not read it: sysctl -w kernel.unprivileged_bpf_disabled=1"
	case v == "0":
		f.Severity, f.Remediation = Medium, "unprivileged users may load BPF programs (speculative side channels into other processes' memory): sysctl -w kernel.unprivileged_bpf_disabled=1 (cannot be undone until reboot; 2 can be)"
	default:
		f.Remediation = "unprivileged BPF is off (1: until reboot, 2: until root turns it back on)"
	}
	return f
}

func (c Checker) suidDumpable() Finding {
	const name = "fs.suid_dumpable"
	v, ok := c.sysctl(name)
	f := Finding{Name: name, Value: v, Severity: Info}
	fix := "sysctl -w fs.suid_dumpable=0 unless a dump helper needs set-uid dumps"
	switch {
	case !ok:
		f.Severity, f.Remediation = Low, "could not read it: "+fix
	case v == "1":
		f.Severity, f.Remediation = Medium, "every process dumps core, set-uid ones and those that dropped privileges included, and the dump is owned by the dumping user: "+fix
	case v == "2":
		f.Severity, f.Remediation = Low, "set-uid processes dump core (root-owned file or pipe helper): "+fix
	default:
		f.Remediation = "processes that changed credentials do not dump core"
	}
	return f
}

// knownHelpers are pipe helpers shipped by distributions; anything else is reported as unknown.
var knownHelpers = map[string]bool{
	"systemd-coredump": true, "apport": true, "abrt-hook-ccpp": true, "keyguard-agent": true,
	"false": true, "true": true,
}

// knownSockets are core-dump sockets of known receivers (systemd-coredump's socket mode).
var knownSockets = map[string]bool{"/run/systemd/coredump": true}

// socketPattern rates a socket core_pattern (`@/path`, `@@/path`, Linux 6.16): the process listening
// there gets every dump; no listener loses them, and whoever binds the path first gets them.
func (c Checker) socketPattern(v string) (Severity, string) {
	p, err := corepattern.Expand(v, corepattern.Values{})
	if err != nil {
		return Medium, "the kernel refuses this pattern, so no dump is written at all (" + err.Error() + "): use systemd-coredump's socket (@/run/systemd/coredump) or a pipe helper"
	}
	var st unix.Stat_t
	err = unix.Stat(p.Path, &st)
	switch {
	case err != nil:
		return Medium, "nothing listens on the core-dump " + p.Kind() + " " + p.Path + ": dumps are lost, and whoever binds that path gets every crashing unprotected process's memory; enable systemd-coredump.socket or set another core_pattern"
	case st.Mode&unix.S_IFMT != unix.S_IFSOCK:
		return Medium, p.Path + " is not a socket, so the kernel writes no dumps: set core_pattern to systemd-coredump's socket or a pipe helper"
	case !knownSockets[p.Path]:
		return Medium, "an unknown " + p.Kind() + " receiver at " + p.Path + " gets the memory of every crashing unprotected process: check who listens there (ss -xlp) and where it writes, or use systemd-coredump"
	}
	return Info, "systemd-coredump's socket gets every dump (" + p.Kind() + " mode); keyguard blocks protected processes' dumps before they start (dumps: block) or kills them (dumps: redact without keyguard's handler)"
}

func (c Checker) corePattern() []Finding {
	v, ok := c.sysctl("kernel.core_pattern")
	f := Finding{Name: "kernel.core_pattern", Value: v, Severity: Info}
	ours := c.HandlerPattern != "" && v == c.HandlerPattern
	switch {
	case !ok:
		f.Severity, f.Remediation = Medium, "could not read it; keyguard cannot tell where dumps go"
	case ours:
		f.Remediation = "keyguard's handler: dumps of redact rules' processes are redacted; other dumps go on to the pattern it replaced"
	case c.HandlerPattern != "":
		f.Severity, f.Remediation = High, "a rule redacts dumps but core_pattern is not keyguard's handler (changed behind its back?): those processes' dumps are killed before the first byte instead of redacted; find who changed kernel.core_pattern and restart keyguard-agent, which installs its handler again"
	case strings.HasPrefix(v, "|"):
		helper := strings.Fields(strings.TrimPrefix(v, "|"))
		path := ""
		if len(helper) > 0 {
			path = helper[0]
		}
		_, err := os.Stat(path)
		switch {
		case knownHelpers[filepath.Base(path)] && err == nil:
			f.Remediation = "a known helper gets every dump; keyguard blocks protected processes' dumps before it starts (dumps: block) or kills them (dumps: redact without keyguard's handler)"
		case err != nil:
			f.Severity, f.Remediation = Medium, "the pipe helper "+path+" does not exist: crashes are not recorded, and whoever can create that file gets every crashing process's memory, as root; install it (apt install systemd-coredump) or sysctl -w kernel.core_pattern='|/bin/false'"
		default:
			f.Severity, f.Remediation = Medium, "an unknown pipe helper ("+path+") runs as root with the memory of every crashing unprotected process: check what it is and where it writes, or use systemd-coredump"
		}
	case strings.HasPrefix(v, "@"):
		f.Severity, f.Remediation = c.socketPattern(v)
	default:
		f.Severity, f.Remediation = Low, "dumps of unprotected processes are written as files where the pattern says (often the process's working folder); keyguard decides protected processes' dumps. Prefer systemd-coredump (root-only storage) or core_pattern=|/bin/false on hosts that hold keys"
	}
	out := []Finding{f}

	lv, lok := c.sysctl("kernel.core_pipe_limit")
	l := Finding{Name: "kernel.core_pipe_limit", Value: lv, Severity: Info,
		Remediation: "how many piped dumps the kernel waits for at once (0: unlimited, and the kernel does not keep the crashing process for the helper)"}
	if ours {
		n, err := strconv.Atoi(lv)
		switch {
		case !lok || err != nil:
			l.Severity, l.Remediation = Medium, "could not read it; keyguard's handler needs the crashing process kept until it is done: sysctl -w kernel.core_pipe_limit=16"
		case n == 0:
			l.Severity, l.Remediation = Medium, "0: the kernel does not keep the crashing process for keyguard's handler, so it cannot check which rule it belongs to: sysctl -w kernel.core_pipe_limit=16 (the agent sets it at start)"
		case n < 16:
			l.Severity, l.Remediation = Low, "fewer concurrent dumps are kept than keyguard sets (16): more simultaneous crashes are not dumped; sysctl -w kernel.core_pipe_limit=16"
		}
	}
	return append(out, l)
}

func (c Checker) kexecLoad() Finding {
	const name = "kernel.kexec_load_disabled"
	v, ok := c.sysctl(name)
	f := Finding{Name: name, Value: v, Severity: Info}
	locked := c.lockedDown() || c.ModulesGuarded
	switch {
	case !ok && strings.Contains(v, "no such file"):
		f.Remediation = "the kernel has no kexec_load: nothing to disable"
	case v != "1" && locked:
		f.Severity, f.Remediation = Low, "root may load only signed kernels (lockdown), or keyguard refuses kexec loads while it runs (modules: deny): sysctl -w kernel.kexec_load_disabled=1 after kdump is loaded (one way until reboot)"
	case v != "1":
		f.Severity, f.Remediation = Medium, "root may kexec a kernel of its choice and read all memory from it: sysctl -w kernel.kexec_load_disabled=1 after kdump is loaded (one way until reboot), or lockdown"
	default:
		f.Remediation = "kexec loading is off until reboot"
	}
	return f
}

func (c Checker) modulesDisabled() Finding {
	const name = "kernel.modules_disabled"
	v, ok := c.sysctl(name)
	f := Finding{Name: name, Value: v, Severity: Info}
	locked := c.lockedDown() || c.ModulesGuarded
	switch {
	case !ok && strings.Contains(v, "no such file"):
		f.Remediation = "the kernel cannot load modules"
	case v != "1" && locked:
		f.Severity, f.Remediation = Low, "root may load signed modules only (lockdown), or keyguard refuses module loads while it runs (modules: deny): sysctl -w kernel.modules_disabled=1 once boot has loaded what it needs (one way until reboot)"
	case v != "1":
		f.Severity, f.Remediation = Medium, "root may load a kernel module that reads any memory, below keyguard: sysctl -w kernel.modules_disabled=1 once boot has loaded what it needs (one way until reboot), or lockdown with module signatures"
	default:
		f.Remediation = "module loading is off until reboot"
	}
	return f
}

// lockedDown: lockdown is integrity or confidentiality.
func (c Checker) lockedDown() bool {
	v, ok := read(c.sys("kernel", "security", "lockdown"))
	return ok && !strings.Contains(v, "[none]")
}

// execDigest says how keyguard trusts executables by content on this kernel: the SHA-256 IMA computes at
// exec (bpf_ima_file_hash) for keyguard's own executable and strict rules' executables, or nothing
// (trust by inode only, and strict rules admit no process).
func (c Checker) execDigest() Finding {
	f := Finding{Name: "executable_digest", Value: c.ExecDigest, Severity: Info}
	fsv := "; bpf_get_fsverity_digest is not in this kernel"
	if c.FSVerityKfunc {
		fsv = "; bpf_get_fsverity_digest is available but unused (it answers only for files with fs-verity enabled)"
	}
	strict := strings.Join(c.StrictRules, ", ")
	algo, setAlgo := c.cmdlineParam("ima_hash")
	switch {
	case c.ExecDigest != "bpf_ima_file_hash" && strict != "":
		f.Severity, f.Remediation = High, "this kernel cannot hash executables at exec (no IMA or no bpf_ima_file_hash), so the strict rules ("+strict+") admit no process to their key files; use a kernel with CONFIG_IMA=y (Debian's are) or drop strict"
	case c.ExecDigest != "bpf_ima_file_hash":
		f.Severity, f.Remediation = Low, "this kernel cannot hash executables at exec (no IMA or no bpf_ima_file_hash): keyguard trusts its own executable by inode only; use a kernel with CONFIG_IMA=y (Debian's are)"
	case setAlgo && algo != "sha256" && strict != "":
		f.Severity, f.Remediation = High, "ima_hash="+algo+" on the kernel command line: IMA hashes executables with "+algo+", keyguard's digests are SHA-256, so the strict rules ("+strict+") admit no process and keyguard trusts its executable by inode only; remove ima_hash= (or set ima_hash=sha256)"
	case setAlgo && algo != "sha256":
		f.Severity, f.Remediation = Low, "ima_hash="+algo+" on the kernel command line: keyguard's digests are SHA-256, so it trusts its own executable by inode only; remove ima_hash= (or set ima_hash=sha256)"
	default:
		f.Value = "bpf_ima_file_hash (SHA-256 by IMA at exec)"
		f.Remediation = "keyguard's own executable and strict rules' executables are trusted by content: the kernel hashes them when they are executed" + fsv
	}
	return f
}
