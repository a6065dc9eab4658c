package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/bpf/objhash"
	"github.com/keyguard/keyguard/deploy/cmdline/clitest"
)

// Every command answers -h, --help and help with its usage on stdout and exit 0 (the real binary).
func TestHelpAndVersion(t *testing.T) {
	bin := filepath.Join(clitest.Build(t, "."), "keyguard-collector")
	var cases []clitest.Case
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
		cases = append(cases, clitest.Case{Bin: bin, Args: tc.args, Want: tc.want})
	}
	clitest.Succeeds(t, cases)
	clitest.UsageErrors(t, bin, []string{"nope"}, []string{"serve", "-nope"}, []string{"serve", "extra"}, []string{"certs"},
		[]string{"certs", "init", "x"}, []string{"console", "user"}, []string{"console", "user", "add"}, []string{"verify", "-db"})
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
