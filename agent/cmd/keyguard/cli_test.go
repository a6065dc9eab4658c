package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/bpf/objhash"
)

// keyguard and keyguard-loadgen (the real binaries) answer -h, --help and help on every command with
// usage on stdout and exit 0, and version/--version with the build's identity.
func TestHelpAndVersion(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", ".", "../keyguard-loadgen")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kg, loadgen := filepath.Join(dir, "keyguard"), filepath.Join(dir, "keyguard-loadgen")
	cases := []struct {
		bin  string
		args []string
		want string
	}{
		{kg, []string{"-h"}, "usage: keyguard <command>"},
		{kg, []string{"--help"}, "break-glass"},
		{kg, []string{"help"}, "usage: keyguard <command>"},
		{kg, []string{"help", "events"}, "usage: keyguard events"},
		{kg, []string{"version"}, "bpf object sha256 " + objhash.SHA256},
		{kg, []string{"--version"}, "keyguard dev\ncommit "},
		{kg, []string{"token", "-h"}, "usage: keyguard token <command>"},
		{kg, []string{"token", "sign", "--help"}, "-action"},
		{kg, []string{"token", "keygen", "help"}, "usage: keyguard token keygen"},
		{kg, []string{"scan", "--help"}, "usage: keyguard scan"},
		{loadgen, []string{"-h"}, "usage: keyguard-loadgen [flags]"},
		{loadgen, []string{"--help"}, "-target"},
		{loadgen, []string{"help"}, "usage: keyguard-loadgen"},
		{loadgen, []string{"version"}, "keyguard-loadgen dev\ncommit "},
		{loadgen, []string{"--version"}, "bpf object sha256 "},
	}
	for name := range commands {
		for _, h := range []string{"-h", "--help", "help"} {
			cases = append(cases, struct {
				bin  string
				args []string
				want string
			}{kg, []string{name, h}, "usage: keyguard " + name})
		}
	}
	for _, tc := range cases {
		t.Run(filepath.Base(tc.bin)+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(tc.bin, tc.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\nstderr: %s", err, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.want) || stderr.Len() > 0 {
				t.Errorf("stdout lacks %q or stderr not empty:\nstdout: %s\nstderr: %s", tc.want, stdout.String(), stderr.String())
			}
		})
	}
	for _, tc := range []struct {
		bin  string
		args []string
	}{{kg, nil}, {kg, []string{"nope"}}, {kg, []string{"status", "-nope"}}, {kg, []string{"token"}}, {loadgen, []string{"-nope"}}, {loadgen, []string{"extra"}}} {
		var stderr bytes.Buffer
		cmd := exec.Command(tc.bin, tc.args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "usage:") {
			t.Errorf("%s %q: %v, want exit 2 and usage on stderr; stderr:\n%s", filepath.Base(tc.bin), tc.args, err, stderr.String())
		}
	}
}
