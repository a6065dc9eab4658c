package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/bpf/objhash"
)

// Every command answers -h, --help and help with its usage on stdout and exit 0 (the real binary).
func TestHelpAndVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "keyguard-collector")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "usage: keyguard-collector <command>"},
		{[]string{"--help"}, "verify"},
		{[]string{"help"}, "Flags without a command run serve"},
		{[]string{"help", "verify"}, "usage: keyguard-collector verify -db DSN"},
		{[]string{"serve", "-h"}, "-retention-interval value"},
		{[]string{"serve", "--help"}, "-console-operator-key string"},
		{[]string{"serve", "help"}, "usage: keyguard-collector serve"},
		{[]string{"verify", "--help"}, "must exist"},
		{[]string{"certs", "-h"}, "usage: keyguard-collector certs <command>"},
		{[]string{"certs", "help"}, "revoke"},
		{[]string{"certs", "init", "-h"}, "-server-name"},
		{[]string{"certs", "host", "--help"}, "usage: keyguard-collector certs host -dir D -name HOST"},
		{[]string{"console", "--help"}, "usage: keyguard-collector console <command>"},
		{[]string{"console", "user", "help"}, "add"},
		{[]string{"console", "user", "add", "-h"}, "-role string"},
		{[]string{"version"}, "bpf object sha256 " + objhash.SHA256},
		{[]string{"--version"}, "keyguard-collector dev\ncommit "},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, tc.args...)
			cmd.Stdout, cmd.Stderr, cmd.Dir = &stdout, &stderr, t.TempDir()
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\nstderr: %s", err, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.want) || stderr.Len() > 0 {
				t.Errorf("stdout lacks %q or stderr not empty:\nstdout: %s\nstderr: %s", tc.want, stdout.String(), stderr.String())
			}
			if ents, _ := os.ReadDir(cmd.Dir); len(ents) > 0 {
				t.Errorf("help created files: %v", ents)
			}
		})
	}
	for _, args := range [][]string{{"nope"}, {"serve", "-nope"}, {"serve", "extra"}, {"certs"}, {"certs", "init", "x"}, {"console", "user"}, {"console", "user", "add"}, {"verify", "-db"}} {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "usage:") {
			t.Errorf("%q: %v, want exit 2 and usage on stderr; stderr:\n%s", args, err, stderr.String())
		}
	}
}

// verify is read-only: a mistyped database path is an error and creates nothing.
func TestVerifyNeverCreates(t *testing.T) {
	d := t.TempDir()
	for _, db := range []string{filepath.Join(d, "keyguard-evnets.db"), filepath.Join(d, "no", "such", "dir", "k.db"), "sqlite:" + filepath.Join(d, "x.db")} {
		t.Run(filepath.Base(db), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"verify", "-db", db}, &stdout, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), "no SQLite database at") || !strings.Contains(stderr.String(), "nothing was created") {
				t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
			}
			if ents, _ := os.ReadDir(d); len(ents) > 0 {
				t.Errorf("verify created %v", ents)
			}
		})
	}
}
