package keyguardv1

import "testing"

func TestDefaultSeverity(t *testing.T) {
	mem := func(d Decision, op AccessOperation, path string) *Event {
		return &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Decision: d, Operation: op, ProcPath: path}}}
	}
	tests := []struct {
		name string
		ev   *Event
		want Severity
	}{
		{"denied ptrace", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, ""), Severity_SEVERITY_HIGH},
		{"denied /proc mem", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PROC_OPEN, "/proc/12/mem"), Severity_SEVERITY_HIGH},
		{"denied task environ", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PROC_OPEN, "/proc/12/task/13/environ"), Severity_SEVERITY_HIGH},
		{"denied map_files", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PROC_OPEN, "/proc/12/map_files/7f-80"), Severity_SEVERITY_HIGH},
		{"denied exe link (journald)", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PROC_OPEN, "/proc/12/exe"), Severity_SEVERITY_LOW},
		{"denied attr/current", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PROC_OPEN, "/proc/12/attr/current"), Severity_SEVERITY_LOW},
		{"unknown proc file counts as memory", mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PROC_OPEN, "/proc/12/newthing"), Severity_SEVERITY_HIGH},
		{"metadata class allowed (kernel)", &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Decision: Decision_DECISION_ALLOWED_POLICY,
			Operation: AccessOperation_ACCESS_OPERATION_PROC_OPEN, ProcPath: "/proc/12/exe", AccessClass: AccessClass_ACCESS_CLASS_METADATA}}}, Severity_SEVERITY_INFO},
		{"metadata class denied by policy", &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Decision: Decision_DECISION_DENIED,
			Operation: AccessOperation_ACCESS_OPERATION_OTHER, AccessClass: AccessClass_ACCESS_CLASS_METADATA}}}, Severity_SEVERITY_LOW},
		{"memory class wins over a metadata-looking path", &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Decision: Decision_DECISION_DENIED,
			Operation: AccessOperation_ACCESS_OPERATION_PROC_OPEN, ProcPath: "/proc/12/exe", AccessClass: AccessClass_ACCESS_CLASS_MEMORY}}}, Severity_SEVERITY_HIGH},
		{"audit-allowed read", mem(Decision_DECISION_ALLOWED_AUDIT, AccessOperation_ACCESS_OPERATION_PROCESS_VM_READV, ""), Severity_SEVERITY_CRITICAL},
		{"policy-allowed", mem(Decision_DECISION_ALLOWED_POLICY, AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, ""), Severity_SEVERITY_INFO},
		{"break-glass", mem(Decision_DECISION_ALLOWED_BREAK_GLASS, AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, ""), Severity_SEVERITY_MEDIUM},
		{"core dump unchanged", &Event{Kind: &Event_CoreDump{CoreDump: &CoreDump{Action: CoreDumpAction_CORE_DUMP_ACTION_ALLOWED}}}, Severity_SEVERITY_HIGH},
		{"core dump redacted", &Event{Kind: &Event_CoreDump{CoreDump: &CoreDump{Action: CoreDumpAction_CORE_DUMP_ACTION_REDACTED}}}, Severity_SEVERITY_MEDIUM},
		{"agent refused", &Event{Kind: &Event_AgentHealth{AgentHealth: &AgentHealth{State: AgentState_AGENT_STATE_REFUSED, LsmActive: true}}}, Severity_SEVERITY_CRITICAL},
		{"agent without LSM", &Event{Kind: &Event_AgentHealth{AgentHealth: &AgentHealth{State: AgentState_AGENT_STATE_RUNNING}}}, Severity_SEVERITY_CRITICAL},
		{"heartbeat", &Event{Kind: &Event_AgentHealth{AgentHealth: &AgentHealth{State: AgentState_AGENT_STATE_RUNNING, LsmActive: true}}}, Severity_SEVERITY_INFO},
		{"heartbeat with critical finding capped", &Event{Kind: &Event_AgentHealth{AgentHealth: &AgentHealth{State: AgentState_AGENT_STATE_RUNNING, LsmActive: true,
			Findings: []*PostureFinding{{Severity: Severity_SEVERITY_CRITICAL}}}}}, Severity_SEVERITY_HIGH},
		{"spool eviction", &Event{Kind: &Event_LossReport{LossReport: &LossReport{Source: LossSource_LOSS_SOURCE_SPOOL_EVICTION}}}, Severity_SEVERITY_HIGH},
		{"ring loss", &Event{Kind: &Event_LossReport{LossReport: &LossReport{Source: LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER}}}, Severity_SEVERITY_MEDIUM},
		{"protection change", &Event{Kind: &Event_ProtectionChange{ProtectionChange: &ProtectionChange{}}}, Severity_SEVERITY_INFO},
		{"side door allowed", &Event{Kind: &Event_SideDoor{SideDoor: &SideDoor{Decision: Decision_DECISION_ALLOWED}}}, Severity_SEVERITY_MEDIUM},
		{"empty", &Event{}, Severity_SEVERITY_UNSPECIFIED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DefaultSeverity(tt.ev); got != tt.want {
				t.Errorf("DefaultSeverity = %v, want %v", got, tt.want)
			}
		})
	}
	// A rule's own severity wins (lower a noisy rule, raise a sensitive one).
	ev := mem(Decision_DECISION_DENIED, AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, "")
	ev.Severity = Severity_SEVERITY_LOW
	if got := SeverityOf(ev); got != Severity_SEVERITY_LOW {
		t.Errorf("SeverityOf with stamped LOW = %v", got)
	}
}

