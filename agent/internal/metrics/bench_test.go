package metrics

import (
	"testing"
	"time"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// BenchmarkObserve is the agent's metric accounting per event read from the ring buffer (emit calls
// Observe once per event), for events whose labels change from one event to the next (worst case).
func BenchmarkObserve(b *testing.B) {
	a := New(Sources{})
	evs := []*keyguardv1.Event{access("signer", "denied"), access("signer", "allowed_audit"), access("other", "denied"),
		sideDoor(keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER, "", "keyguard_pin_unlink events")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		a.Observe(evs[i&3])
		i++
	}
}

// BenchmarkObserveRun is the same for a run of events with the same labels (an attack loop).
func BenchmarkObserveRun(b *testing.B) {
	a := New(Sources{})
	ev := access("signer", "denied")
	b.ReportAllocs()
	for b.Loop() {
		a.Observe(ev)
	}
}

// BenchmarkDeliveryTracking is the per-event cost of the delivery-lag measurement: one Spooled per
// event and one Acked per batch of 100.
func BenchmarkDeliveryTracking(b *testing.B) {
	a := New(Sources{})
	now := time.Now()
	b.ReportAllocs()
	seq := uint64(0)
	for b.Loop() {
		seq++
		a.Spooled(seq, now)
		if seq%100 == 0 {
			a.Acked(seq)
		}
	}
}
