package keyguardv1

import "strings"

// Severity of events (hand-written; shared by the agent, which stamps Event.severity, and the collector,
// which indexes, filters, counts and alerts on it).
//
// The mapping answers one question: does this event need a person? Warning level is SEVERITY_MEDIUM and
// above; alerts default to SEVERITY_HIGH and above.
//
//	memory access / key-file access / side door, by decision:
//	  denied               HIGH      an attack was stopped (someone with root tried)
//	  allowed (audit)      CRITICAL  the access would have been refused and went through: key exposed
//	  allowed (break-glass) MEDIUM   an operator let it through on purpose; worth a look
//	  allowed (policy/none) INFO     an allowed reader
//	  For an access of metadata only (MemoryAccess.access_class METADATA, which the kernel allows and
//	  reports at INFO; for older agents without a class, a /proc open with ProcFileExposesMemory false)
//	  the denied and audit levels drop to LOW: journald, systemd-coredump, ps and top read these of every
//	  process, and they expose no memory. Class MEMORY, and unknown /proc files, count as memory.
//	  A denied /proc open by one of the policy's routine_readers (ps reads environ of every process,
//	  systemd-coredump maps, auxv and environ) is LOW, except of mem, pagemap, map_files and fd: the
//	  agent stamps it (RoutineRead).
//	  Side doors that are allowed without a rule (SIDE_DOOR_KIND_*, DECISION_ALLOWED) are MEDIUM: the
//	  host let something through that can reach memory around the hooks.
//	core dump: written unchanged HIGH (the dump holds the process's memory); blocked, redacted or
//	  discarded MEDIUM.
//	protection change: INFO.
//	break-glass: granted MEDIUM, expired or revoked INFO.
//	agent health: refused, uninstalled or BPF LSM inactive CRITICAL (nothing is enforced); a protection
//	  gap after reboot HIGH; stopping MEDIUM; otherwise the highest posture finding, capped at HIGH;
//	  else INFO.
//	loss report: spool eviction HIGH (events are gone for good); others MEDIUM.
//
// A policy rule may set its own severity for the events of that rule (raise or lower); the agent then
// stamps Event.severity and SeverityOf returns it.

// SeverityOf returns the event's severity: Event.severity when set, else DefaultSeverity.
func SeverityOf(ev *Event) Severity {
	if s := ev.GetSeverity(); s != Severity_SEVERITY_UNSPECIFIED {
		return s
	}
	return DefaultSeverity(ev)
}

// DefaultSeverity returns the documented mapping for an event (see the package comment above).
func DefaultSeverity(ev *Event) Severity {
	switch k := ev.GetKind().(type) {
	case *Event_MemoryAccess:
		m := k.MemoryAccess
		return decisionSeverity(m.GetDecision(), MetadataOnly(m))
	case *Event_KeyFileAccess:
		return decisionSeverity(k.KeyFileAccess.GetDecision(), false)
	case *Event_SideDoor:
		if k.SideDoor.GetDecision() == Decision_DECISION_ALLOWED {
			return Severity_SEVERITY_MEDIUM
		}
		return decisionSeverity(k.SideDoor.GetDecision(), false)
	case *Event_CoreDump:
		if k.CoreDump.GetAction() == CoreDumpAction_CORE_DUMP_ACTION_ALLOWED {
			return Severity_SEVERITY_HIGH
		}
		return Severity_SEVERITY_MEDIUM
	case *Event_BreakGlass:
		if k.BreakGlass.GetState() == BreakGlassState_BREAK_GLASS_STATE_GRANTED {
			return Severity_SEVERITY_MEDIUM
		}
		return Severity_SEVERITY_INFO
	case *Event_AgentHealth:
		return healthSeverity(k.AgentHealth)
	case *Event_LossReport:
		if k.LossReport.GetSource() == LossSource_LOSS_SOURCE_SPOOL_EVICTION {
			return Severity_SEVERITY_HIGH
		}
		return Severity_SEVERITY_MEDIUM
	case *Event_ProtectionChange:
		return Severity_SEVERITY_INFO
	}
	return Severity_SEVERITY_UNSPECIFIED
}

