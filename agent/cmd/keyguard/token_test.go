package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"
)

func TestTokenCommands(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "operator")
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := runToken(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, _, e := run("keygen", "-out", base); code != 0 {
		t.Fatalf("keygen: %d %s", code, e)
	}
	if code, _, _ := run("keygen", "-out", base); code == 0 {
		t.Fatal("keygen overwrote an existing key")
	}
	pub, err := optoken.LoadPublicKey(base + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policy, []byte("version: 1\n"), 0o644)
	sum := sha256.Sum256([]byte("version: 1\n"))

	cases := []struct {
		name  string
		args  []string
		code  int
		check func(optoken.Claims) bool
	}{
		{"uninstall", []string{"-action", "uninstall", "-host", "h1", "-operator", "alice", "-reason", "retire the host"}, 0,
			func(c optoken.Claims) bool { return c.Action == "uninstall" && c.Host == "h1" && c.Operator == "alice" }},
		{"break-glass", []string{"-action", "break-glass", "-host", "h1", "-reason", "incident 7 debugging", "-rule", "signer",
			"-executable", "/usr/bin/gdb", "-uid", "0", "-for", "15m", "-valid", "10m"}, 0,
			func(c optoken.Claims) bool {
				return c.Rule == "signer" && *c.UID == 0 && c.Duration == "15m" && c.ExpiresAt.Sub(c.IssuedAt) == 10*time.Minute
			}},
		{"policy", []string{"-action", "policy", "-host", "h1", "-reason", "tighten the signer", "-policy", policy}, 0,
			func(c optoken.Claims) bool { return c.PolicySHA256 == hex.EncodeToString(sum[:]) }},
		{"policy without file", []string{"-action", "policy", "-host", "h1", "-reason", "tighten the signer"}, 2, nil},
		{"break-glass missing uid", []string{"-action", "break-glass", "-host", "h1", "-reason", "incident 7 debugging", "-rule", "signer",
			"-executable", "/usr/bin/gdb", "-for", "15m"}, 2, nil},
		{"short reason", []string{"-action", "uninstall", "-host", "h1", "-reason", "x"}, 2, nil},
		{"too long", []string{"-action", "uninstall", "-host", "h1", "-reason", "retire the host", "-valid", "48h"}, 2, nil},
		{"unknown action", []string{"-action", "reboot", "-host", "h1", "-reason", "retire the host"}, 2, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, e := run(append([]string{"sign", "-key", base + ".key"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, e)
			}
			if tc.check == nil {
				if e == "" {
					t.Fatal("refused without a message")
				}
				return
			}
			c, err := optoken.Verify(pub, strings.TrimSpace(out), time.Now())
			if err != nil {
				t.Fatalf("the printed token does not verify: %v", err)
			}
			if !tc.check(c) {
				t.Fatalf("claims %+v", c)
			}
		})
	}
	if code, _, _ := run("sign", "-key", filepath.Join(dir, "missing.key"), "-action", "uninstall", "-host", "h", "-reason", "retire the host"); code != 1 {
		t.Fatalf("missing key: exit %d, want 1", code)
	}
}
