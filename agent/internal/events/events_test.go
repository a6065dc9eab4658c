package events

import (
	"testing"

	"github.com/keyguard/keyguard/agent/internal/posture"
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

func TestHealthProtoFindings(t *testing.T) {
	ev := Event{Kind: KindHealth, Health: &Health{State: "running", Posture: []Finding{
		{Name: "kdump", Value: "crash kernel loaded", Severity: posture.Critical, Remediation: "set -d 31"},
		{Name: "swap:/dev/sda2", Value: "partition, unencrypted sda2", Severity: posture.High, Remediation: "encrypt"},
		{Name: "kernel.perf_event_paranoid", Value: "-1", Severity: posture.Medium},
		{Name: "fs.suid_dumpable", Value: "2", Severity: posture.Low},
		{Name: "kernel.modules_disabled", Value: "1", Severity: posture.Info},
	}}}
	ah := ev.Proto("test").GetAgentHealth()
	if ah.GetState() != keyguardv1.AgentState_AGENT_STATE_RUNNING {
		t.Errorf("state %v, want RUNNING", ah.GetState())
	}
	want := []keyguardv1.Severity{keyguardv1.Severity_SEVERITY_CRITICAL, keyguardv1.Severity_SEVERITY_HIGH,
		keyguardv1.Severity_SEVERITY_MEDIUM, keyguardv1.Severity_SEVERITY_LOW, keyguardv1.Severity_SEVERITY_INFO}
	if len(ah.GetFindings()) != len(want) {
		t.Fatalf("%d findings, want %d", len(ah.GetFindings()), len(want))
	}
	for i, f := range ah.GetFindings() {
		in := ev.Health.Posture[i]
		if f.GetSeverity() != want[i] || f.GetName() != in.Name || f.GetValue() != in.Value || f.GetRemediation() != in.Remediation {
			t.Errorf("finding %d: %v, from %+v", i, f, in)
		}
	}
}