// MetadataOnly reports whether a memory access exposed metadata only: the class the kernel gave it, or
// for events of older agents (no class) the /proc path opened.
func MetadataOnly(m *MemoryAccess) bool {
	switch m.GetAccessClass() {
	case AccessClass_ACCESS_CLASS_METADATA:
		return true
	case AccessClass_ACCESS_CLASS_MEMORY:
		return false
	}
	return m.GetOperation() == AccessOperation_ACCESS_OPERATION_PROC_OPEN && !ProcFileExposesMemory(m.GetProcPath())
}

func decisionSeverity(d Decision, metadataOnly bool) Severity {
	switch d {
	case Decision_DECISION_DENIED:
		if metadataOnly {
			return Severity_SEVERITY_LOW
		}
		return Severity_SEVERITY_HIGH
	case Decision_DECISION_ALLOWED_AUDIT:
		if metadataOnly {
			return Severity_SEVERITY_LOW
		}
		return Severity_SEVERITY_CRITICAL
	case Decision_DECISION_ALLOWED_BREAK_GLASS:
		return Severity_SEVERITY_MEDIUM
	case Decision_DECISION_ALLOWED_POLICY, Decision_DECISION_ALLOWED:
		return Severity_SEVERITY_INFO
	}
	return Severity_SEVERITY_MEDIUM // no decision recorded: not proof of anything, but not nothing
}

func healthSeverity(h *AgentHealth) Severity {
	switch h.GetState() {
	case AgentState_AGENT_STATE_REFUSED, AgentState_AGENT_STATE_UNINSTALLED:
		return Severity_SEVERITY_CRITICAL
	case AgentState_AGENT_STATE_UNSPECIFIED:
	default:
		if !h.GetLsmActive() {
			return Severity_SEVERITY_CRITICAL
		}
	}
	if h.GetGap() != nil {
		return Severity_SEVERITY_HIGH
	}
	if h.GetState() == AgentState_AGENT_STATE_STOPPING {
		return Severity_SEVERITY_MEDIUM
	}
	s := Severity_SEVERITY_INFO
	for _, f := range h.GetFindings() {
		s = max(s, min(f.GetSeverity(), Severity_SEVERITY_HIGH))
	}
	return s
}

// metadataProcFiles are /proc/PID entries that expose no memory, registers, environment or open files of
// the process: reading them tells who and where a process is, not what it holds.
var metadataProcFiles = map[string]bool{
	"exe": true, "cwd": true, "root": true, "attr": true, "stat": true, "status": true, "statm": true,
	"cmdline": true, "comm": true, "cgroup": true, "loginuid": true, "sessionid": true, "oom_score": true,
	"oom_score_adj": true, "limits": true, "ns": true, "mountinfo": true, "mounts": true, "io": true,
	"wchan": true, "sched": true, "schedstat": true, "personality": true, "timerslack_ns": true,
	"coredump_filter": true, "uid_map": true, "gid_map": true, "setgroups": true, "mountstats": true,
}

// ProcFileExposesMemory reports whether opening a /proc/PID (or /proc/PID/task/TID) path can expose the
// process's memory or secrets (mem, environ, maps, smaps, pagemap, map_files, fd, fdinfo, auxv, syscall,
// stack, ...) rather than metadata (exe, cwd, root, attr, stat, status, ...). Unknown entries count as
// exposing memory, so a new kernel file is reported loudly until classified.
func ProcFileExposesMemory(path string) bool {
	entry, ok := procEntry(path)
	if !ok {
		return true
	}
	return entry != "" && !metadataProcFiles[entry]
}

