package posture

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/procfs"
	"golang.org/x/sys/unix"
)

// coredump_filter bits (man 5 core).
var filterBits = []struct {
	bit    uint64
	name   string
	memory bool // process memory that can hold keys
}{
	{1 << 0, "anon-private", true},
	{1 << 1, "anon-shared", true},
	{1 << 2, "file-private", false},
	{1 << 3, "file-shared", false},
	{1 << 4, "elf-headers", false},
	{1 << 5, "hugetlb-private", true},
	{1 << 6, "hugetlb-shared", true},
	{1 << 7, "dax-private", true},
	{1 << 8, "dax-shared", true},
}

// Process checks one protected process: its core-dump limit and filter, whether the kernel considers
// it dumpable, and whether something traces it. A process that is gone yields no findings.
func (c Checker) Process(t Target) []Finding {
	status, ok := read(c.proc(strconv.Itoa(t.PID), "status"))
	if !ok {
		return nil
	}
	st := procfs.ParseStatus([]byte(status))
	who := fmt.Sprintf("pid %d (%s, rule %s, dumps: %s)", t.PID, st.Name, t.Rule, orDefault(t.Dumps, "block"))
	prefix := fmt.Sprintf("process.%d.", t.PID)
	pattern, _ := c.sysctl("kernel.core_pattern")
	pipe := strings.HasPrefix(pattern, "|")
	allow := t.Dumps == "allow"
	var out []Finding

	// RLIMIT_CORE. A file pattern needs at least a page; a pipe ignores the limit, except 1, which the
	// kernel takes as "do not dump".
	f := Finding{Name: prefix + "rlimit_core", Severity: Info}
	soft, hard, lok := c.coreLimit(t.PID)
	f.Value = "soft " + soft + ", hard " + hard
	softN, numErr := strconv.ParseUint(soft, 10, 64)
	stops := numErr == nil && (softN == 1 || (!pipe && softN < 4096))
	fix := fmt.Sprintf("prlimit --pid %d --core=1:1 (systemd: LimitCORE=1; 1 stops the kernel's dump with any core_pattern, 0 only stops file dumps)", t.PID)
	switch {
	case !lok:
		f.Value, f.Severity, f.Remediation = soft, Low, "could not read the limit: "+fix
	case stops:
		f.Remediation = who + ": the kernel does not dump this process"
	case allow:
		f.Severity, f.Remediation = High, who+": the rule allows dumps and the limit lets the kernel write them, memory and keys included: "+fix
	case pipe && softN == 0:
		f.Severity, f.Remediation = Low, who+": with a pipe core_pattern a limit of 0 does not stop the dump (keyguard blocks or redacts it): "+fix
	default:
		f.Severity, f.Remediation = Low, who+": the kernel would dump it (keyguard blocks or redacts it): "+fix
	}
	out = append(out, f)

	// coredump_filter.
	f = Finding{Name: prefix + "coredump_filter", Severity: Info}
	raw, fok := read(c.proc(strconv.Itoa(t.PID), "coredump_filter"))
	bits, perr := strconv.ParseUint(raw, 16, 64)
	fix = fmt.Sprintf("echo 0x10 > /proc/%d/coredump_filter (ELF headers only; set it in the launcher before exec so children inherit it, or coredump_filter=0x10 on the kernel command line)", t.PID)
	switch {
	case !fok || perr != nil:
		f.Value, f.Severity, f.Remediation = raw, Low, "could not read the filter: "+fix
	default:
		var names []string
		mem := false
		for _, b := range filterBits {
			if bits&b.bit != 0 {
				names = append(names, b.name)
				mem = mem || b.memory
			}
		}
		f.Value = fmt.Sprintf("0x%x", bits)
		if len(names) > 0 {
			f.Value += " (" + strings.Join(names, " ") + ")"
		}
		switch {
		case !mem:
			f.Remediation = who + ": dumps leave out anonymous and huge-page memory"
		case allow:
			f.Severity, f.Remediation = High, who+": the rule allows dumps and they include anonymous memory, where keys live: "+fix
		default:
			f.Severity, f.Remediation = Low, who+": dumps would include anonymous memory (keyguard blocks or redacts them): "+fix
		}
	}
	out = append(out, f)

	out = append(out, c.dumpable(t.PID, st, who, prefix))

	// Tracer.
	f = Finding{Name: prefix + "tracer", Value: strconv.Itoa(st.TracerPID), Severity: Info, Remediation: who + ": not traced"}
	if st.TracerPID != 0 {
		comm, _ := read(c.proc(strconv.Itoa(st.TracerPID), "comm"))
		f.Value = fmt.Sprintf("%d (%s)", st.TracerPID, comm)
		f.Severity, f.Remediation = Critical, fmt.Sprintf("%s is traced by pid %d (%s), which attached before keyguard protected it and can read its memory; keyguard cannot detach a tracer: kill %d, then restart the process", who, st.TracerPID, comm, st.TracerPID)
	}
	return append(out, f)
}

// dumpable infers the kernel's dumpable flag (only the process itself can ask prctl): procfs gives a
// process's files, such as /proc/PID/status, to its euid:egid when it is dumpable (SUID_DUMP_USER) and
// to root:root when it is not (prctl(PR_SET_DUMPABLE, 0), set-uid exec, credential change with
// fs.suid_dumpable 0 or 2), updated at every lookup (task_dump_owner). The /proc/PID folder itself
// always keeps the euid (for ps), so it cannot tell. A root process looks the same either way.
func (c Checker) dumpable(pid int, st procfs.Status, who, prefix string) Finding {
	f := Finding{Name: prefix + "dumpable", Severity: Info}
	var s unix.Stat_t
	if err := unix.Stat(c.proc(strconv.Itoa(pid), "status"), &s); err != nil {
		f.Value, f.Remediation = "unknown", who+": "+err.Error()
		return f
	}
	fix := "call prctl(PR_SET_DUMPABLE, 0) in the process after start (the kernel then refuses its own ptrace and dump paths too, under keyguard's)"
	switch {
	case st.EUID == 0 && st.EGID == 0:
		f.Value, f.Remediation = "unknown (euid 0)", who+": runs as root, so procfs ownership cannot tell; "+fix
	case s.Uid == st.EUID && s.Gid == st.EGID:
		f.Value, f.Severity, f.Remediation = "1", Low, who+": the kernel treats it as dumpable (its user may ptrace it and it dumps core; keyguard still denies and blocks): "+fix
	case s.Uid == 0 && s.Gid == 0:
		f.Value, f.Remediation = "0", who+": not dumpable"
	default:
		f.Value, f.Remediation = fmt.Sprintf("unknown (/proc/%d/status owned by %d:%d, euid:egid %d:%d)", pid, s.Uid, s.Gid, st.EUID, st.EGID), who
	}
	return f
}

// coreLimit reads "Max core file size" from /proc/PID/limits.
func (c Checker) coreLimit(pid int) (soft, hard string, ok bool) {
	s, rok := read(c.proc(strconv.Itoa(pid), "limits"))
	if !rok {
		return s, "", false
	}
	for _, line := range strings.Split(s, "\n") {
		if rest, found := strings.CutPrefix(line, "Max core file size"); found {
			fs := strings.Fields(rest)
			if len(fs) >= 2 {
				return fs[0], fs[1], true
			}
		}
	}
	return "unavailable (no core limit line)", "", false
}
