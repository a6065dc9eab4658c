package events

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/posture"
	kgbpf "github.com/keyguard/keyguard/bpf"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestExePath(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want string
	}{
		{"testproc\x00bin\x00/\x00", "/bin/testproc"},
		{"victim\x00kg\x00tmp\x00/\x00", "/tmp/kg/victim"},
		{"/\x00", "/"},
		{"testproc\x00bin\x00", ""}, // truncated: no root marker
		{"", ""},
	} {
		b := make([]int8, 256)
		for i := range tc.raw {
			b[i] = int8(tc.raw[i])
		}
		if got := exePath(b); got != tc.want {
			t.Errorf("exePath(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestAccessModeNames(t *testing.T) {
	got := AccessModeNames(0x0a)
	if len(got) != 2 || got[0] != "attach" || got[1] != "fscreds" {
		t.Fatalf("AccessModeNames(0x0a) = %v", got)
	}
}

func TestHealthFindings(t *testing.T) {
	in := []posture.Finding{
		{Name: "kdump", Value: "crash kernel loaded", Severity: posture.Critical, Remediation: "set -d 31"},
		{Name: "swap:/dev/sda2", Value: "partition, unencrypted sda2", Severity: posture.High, Remediation: "encrypt"},
		{Name: "kernel.perf_event_paranoid", Value: "-1", Severity: posture.Medium},
		{Name: "fs.suid_dumpable", Value: "2", Severity: posture.Low},
		{Name: "kernel.modules_disabled", Value: "1", Severity: posture.Info},
	}
	got := Findings(in)
	want := []keyguardv1.Severity{keyguardv1.Severity_SEVERITY_CRITICAL, keyguardv1.Severity_SEVERITY_HIGH,
		keyguardv1.Severity_SEVERITY_MEDIUM, keyguardv1.Severity_SEVERITY_LOW, keyguardv1.Severity_SEVERITY_INFO}
	if len(got) != len(want) {
		t.Fatalf("%d findings, want %d", len(got), len(want))
	}
	for i, f := range got {
		if f.GetSeverity() != want[i] || f.GetName() != in[i].Name || f.GetValue() != in[i].Value || f.GetRemediation() != in[i].Remediation {
			t.Errorf("finding %d: %v, from %+v", i, f, in[i])
		}
	}
}

type ruleNames map[uint32]string

func (r ruleNames) RuleName(id uint32) string { return r[id] }

// record encodes a ring-buffer record as the kernel writes it.
func record(t *testing.T, r kgbpf.KeyguardKgEvent) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, &r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func cbytes(dst []int8, s string) {
	for i := range s {
		dst[i] = int8(s[i])
	}
}

// Every kernel value becomes its keyguard.v1 value; what the API has no value for stays in the detail.
func TestDecode(t *testing.T) {
	names := ruleNames{7: "signer"}
	ev := func(kind kgbpf.KeyguardKgEventKind, op, decision, mode uint32, detail string) kgbpf.KeyguardKgEvent {
		r := kgbpf.KeyguardKgEvent{Kind: uint32(kind), Op: op, Decision: decision, AccessMode: mode, RuleId: 7,
			Reason: uint32(kgbpf.KeyguardKgReasonKG_REASON_INHERIT)}
		r.Actor.Comm[0], r.Target.Comm[0] = 'a', 't'
		cbytes(r.Detail[:], detail)
		return r
	}
	access := kgbpf.KeyguardKgEventKindKG_EVENT_ACCESS
	side := kgbpf.KeyguardKgEventKindKG_EVENT_SIDE_DOOR
	denied := uint32(kgbpf.KeyguardKgDecisionKG_DECISION_DENIED)
	for _, tc := range []struct {
		name string
		in   kgbpf.KeyguardKgEvent
		want string // protojson of the kind, proto field names
	}{
		{"ptrace attach", ev(access, uint32(kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH), denied, 0x12, ""),
			`{"accessor":{"comm":"a"},"target":{"comm":"t"},"operation":"ACCESS_OPERATION_PTRACE_ATTACH","access_mode":18,"access_mode_names":["attach","realcreds"],"rule":"signer","policy_mode":"POLICY_MODE_ENFORCE","decision":"DECISION_DENIED","target_reason":"PROTECTION_REASON_INHERITED"}`},
		{"proc read", ev(access, uint32(kgbpf.KeyguardKgOpKG_OP_PROC_READ), denied, 0, "/proc/42/mem"),
			`{"accessor":{"comm":"a"},"target":{"comm":"t"},"operation":"ACCESS_OPERATION_PROC_OPEN","proc_path":"/proc/42/mem","rule":"signer","policy_mode":"POLICY_MODE_ENFORCE","decision":"DECISION_DENIED","detail":"proc_read","target_reason":"PROTECTION_REASON_INHERITED"}`},
		{"exec traced", ev(access, uint32(kgbpf.KeyguardKgOpKG_OP_EXEC_TRACED), denied, 0, "tracer 9"),
			`{"accessor":{"comm":"a"},"target":{"comm":"t"},"operation":"ACCESS_OPERATION_OTHER","rule":"signer","policy_mode":"POLICY_MODE_ENFORCE","decision":"DECISION_DENIED","detail":"exec_traced: tracer 9","target_reason":"PROTECTION_REASON_INHERITED"}`},
		{"key file", func() kgbpf.KeyguardKgEvent {
			r := ev(kgbpf.KeyguardKgEventKindKG_EVENT_PROTECT, 0, 0, 0, "signing.pem") // the reason overrides inherit
			r.Reason = uint32(kgbpf.KeyguardKgReasonKG_REASON_KEY_FILE)
			return r
		}(), `{"process":{"comm":"t"},"rule":"signer","state":"PROTECTION_STATE_PROTECTED","reason":"PROTECTION_REASON_KEY_FILE_OPEN","key_file_path":"signing.pem","detail":"signing.pem"}`},
		{"dump to handler", ev(kgbpf.KeyguardKgEventKindKG_EVENT_DUMP, uint32(kgbpf.KeyguardKgDumpActionKG_DUMP_TO_HANDLER), 0, 11, ""),
			`{"process":{"comm":"t"},"signal":11,"rule":"signer","reason":"streaming to keyguard's handler for redaction"}`},
		{"tamper", ev(kgbpf.KeyguardKgEventKindKG_EVENT_TAMPER, uint32(kgbpf.KeyguardKgTamperKG_TAMPER_MAP_WRITE), denied, 12, "rules"),
			`{"accessor":{"comm":"a"},"kind":"SIDE_DOOR_KIND_KEYGUARD_TAMPER","detail":"keyguard_map_write id 12 rules","decision":"DECISION_DENIED"}`},
		{"sysctl", ev(side, uint32(kgbpf.KeyguardKgSideDoorKG_SIDE_SYSCTL), denied, 0, "kernel.core_pattern"),
			`{"accessor":{"comm":"a"},"kind":"SIDE_DOOR_KIND_SYSCTL_WRITE","detail":"sysctl_write kernel.core_pattern","decision":"DECISION_DENIED"}`},
		{"dev mem", ev(side, uint32(kgbpf.KeyguardKgSideDoorKG_SIDE_KMEM), denied, 1<<20|1, ""),
			`{"accessor":{"comm":"a"},"kind":"SIDE_DOOR_KIND_DEV_MEM","detail":"dev_mem","decision":"DECISION_DENIED"}`},
		{"kexec", ev(side, uint32(kgbpf.KeyguardKgSideDoorKG_SIDE_MODULE), denied, 2, ""),
			`{"accessor":{"comm":"a"},"kind":"SIDE_DOOR_KIND_KEXEC_LOAD","detail":"kexec_load","decision":"DECISION_DENIED"}`},
		{"perf CPU-wide", ev(side, uint32(kgbpf.KeyguardKgSideDoorKG_SIDE_PERF_USER), denied, 0x2000, ""),
			`{"accessor":{"comm":"a"},"kind":"SIDE_DOOR_KIND_PERF_EVENT","detail":"perf_event sample_type 0x2000 (CPU-wide)","decision":"DECISION_DENIED"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(record(t, tc.in), names)
			if err != nil {
				t.Fatal(err)
			}
			if got.GetTime() == nil {
				t.Error("no time")
			}
			m := got.ProtoReflect()
			oneof := m.Descriptor().Oneofs().ByName("kind")
			part := m.Get(m.WhichOneof(oneof)).Message().Interface()
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(part)
			if err != nil {
				t.Fatal(err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, b); err != nil {
				t.Fatal(err)
			}
			if compact.String() != tc.want {
				t.Errorf("got  %s\nwant %s", compact.String(), tc.want)
			}
		})
	}
	if _, err := Decode(record(t, kgbpf.KeyguardKgEvent{Kind: 99}), names); err == nil {
		t.Error("unknown kind decoded")
	}
	if _, err := Decode([]byte{1, 2}, names); err == nil {
		t.Error("short record decoded")
	}
}

// The log starts with its version header, holds one protojson event per line, and a log in the older
// format is moved aside rather than appended to.
func TestEventLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(path, []byte(`{"time":"2026-01-01T00:00:00Z","kind":"health"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := []*keyguardv1.Event{
		Health(&keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_STARTED, Detail: "hello"}),
		SideDoor(&keyguardv1.SideDoor{Kind: keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KCORE, Detail: "kcore"}),
	}
	for round := range 2 { // the second round appends to the version-2 log
		j, err := OpenJSONLines(path, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Write(in[round]); err != nil {
			t.Fatal(err)
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 3 || lines[0] != `{"keyguard_event_log":2}` || !strings.Contains(lines[1], `"state":"AGENT_STATE_STARTED"`) {
		t.Fatalf("log:\n%s", raw)
	}
	var got []*keyguardv1.Event
	if err := ReadLog(bytes.NewReader(raw), func(ev *keyguardv1.Event) error { got = append(got, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !proto.Equal(got[0], in[0]) || !proto.Equal(got[1], in[1]) {
		t.Fatalf("read back %v", got)
	}
	old, _ := filepath.Glob(path + ".v1-*")
	if len(old) != 1 {
		t.Fatalf("old-format log not moved aside: %v", old)
	}
	if err := ReadLog(strings.NewReader(`{"kind":"health"}`+"\n"), func(*keyguardv1.Event) error { return nil }); err == nil {
		t.Error("a version-1 log was read as version 2")
	}
}
