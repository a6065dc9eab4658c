package events

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	kgbpf "github.com/keyguard/keyguard/bpf"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func accessRecord(op kgbpf.KeyguardKgOp, class kgbpf.KeyguardKgAccessClass, decision kgbpf.KeyguardKgDecision) kgbpf.KeyguardKgEvent {
	var r kgbpf.KeyguardKgEvent
	r.Kind = uint32(kgbpf.KeyguardKgEventKindKG_EVENT_ACCESS)
	r.Op = uint32(op)
	r.Decision = uint32(decision)
	r.RuleId = 3
	r.AccessClass = uint32(class)
	r.Actor.Pid, r.Target.Pid = 0, 0 // no /proc lookups in host tests
	return r
}

func TestAggregate(t *testing.T) {
	names := ruleNames{3: "signer"}
	now := uint64(time.Second)
	tests := []struct {
		name      string
		v         kgbpf.KeyguardKgAgg
		wantNil   bool
		wantErr   bool
		wantCount uint64
		wantClass keyguardv1.AccessClass
		wantProcs uint64 // accessor processes
		wantLast  uint32 // last accessor pid
	}{
		{name: "only the first attempt (already in the ring buffer)", wantNil: true,
			v: kgbpf.KeyguardKgAgg{Ev: accessRecord(kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH, kgbpf.KeyguardKgAccessClassKG_CLASS_MEMORY, kgbpf.KeyguardKgDecisionKG_DECISION_DENIED)}},
		{name: "repeated denied attach", wantCount: 99_999, wantClass: keyguardv1.AccessClass_ACCESS_CLASS_MEMORY, wantProcs: 1, wantLast: 4242,
			v: kgbpf.KeyguardKgAgg{Count: 99_999, FirstNs: now, LastNs: now + uint64(3*time.Second), Processes: 1, LastTgid: 4242,
				Ev: accessRecord(kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH, kgbpf.KeyguardKgAccessClassKG_CLASS_MEMORY, kgbpf.KeyguardKgDecisionKG_DECISION_DENIED)}},
		{name: "one-shot attacker processes", wantCount: 2_999, wantClass: keyguardv1.AccessClass_ACCESS_CLASS_MEMORY, wantProcs: 3_000, wantLast: 7001,
			v: kgbpf.KeyguardKgAgg{Count: 2_999, FirstNs: now, LastNs: now + uint64(time.Second), Processes: 3_000, LastTgid: 7001,
				Ev: accessRecord(kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH, kgbpf.KeyguardKgAccessClassKG_CLASS_MEMORY, kgbpf.KeyguardKgDecisionKG_DECISION_DENIED)}},
		{name: "metadata reads", wantCount: 12, wantClass: keyguardv1.AccessClass_ACCESS_CLASS_METADATA,
			v: kgbpf.KeyguardKgAgg{Count: 12, LastNs: now,
				Ev: accessRecord(kgbpf.KeyguardKgOpKG_OP_PROC_LINK, kgbpf.KeyguardKgAccessClassKG_CLASS_METADATA, kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_POLICY)}},
		{name: "not an access event", wantErr: true,
			v: kgbpf.KeyguardKgAgg{Count: 2, Ev: kgbpf.KeyguardKgEvent{Kind: uint32(kgbpf.KeyguardKgEventKindKG_EVENT_PROTECT)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := Aggregate(&tt.v, names)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Aggregate error = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if (ev == nil) != tt.wantNil {
				t.Fatalf("Aggregate = %v, want nil %v", ev, tt.wantNil)
			}
			if ev == nil {
				return
			}
			ma := ev.GetMemoryAccess()
			if ma.GetCount() != tt.wantCount || ma.GetAccessClass() != tt.wantClass || ma.GetRule() != "signer" {
				t.Errorf("count %d class %v rule %q, want %d %v signer", ma.GetCount(), ma.GetAccessClass(), ma.GetRule(), tt.wantCount, tt.wantClass)
			}
			if ma.GetAccessorProcesses() != tt.wantProcs || ma.GetLastAccessorPid() != tt.wantLast {
				t.Errorf("accessor processes %d last pid %d, want %d %d", ma.GetAccessorProcesses(), ma.GetLastAccessorPid(), tt.wantProcs, tt.wantLast)
			}
			if ma.GetFirstTime() == nil || ma.GetLastTime() == nil || ma.GetFirstTime().AsTime().After(ma.GetLastTime().AsTime()) {
				t.Errorf("first %v last %v", ma.GetFirstTime(), ma.GetLastTime())
			}
			if got := ma.GetLastTime().AsTime().Sub(ma.GetFirstTime().AsTime()); tt.v.FirstNs != 0 && got != time.Duration(tt.v.LastNs-tt.v.FirstNs) {
				t.Errorf("last - first = %v, want %v", got, time.Duration(tt.v.LastNs-tt.v.FirstNs))
			}
			if !ev.GetTime().AsTime().Equal(ma.GetLastTime().AsTime()) {
				t.Errorf("event time %v, want the last attempt's %v", ev.GetTime(), ma.GetLastTime())
			}
		})
	}
}

// A record written by an older build (no access_class) into the pinned ring buffer still decodes;
// anything shorter than that is refused.
func TestDecodeOlderRecord(t *testing.T) {
	r := accessRecord(kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH, kgbpf.KeyguardKgAccessClassKG_CLASS_METADATA, kgbpf.KeyguardKgDecisionKG_DECISION_DENIED)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &r); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	ev, err := Decode(full, ruleNames{})
	if err != nil || ev.GetMemoryAccess().GetAccessClass() != keyguardv1.AccessClass_ACCESS_CLASS_METADATA {
		t.Fatalf("full record: %v, %v", ev, err)
	}
	old := full[:len(full)-recordGrowth]
	ev, err = Decode(old, ruleNames{})
	if err != nil || ev.GetMemoryAccess().GetAccessClass() != keyguardv1.AccessClass_ACCESS_CLASS_UNSPECIFIED {
		t.Fatalf("older record: %v, %v", ev, err)
	}
	if _, err := Decode(old[:len(old)-1], ruleNames{}); err == nil {
		t.Fatal("a truncated record decoded")
	}
}