// procEntry is the entry of a /proc/PID or /proc/PID/task/TID path that names what is read ("mem",
// "environ", "attr", ...; "" for the directory itself); ok is false for a path outside /proc.
func procEntry(path string) (entry string, ok bool) {
	rest, ok := strings.CutPrefix(path, "/proc/")
	if !ok {
		return "", false
	}
	parts := strings.Split(rest, "/")[1:] // parts[0] is the pid (or "self", "thread-self")
	if len(parts) >= 2 && parts[0] == "task" {
		parts = parts[2:]
	}
	if len(parts) == 0 {
		return "", true
	}
	return parts[0], true
}

// RoutineRead reports whether m is a denied /proc open by one of readers (executable paths, the policy's
// routine_readers) of a file other than those that hand out memory or open files (mem, pagemap,
// map_files, fd). Such opens come from ps, top, journald or systemd-coredump reading every process; they
// stay denied and are reported at LOW. Memory reads by any other means (ptrace, process_vm_readv,
// pidfd_getfd) and audit-mode opens that went through are never routine.
func RoutineRead(m *MemoryAccess, readers map[string]bool) bool {
	if m.GetDecision() != Decision_DECISION_DENIED || m.GetOperation() != AccessOperation_ACCESS_OPERATION_PROC_OPEN ||
		!readers[m.GetAccessor().GetExePath()] {
		return false
	}
	entry, _ := procEntry(m.GetProcPath())
	switch entry {
	case "mem", "pagemap", "map_files", "fd":
		return false
	}
	return true
}

// ApplyRoutineRead stamps LOW on a routine read (RoutineRead) that carries no severity yet.
func ApplyRoutineRead(ev *Event, readers map[string]bool) {
	if m := ev.GetMemoryAccess(); m != nil && ev.GetSeverity() == Severity_SEVERITY_UNSPECIFIED && RoutineRead(m, readers) {
		ev.Severity = Severity_SEVERITY_LOW
	}
}

// SeverityLabel is the short lower-case name of a severity ("info" ... "critical"; "" when unspecified),
// as used in metrics labels, the console and the CLI.
func SeverityLabel(s Severity) string {
	if s == Severity_SEVERITY_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "SEVERITY_"))
}

// ParseSeverity parses a SeverityLabel (or the full enum name); ok is false for anything else.
func ParseSeverity(s string) (Severity, bool) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if s == "" {
		return Severity_SEVERITY_UNSPECIFIED, false
	}
	if !strings.HasPrefix(s, "SEVERITY_") {
		s = "SEVERITY_" + s
	}
	v, ok := Severity_value[s]
	if !ok || v == 0 {
		return Severity_SEVERITY_UNSPECIFIED, false
	}
	return Severity(v), true
}

// RuleOf returns the name of the policy rule an event concerns ("" when none).
func RuleOf(ev *Event) string {
	switch k := ev.GetKind().(type) {
	case *Event_MemoryAccess:
		return k.MemoryAccess.GetRule()
	case *Event_KeyFileAccess:
		return k.KeyFileAccess.GetRule()
	case *Event_SideDoor:
		return k.SideDoor.GetRule()
	case *Event_CoreDump:
		return k.CoreDump.GetRule()
	case *Event_ProtectionChange:
		return k.ProtectionChange.GetRule()
	case *Event_BreakGlass:
		return k.BreakGlass.GetRule()
	}
	return ""
}

// ApplyRuleSeverity stamps Event.severity: DefaultSeverity, replaced by the rule's own severity (when
// not unspecified) for events at warning level (SEVERITY_MEDIUM) or above by default. The agent calls
// it on every event before recording it.
func ApplyRuleSeverity(ev *Event, rule Severity) {
	if ev.GetSeverity() != Severity_SEVERITY_UNSPECIFIED {
		return
	}
	s := DefaultSeverity(ev)
	if rule != Severity_SEVERITY_UNSPECIFIED && s >= Severity_SEVERITY_MEDIUM {
		s = rule
	}
	ev.Severity = s
}
