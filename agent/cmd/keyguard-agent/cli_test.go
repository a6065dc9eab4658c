package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/bpf/objhash"
	"github.com/keyguard/keyguard/deploy/cmdline/clitest"
)

// Every command answers -h, --help and help with its usage on stdout and exit 0; version and --version
// print version, commit, Go version and the BPF object's hash.
func TestHelpAndVersion(t *testing.T) {
	bin := filepath.Join(clitest.Build(t, "."), "keyguard-agent")
	var cases []clitest.Case
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "usage: keyguard-agent <command>"},
		{[]string{"--help"}, "policy check FILE [-offline]"},
		{[]string{"help"}, "usage: keyguard-agent <command>"},
		{[]string{"help", "run"}, "usage: keyguard-agent run [-config FILE] [flags]"},
		{[]string{"run", "-h"}, "-metrics-allow-remote"},
		{[]string{"run", "--help"}, "-config string"},
		{[]string{"run", "help"}, "usage: keyguard-agent run"},
		{[]string{"probe", "--help"}, "usage: keyguard-agent probe"},
		{[]string{"uninstall", "-h"}, "-token-file"},
		{[]string{"policy", "-h"}, "usage: keyguard-agent policy <command>"},
		{[]string{"policy", "help"}, "check"},
		{[]string{"policy", "check", "--help"}, "-offline"},
		{[]string{"policy", "check", "help"}, "usage: keyguard-agent policy check"},
		{[]string{"version"}, "bpf object sha256 " + objhash.SHA256},
		{[]string{"--version"}, "keyguard-agent dev\ncommit "},
	} {
		cases = append(cases, clitest.Case{Bin: bin, Args: tc.args, Want: tc.want})
	}
	if v, _ := exec.Command("go", "env", "GOVERSION").Output(); len(v) > 0 {
		cases = append(cases, clitest.Case{Bin: bin, Args: []string{"version"}, Want: "go " + strings.TrimSpace(string(v))})
	}
	clitest.Succeeds(t, cases)
	clitest.UsageErrors(t, bin, nil, []string{"nope"}, []string{"run", "-nope"}, []string{"policy"}, []string{"policy", "check"})
}

func TestPolicyCheck(t *testing.T) {
	d := t.TempDir()
	exe, _ := os.Executable()
	write := func(name, content string) string {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "version: 1\nrules:\n  - name: signer\n    match:\n      executables: ["+exe+"]\n")
	missing := write("missing.yaml", "version: 1\nrules:\n  - name: signer\n    match:\n      executables: [/opt/not-installed/signer]\n")
	bad := write("bad.yaml", "version: 1\nrules:\n  - name: x\n    mood: enforce\n")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"valid", []string{"check", good}, 0, "good.yaml: valid; 1 rule(s): signer; sha256 ", ""},
		{"valid offline", []string{"check", "-offline", good}, 0, "valid (offline: executables not checked)", ""},
		{"flag after file", []string{"check", missing, "-offline"}, 0, "missing.yaml: valid (offline", ""},
		{"missing executable", []string{"check", missing}, 1, "", "missing.yaml:5:"},
		{"bad key", []string{"check", "-offline", bad}, 1, "", "bad.yaml:4:"},
		{"no such file", []string{"check", "-offline", filepath.Join(d, "nope.yaml")}, 1, "", "no such file"},
		{"two files", []string{"check", good, bad}, 2, "", "give one policy file (got 2)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := policyCmd(tc.args, &stdout, &stderr)
			if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
		})
	}
	ents, _ := os.ReadDir(d)
	if len(ents) != 3 {
		t.Errorf("policy check created files: %v", ents)
	}
}

// The configuration file is read, its unknown keys are errors with file:line, and flags override it.
func TestConfigFile(t *testing.T) {
	d := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fromFile := write("from-file.yaml", "version: 1\nrules:\n  - name: x\n    mood: enforce\n")
	fromFlag := write("from-flag.yaml", "version: 1\nrules:\n  - name: y\n    colour: red\n")
	cfg := write("agent.yaml", "policy: "+fromFile+"\nevents: "+filepath.Join(d, "ev.jsonl")+"\nmetrics:\n  listen: \"\"\n")
	typo := write("typo.yaml", "policy: "+fromFile+"\ncollector:\n  adress: 10.0.0.1:7443\n")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"policy from the file", []string{"run", "-config", cfg}, 1, "from-file.yaml:4:"},
		{"flag overrides the file", []string{"run", "-config", cfg, "-policy", fromFlag}, 1, "from-flag.yaml:4:"},
		{"unknown key", []string{"run", "-config", typo}, 2, `typo.yaml:3:3: unknown key "adress" in collector (known: address, ca, cert, insecure_plaintext_host, key, spool_dir, spool_max_bytes)`},
		{"missing explicit file", []string{"run", "-config", filepath.Join(d, "nope.yaml")}, 2, "nope.yaml: no such file"},
		{"metrics off loopback from the file", []string{"run", "-config", write("m.yaml", "metrics:\n  listen: 0.0.0.0:9464\n")}, 2, "-metrics-allow-remote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("exit %d (want %d), stderr:\n%s", code, tc.code, stderr.String())
			}
		})
	}
}
