package optoken

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	otherPub, otherPriv, _ := GenerateKey()
	now := time.Now().UTC().Truncate(time.Second)
	uid := int64(0)
	base := Claims{Action: ActionUninstall, Host: "signer-1", Operator: "alice", Reason: "decommissioning host"}
	good, err := Sign(priv, base)
	if err != nil {
		t.Fatal(err)
	}
	swapPayload := func(tok string, edit func(string) string) string {
		parts := strings.Split(tok, ".")
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		parts[1] = base64.RawURLEncoding.EncodeToString([]byte(edit(string(raw))))
		return strings.Join(parts, ".")
	}
	mustSign := func(k []byte, c Claims) string {
		s, err := Sign(k, c)
		if err != nil {
			t.Fatalf("sign %+v: %v", c, err)
		}
		return s
	}
	bg := Claims{Action: ActionBreakGlass, Host: "signer-1", Operator: "bob", Reason: "incident 4711 debugging",
		Rule: "token-signer", Executable: "/usr/bin/gdb", UID: &uid, Duration: "15m"}
	cases := []struct {
		name    string
		pub     []byte
		token   string
		now     time.Time
		wantErr string
	}{
		{"valid uninstall", pub, good, now, ""},
		{"valid break-glass", pub, mustSign(priv, bg), now, ""},
		{"surrounding whitespace", pub, "  " + good + "\n", now, ""},
		{"other operator key", otherPub, good, now, "does not verify"},
		{"signed by other key", pub, mustSign(otherPriv, base), now, "does not verify"},
		{"host changed after signing", pub, swapPayload(good, func(s string) string { return strings.Replace(s, "signer-1", "signer-2", 1) }), now, "does not verify"},
		{"expired", pub, good, now.Add(2 * time.Hour), "expired"},
		{"issued in the future", pub, good, now.Add(-time.Hour), "future"},
		{"not a token", pub, "hello", now, "kgt1"},
		{"no signature", pub, "kgt1.abc", now, "malformed"},
		{"bad signature encoding", pub, good[:strings.LastIndexByte(good, '.')] + ".!!!", now, "malformed"},
		{"truncated signature", pub, good[:len(good)-4], now, "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Verify(tc.pub, tc.token, tc.now)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.Host != "signer-1" || c.Nonce == "" || c.ExpiresAt.Sub(c.IssuedAt) != time.Hour {
					t.Fatalf("claims %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Verify error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	if t1, t2 := mustSign(priv, base), mustSign(priv, base); t1 == t2 {
		t.Fatal("two tokens for the same claims are identical: nonce not random")
	}
}

func TestClaimsRefused(t *testing.T) {
	_, priv, _ := GenerateKey()
	now := time.Now()
	uid := int64(-1)
	ok := Claims{Action: ActionUninstall, Host: "h", Operator: "alice", Reason: "long enough reason"}
	cases := []struct {
		name string
		edit func(*Claims)
		want string
	}{
		{"unknown action", func(c *Claims) { c.Action = "reboot" }, "unknown action"},
		{"no host", func(c *Claims) { c.Host = "" }, "host"},
		{"no operator", func(c *Claims) { c.Operator = "" }, "operator"},
		{"short reason", func(c *Claims) { c.Reason = "because  " }, "reason"},
		{"too long", func(c *Claims) { c.IssuedAt = now; c.ExpiresAt = now.Add(25 * time.Hour) }, "at most"},
		{"expiry before issue", func(c *Claims) { c.IssuedAt = now; c.ExpiresAt = now.Add(-time.Minute) }, "before its expiry"},
		{"break-glass without rule", func(c *Claims) { c.Action = ActionBreakGlass; c.Executable = "/x"; c.UID = &uid; c.Duration = "1m" }, "break-glass token needs"},
		{"break-glass bad duration", func(c *Claims) {
			c.Action = ActionBreakGlass
			c.Rule, c.Executable, c.UID, c.Duration = "r", "/x", &uid, "soon"
		}, "duration"},
		{"policy without hash", func(c *Claims) { c.Action = ActionPolicy; c.PolicySHA256 = "abcd" }, "policy_sha256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			if _, err := Sign(priv, c); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Sign error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "operator")
	if err := WriteKeyPair(base); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyPair(base); err == nil {
		t.Fatal("WriteKeyPair overwrote an existing key")
	}
	st, err := os.Stat(base + ".key")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v, %v", st.Mode(), err)
	}
	priv, err := LoadPrivateKey(base + ".key")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(base + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Sign(priv, Claims{Action: ActionUninstall, Host: "h", Operator: "o", Reason: "a good reason"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(pub, tok, time.Now()); err != nil {
		t.Fatalf("token from files: %v", err)
	}
	if _, err := LoadPublicKey(base + ".key"); err == nil {
		t.Fatal("a private key file was accepted as public key")
	}
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}
