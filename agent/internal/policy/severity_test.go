package policy

import (
	"strings"
	"testing"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestRuleSeverity(t *testing.T) {
	p, err := Parse("p.yaml", []byte(head+"  - name: ca\n    severity: critical\n    match: {executables: [/bin/sh]}\n  - name: plain\n    match: {executables: [/bin/ls]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Rules[0].Severity != keyguardv1.Severity_SEVERITY_CRITICAL || p.Rules[1].Severity != keyguardv1.Severity_SEVERITY_UNSPECIFIED {
		t.Errorf("severities = %v, %v", p.Rules[0].Severity, p.Rules[1].Severity)
	}
	_, err = Parse("p.yaml", []byte(head+"  - name: ca\n    severity: severe\n    match: {executables: [/bin/sh]}\n"))
	if err == nil || !strings.Contains(err.Error(), `"severe" is not a severity; use info, low, medium, high or critical`) {
		t.Errorf("bad severity: %v", err)
	}
}