func TestParseSeverity(t *testing.T) {
	for _, s := range []Severity{Severity_SEVERITY_INFO, Severity_SEVERITY_LOW, Severity_SEVERITY_MEDIUM, Severity_SEVERITY_HIGH, Severity_SEVERITY_CRITICAL} {
		if got, ok := ParseSeverity(SeverityLabel(s)); !ok || got != s {
			t.Errorf("ParseSeverity(%q) = %v, %v", SeverityLabel(s), got, ok)
		}
	}
	for _, bad := range []string{"", "unspecified", "severe"} {
		if _, ok := ParseSeverity(bad); ok {
			t.Errorf("ParseSeverity(%q) accepted", bad)
		}
	}
}

func TestApplyRuleSeverity(t *testing.T) {
	denied := func() *Event {
		return &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Rule: "ca", Decision: Decision_DECISION_DENIED,
			Operation: AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH}}}
	}
	allowed := &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Rule: "ca", Decision: Decision_DECISION_ALLOWED_POLICY}}}
	tests := []struct {
		name string
		ev   *Event
		rule Severity
		want Severity
	}{
		{"no rule severity: default", denied(), Severity_SEVERITY_UNSPECIFIED, Severity_SEVERITY_HIGH},
		{"raised", denied(), Severity_SEVERITY_CRITICAL, Severity_SEVERITY_CRITICAL},
		{"lowered", denied(), Severity_SEVERITY_LOW, Severity_SEVERITY_LOW},
		{"info stays info", allowed, Severity_SEVERITY_CRITICAL, Severity_SEVERITY_INFO},
	}
	for _, tt := range tests {
		ApplyRuleSeverity(tt.ev, tt.rule)
		if tt.ev.GetSeverity() != tt.want {
			t.Errorf("%s: severity %v, want %v", tt.name, tt.ev.GetSeverity(), tt.want)
		}
		if RuleOf(tt.ev) != "ca" {
			t.Errorf("%s: RuleOf = %q", tt.name, RuleOf(tt.ev))
		}
	}
}

// A routine reader's denied /proc open of anything but mem, pagemap, map_files and fd is LOW; everything
// else keeps the default mapping.
func TestRoutineRead(t *testing.T) {
	readers := map[string]bool{"/usr/bin/ps": true}
	ev := func(exe string, op AccessOperation, d Decision, path string) *Event {
		return &Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Operation: op, Decision: d, ProcPath: path,
			AccessClass: AccessClass_ACCESS_CLASS_MEMORY, Accessor: &Process{ExePath: exe}}}}
	}
	open, denied := AccessOperation_ACCESS_OPERATION_PROC_OPEN, Decision_DECISION_DENIED
	for _, tc := range []struct {
		name string
		ev   *Event
		want Severity
	}{
		{"ps environ", ev("/usr/bin/ps", open, denied, "/proc/42/environ"), Severity_SEVERITY_LOW},
		{"ps task environ", ev("/usr/bin/ps", open, denied, "/proc/42/task/43/environ"), Severity_SEVERITY_LOW},
		{"ps unknown path", ev("/usr/bin/ps", open, denied, ""), Severity_SEVERITY_LOW},
		{"ps mem", ev("/usr/bin/ps", open, denied, "/proc/42/mem"), Severity_SEVERITY_HIGH},
		{"ps task mem", ev("/usr/bin/ps", open, denied, "/proc/42/task/43/mem"), Severity_SEVERITY_HIGH},
		{"ps pagemap", ev("/usr/bin/ps", open, denied, "/proc/42/pagemap"), Severity_SEVERITY_HIGH},
		{"ps map_files", ev("/usr/bin/ps", open, denied, "/proc/42/map_files/7f00-7f01"), Severity_SEVERITY_HIGH},
		{"ps fd", ev("/usr/bin/ps", open, denied, "/proc/42/fd/3"), Severity_SEVERITY_HIGH},
		{"ps ptrace", ev("/usr/bin/ps", AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, denied, ""), Severity_SEVERITY_HIGH},
		{"ps audit open", ev("/usr/bin/ps", open, Decision_DECISION_ALLOWED_AUDIT, "/proc/42/environ"), Severity_SEVERITY_CRITICAL},
		{"cat environ", ev("/usr/bin/cat", open, denied, "/proc/42/environ"), Severity_SEVERITY_HIGH},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ApplyRoutineRead(tc.ev, readers)
			if got := SeverityOf(tc.ev); got != tc.want {
				t.Errorf("severity %v, want %v", got, tc.want)
			}
		})
	}
}
