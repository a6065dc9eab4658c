package alert

import (
	"fmt"
	"strings"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Alert is what an output sends: one event, or a group of like events with a count.
type Alert struct {
	// ID is the outbox row id: the same alert resent (at least once) keeps its ID, so receivers can
	// drop duplicates.
	ID       int64  `json:"id"`
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	Host     string `json:"host"`
	Kind     string `json:"kind"`
	Summary  string `json:"summary"`
	// Count is how many attempts the alert stands for: one per event, an in-kernel aggregate's events
	// counting their attempts (MemoryAccess.count).
	Count     int64     `json:"count"`
	FirstTime time.Time `json:"first_time"`
	LastTime  time.Time `json:"last_time"`
	FirstSeq  uint64    `json:"first_seq"`
	LastSeq   uint64    `json:"last_seq"`
	// Event is the group's first event (nil for agent_silent).
	Event *pb.Event `json:"-"`
}

// Title is a one-line headline.
func (a *Alert) Title() string {
	s := fmt.Sprintf("[keyguard %s] %s on %s: %s", strings.ToUpper(a.Severity), a.Kind, a.Host, a.Summary)
	if a.Count > 1 {
		s += fmt.Sprintf(" (%d times, %s – %s)", a.Count, a.FirstTime.UTC().Format(time.RFC3339), a.LastTime.UTC().Format(time.RFC3339))
	}
	return s
}

// facts are the parts of an event that rules match on and alerts group by.
type facts struct {
	kind, policyRule, decision, actor, summary string
}

func kindName(ev *pb.Event) string {
	var name string
	switch ev.GetKind().(type) {
	case *pb.Event_MemoryAccess:
		name = "memory_access"
	case *pb.Event_ProtectionChange:
		name = "protection_change"
	case *pb.Event_CoreDump:
		name = "core_dump"
	case *pb.Event_KeyFileAccess:
		name = "key_file_access"
	case *pb.Event_SideDoor:
		name = "side_door"
	case *pb.Event_BreakGlass:
		name = "break_glass"
	case *pb.Event_AgentHealth:
		name = "agent_health"
	case *pb.Event_LossReport:
		name = "loss_report"
	default:
		name = "unknown"
	}
	return name
}

func exeOf(p *pb.Process) string {
	if p.GetExePath() != "" {
		return p.GetExePath()
	}
	return p.GetComm()
}

func low(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

// factsOf extracts what rules match and alerts group on.
func factsOf(ev *pb.Event) facts {
	f := facts{kind: kindName(ev)}
	switch k := ev.GetKind().(type) {
	case *pb.Event_MemoryAccess:
		m := k.MemoryAccess
		f.policyRule, f.decision, f.actor = m.GetRule(), low(m.GetDecision().String(), "DECISION_"), exeOf(m.GetAccessor())
		what := low(m.GetOperation().String(), "ACCESS_OPERATION_")
		if m.GetProcPath() != "" {
			what += " " + m.GetProcPath()
		}
		f.summary = fmt.Sprintf("%s (uid %d) → %s: %s, %s", f.actor, m.GetAccessor().GetUid(), exeOf(m.GetTarget()), what, f.decision)
	case *pb.Event_KeyFileAccess:
		a := k.KeyFileAccess
		f.policyRule, f.decision, f.actor = a.GetRule(), low(a.GetDecision().String(), "DECISION_"), exeOf(a.GetProcess())
		f.summary = fmt.Sprintf("%s (uid %d) opened key file %s: %s", f.actor, a.GetProcess().GetUid(), a.GetPath(), f.decision)
	case *pb.Event_SideDoor:
		d := k.SideDoor
		f.policyRule, f.decision, f.actor = d.GetRule(), low(d.GetDecision().String(), "DECISION_"), exeOf(d.GetAccessor())
		f.summary = fmt.Sprintf("%s (uid %d): %s %s, %s", f.actor, d.GetAccessor().GetUid(), low(d.GetKind().String(), "SIDE_DOOR_KIND_"), d.GetDetail(), f.decision)
	case *pb.Event_CoreDump:
		c := k.CoreDump
		f.policyRule, f.decision, f.actor = c.GetRule(), low(c.GetAction().String(), "CORE_DUMP_ACTION_"), exeOf(c.GetProcess())
		f.summary = fmt.Sprintf("%s dumped core (signal %d): %s, %s", f.actor, c.GetSignal(), f.decision, c.GetReason())
	case *pb.Event_BreakGlass:
		b := k.BreakGlass
		f.policyRule, f.decision, f.actor = b.GetRule(), low(b.GetState().String(), "BREAK_GLASS_STATE_"), b.GetAccessorExePath()
		f.summary = fmt.Sprintf("break-glass %s by %s for %s: %s", f.decision, b.GetOperator(), f.actor, b.GetReason())
	case *pb.Event_AgentHealth:
		h := k.AgentHealth
		f.decision = low(h.GetState().String(), "AGENT_STATE_")
		f.summary = fmt.Sprintf("agent %s (BPF LSM active: %v, protected processes: %d) %s", f.decision, h.GetLsmActive(), h.GetProtectedProcessCount(), h.GetDetail())
	case *pb.Event_LossReport:
		l := k.LossReport
		f.decision = low(l.GetSource().String(), "LOSS_SOURCE_")
		f.summary = fmt.Sprintf("%d events lost (%s)", l.GetCount(), f.decision)
	case *pb.Event_ProtectionChange:
		p := k.ProtectionChange
		f.policyRule, f.decision, f.actor = p.GetRule(), low(p.GetState().String(), "PROTECTION_STATE_"), exeOf(p.GetProcess())
		f.summary = fmt.Sprintf("%s %s (%s)", f.actor, f.decision, low(p.GetReason().String(), "PROTECTION_REASON_"))
	}
	return f
}

// groupKey names the group an event belongs to under a rule: same host, kind, decision, policy rule and
// actor.
func groupKey(host string, f facts) string {
	return strings.Join([]string{host, f.kind, f.decision, f.policyRule, f.actor}, "\x1f")
}
