package events

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// The agent raises a few events itself (health, break-glass, refused operator requests, processes found
// by the procfs scan, the dump handler's outcome); these wrap one kind in an envelope stamped now.

// Health is an AgentHealth event.
func Health(h *keyguardv1.AgentHealth) *keyguardv1.Event {
	return &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_AgentHealth{AgentHealth: h}}
}

// SideDoor is a SideDoor event.
func SideDoor(s *keyguardv1.SideDoor) *keyguardv1.Event {
	return &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_SideDoor{SideDoor: s}}
}

// BreakGlass is a BreakGlass event.
func BreakGlass(b *keyguardv1.BreakGlass) *keyguardv1.Event {
	return &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_BreakGlass{BreakGlass: b}}
}

// Protection is a ProtectionChange event.
func Protection(p *keyguardv1.ProtectionChange) *keyguardv1.Event {
	return &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_ProtectionChange{ProtectionChange: p}}
}

// CoreDump is a CoreDump event.
func CoreDump(d *keyguardv1.CoreDump) *keyguardv1.Event {
	return &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_CoreDump{CoreDump: d}}
}
