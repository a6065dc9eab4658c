package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/loader"
)

// On a kernel that cannot run keyguard (the CI hosts refuse LSM programs), the agent refuses to start
// and says what is missing and what to change, before touching anything.
func TestRefusesToStartWithoutBPFLSM(t *testing.T) {
	probe := loader.Probe("/sys/fs/bpf")
	if probe.Err() == nil {
		t.Skip("this kernel runs BPF LSM programs; the refusal path is exercised on hosts that do not")
	}
	d := t.TempDir()
	pol := filepath.Join(d, "policy.yaml")
	exe, _ := os.Executable()
	os.WriteFile(pol, []byte("version: 1\nrules:\n  - name: x\n    match:\n      executables: ["+exe+"]\n"), 0o644)
	var stdout, stderr bytes.Buffer
	code := run([]string{"run", "-policy", pol, "-events", filepath.Join(d, "ev.jsonl"), "-state-dir", d,
		"-pin-path", "/sys/fs/bpf/kg_refuse_test", "-control-socket", ""}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	msg := stderr.String()
	if !strings.Contains(msg, "cannot run keyguard") {
		t.Fatalf("no clear refusal:\n%s", msg)
	}
	for _, m := range probe.Missing {
		if !strings.Contains(msg, m.Fix) {
			t.Errorf("the message lacks the fix %q:\n%s", m.Fix, msg)
		}
	}
	if _, err := os.Stat("/sys/fs/bpf/kg_refuse_test"); err == nil {
		t.Error("pins were created although the agent refused to start")
	}
	if _, err := os.Stat(filepath.Join(d, "ev.jsonl")); err == nil {
		t.Error("the agent wrote an event log although it refused to start")
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"probe"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), probe.Missing[0].What) {
		t.Fatalf("probe: exit %d, stderr %q", code, stderr.String())
	}
}

func TestBadPolicyNamesFileLineKey(t *testing.T) {
	d := t.TempDir()
	pol := filepath.Join(d, "policy.yaml")
	os.WriteFile(pol, []byte("version: 1\nrules:\n  - name: x\n    mood: enforce\n"), 0o644)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "-policy", pol, "-events", filepath.Join(d, "ev.jsonl")}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(stderr.String(), "policy.yaml:4:") || !strings.Contains(stderr.String(), "mood") {
		t.Fatalf("error does not name file:line and key:\n%s", stderr.String())
	}
}

// A metrics address off loopback is refused before anything else happens, unless allowed.
func TestMetricsListenOffLoopbackRefused(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:9464", ":9464", "192.0.2.1:9464"} {
		t.Run(addr, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run([]string{"run", "-policy", "/nonexistent/policy.yaml", "-metrics-listen", addr,
				"-pin-path", "/sys/fs/bpf/kg_metrics_test", "-control-socket", ""}, &stdout, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), "-metrics-allow-remote") {
				t.Fatalf("exit %d, want 2 and a hint at -metrics-allow-remote; stderr:\n%s", code, stderr.String())
			}
		})
	}
}
