package keyguardv1

import "testing"

func TestKindOf(t *testing.T) {
	for _, tc := range []struct {
		ev   *Event
		want EventKind
	}{
		{&Event{Kind: &Event_MemoryAccess{}}, EventKind_EVENT_KIND_MEMORY_ACCESS},
		{&Event{Kind: &Event_ProtectionChange{}}, EventKind_EVENT_KIND_PROTECTION_CHANGE},
		{&Event{Kind: &Event_CoreDump{}}, EventKind_EVENT_KIND_CORE_DUMP},
		{&Event{Kind: &Event_KeyFileAccess{}}, EventKind_EVENT_KIND_KEY_FILE_ACCESS},
		{&Event{Kind: &Event_SideDoor{}}, EventKind_EVENT_KIND_SIDE_DOOR},
		{&Event{Kind: &Event_BreakGlass{}}, EventKind_EVENT_KIND_BREAK_GLASS},
		{&Event{Kind: &Event_AgentHealth{}}, EventKind_EVENT_KIND_AGENT_HEALTH},
		{&Event{Kind: &Event_LossReport{}}, EventKind_EVENT_KIND_LOSS_REPORT},
		{&Event{}, EventKind_EVENT_KIND_UNSPECIFIED},
		{nil, EventKind_EVENT_KIND_UNSPECIFIED},
	} {
		if got := KindOf(tc.ev); got != tc.want {
			t.Errorf("KindOf(%v) = %v, want %v", tc.ev, got, tc.want)
		}
	}
}

func TestSideDoorTamper(t *testing.T) {
	for _, tc := range []struct {
		s      *SideDoor
		op     string
		tamper bool
	}{
		{&SideDoor{Kind: SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER, Detail: "keyguard_map_write id 3 rules"}, "keyguard_map_write", true},
		{&SideDoor{Kind: SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER, Detail: "uninstall_refused no token"}, "uninstall_refused", false},
		{&SideDoor{Kind: SideDoorKind_SIDE_DOOR_KIND_SYSCTL_WRITE, Detail: "sysctl_write kernel.core_pattern"}, "sysctl_write", false},
		{&SideDoor{Kind: SideDoorKind_SIDE_DOOR_KIND_KCORE, Detail: "kcore"}, "kcore", false},
	} {
		if got := tc.s.Operation(); got != tc.op {
			t.Errorf("Operation(%q) = %q, want %q", tc.s.Detail, got, tc.op)
		}
		if got := tc.s.IsTamper(); got != tc.tamper {
			t.Errorf("IsTamper(%q) = %v", tc.s.Detail, got)
		}
	}
}

func TestAttempts(t *testing.T) {
	for _, tc := range []struct {
		ev   *Event
		want int64
	}{
		{&Event{}, 1},
		{&Event{Kind: &Event_CoreDump{CoreDump: &CoreDump{}}}, 1},
		{&Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{}}}, 1},
		{&Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Count: 1}}}, 1},
		{&Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Count: 99999}}}, 99999},
		{&Event{Kind: &Event_MemoryAccess{MemoryAccess: &MemoryAccess{Count: 1 << 63}}}, 1 << 62},
	} {
		if got := Attempts(tc.ev); got != tc.want {
			t.Errorf("Attempts(%v) = %d, want %d", tc.ev, got, tc.want)
		}
	}
}
