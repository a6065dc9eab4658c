package store

import (
	"strings"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// clean makes a string storable in every backend's text columns: PostgreSQL text cannot hold NUL, so NUL
// bytes become U+FFFD in indexed columns (the payload keeps the original bytes).
func clean(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// index holds the columns queries filter on, derived from the payload (verify re-derives and compares them).
type index struct {
	kind      pb.EventKind
	decision  pb.Decision
	rule      string
	proc      *pb.Process // accessor or subject process
	target    *pb.Process
	timeNanos int64
}

func indexOf(ev *pb.Event) index {
	ix := index{kind: pb.KindOf(ev)}
	if t := ev.GetTime(); t != nil {
		ix.timeNanos = t.AsTime().UnixNano()
	}
	switch k := ev.GetKind().(type) {
	case *pb.Event_MemoryAccess:
		ix.decision, ix.rule = k.MemoryAccess.GetDecision(), k.MemoryAccess.GetRule()
		ix.proc, ix.target = k.MemoryAccess.GetAccessor(), k.MemoryAccess.GetTarget()
	case *pb.Event_ProtectionChange:
		ix.rule, ix.proc = k.ProtectionChange.GetRule(), k.ProtectionChange.GetProcess()
	case *pb.Event_CoreDump:
		ix.rule, ix.proc = k.CoreDump.GetRule(), k.CoreDump.GetProcess()
	case *pb.Event_KeyFileAccess:
		ix.decision, ix.rule, ix.proc = k.KeyFileAccess.GetDecision(), k.KeyFileAccess.GetRule(), k.KeyFileAccess.GetProcess()
	case *pb.Event_SideDoor:
		ix.decision, ix.rule = k.SideDoor.GetDecision(), k.SideDoor.GetRule()
		ix.proc, ix.target = k.SideDoor.GetAccessor(), k.SideDoor.GetTarget()
	case *pb.Event_BreakGlass:
		ix.rule = k.BreakGlass.GetRule()
	}
	ix.rule = clean(ix.rule)
	return ix
}

func pid(p *pb.Process) int64   { return int64(p.GetPid()) }
func comm(p *pb.Process) string { return clean(p.GetComm()) }
func exe(p *pb.Process) string  { return clean(p.GetExePath()) }
