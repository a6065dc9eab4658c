package export

import (
	"github.com/keyguard/keyguard/agent/internal/spool"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// PriorityOf is the default spool priority of an event: what survives when the spool is full.
// Denials, core dumps, break-glass and loss reports are never evicted; audit-mode would-be
// denials, protection changes, side doors and agent state changes come next; accesses allowed by
// policy are ordinary; plain allowed accesses and heartbeats go first.
func PriorityOf(ev *keyguardv1.Event) spool.Priority {
	switch k := ev.GetKind().(type) {
	case *keyguardv1.Event_MemoryAccess:
		return decisionPriority(k.MemoryAccess.GetDecision())
	case *keyguardv1.Event_KeyFileAccess:
		return decisionPriority(k.KeyFileAccess.GetDecision())
	case *keyguardv1.Event_SideDoor:
		if k.SideDoor.GetDecision() == keyguardv1.Decision_DECISION_DENIED {
			return spool.PriorityKeep
		}
		return spool.PriorityHigh
	case *keyguardv1.Event_CoreDump, *keyguardv1.Event_BreakGlass, *keyguardv1.Event_LossReport:
		return spool.PriorityKeep
	case *keyguardv1.Event_ProtectionChange:
		return spool.PriorityHigh
	case *keyguardv1.Event_AgentHealth:
		if k.AgentHealth.GetState() == keyguardv1.AgentState_AGENT_STATE_RUNNING {
			return spool.PriorityLow
		}
		return spool.PriorityHigh
	}
	return spool.PriorityNormal
}

func decisionPriority(d keyguardv1.Decision) spool.Priority {
	switch d {
	case keyguardv1.Decision_DECISION_DENIED:
		return spool.PriorityKeep
	case keyguardv1.Decision_DECISION_ALLOWED_AUDIT, keyguardv1.Decision_DECISION_ALLOWED_BREAK_GLASS:
		return spool.PriorityHigh
	case keyguardv1.Decision_DECISION_ALLOWED_POLICY:
		return spool.PriorityNormal
	}
	return spool.PriorityLow
}
