package operator

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/proto/optoken"
)

func TestVerify(t *testing.T) {
	pub, priv, err := optoken.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, _ := optoken.GenerateKey()
	o := New(Config{Hostname: "signer-1"}, Deps{})
	now := time.Now()
	sign := func(k []byte, action, host string) string {
		c := optoken.Claims{Action: action, Host: host, Operator: "alice", Reason: "rotate the signing key",
			IssuedAt: now, ExpiresAt: now.Add(time.Hour), Nonce: "n-" + action + host}
		switch action {
		case optoken.ActionBreakGlass:
			uid := int64(0)
			c.Rule, c.Executable, c.UID, c.Duration = "signer", "/usr/bin/gdb", &uid, "15m"
		case optoken.ActionPolicy:
			c.PolicySHA256 = strings.Repeat("ab", 32)
		}
		tok, err := optoken.Sign(k, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if _, err := o.Verify(sign(priv, optoken.ActionUninstall, "signer-1"), optoken.ActionUninstall); err == nil ||
		!strings.Contains(err.Error(), "no operator key is installed") {
		t.Errorf("Verify before CheckInstall: %v", err)
	}
	o.key = pub
	for _, tc := range []struct {
		name, tok, action, wantErr string
	}{
		{"valid", sign(priv, optoken.ActionUninstall, "signer-1"), optoken.ActionUninstall, ""},
		{"other action", sign(priv, optoken.ActionBreakGlass, "signer-1"), optoken.ActionUninstall, `authorises "break-glass", not "uninstall"`},
		{"other host", sign(priv, optoken.ActionUninstall, "signer-2"), optoken.ActionUninstall, `for host "signer-2", this is "signer-1"`},
		{"other key", sign(otherPriv, optoken.ActionUninstall, "signer-1"), optoken.ActionUninstall, "signature"},
		{"surrounding space", "  " + sign(priv, optoken.ActionPolicy, "signer-1") + "\n", optoken.ActionPolicy, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := o.Verify(tc.tok, tc.action)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Verify error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestCheckGrant(t *testing.T) {
	o := New(Config{}, Deps{Policy: &policy.Policy{Rules: []policy.Rule{{Name: "signer", ID: 7}}}})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uid := func(n int64) *int64 { return &n }
	ok := control.Request{Executable: exe, UID: uid(1000), Rule: "signer", Duration: "15m", Reason: "debug the stuck signer", Operator: "alice"}
	for _, tc := range []struct {
		name    string
		change  func(r *control.Request)
		wantErr string
		wantUID uint32
	}{
		{"valid", func(*control.Request) {}, "", 1000},
		{"any uid", func(r *control.Request) { r.UID = uid(-1) }, "", ^uint32(0)},
		{"short reason", func(r *control.Request) { r.Reason = "because" }, "at least 10 characters", 0},
		{"no operator", func(r *control.Request) { r.Operator = "" }, "operator's name", 0},
		{"too long", func(r *control.Request) { r.Duration = "5h" }, "at most 4h0m0s", 0},
		{"negative", func(r *control.Request) { r.Duration = "-1m" }, "positive duration", 0},
		{"unknown rule", func(r *control.Request) { r.Rule = "nginx" }, `no rule named "nginx"`, 0},
		{"no uid", func(r *control.Request) { r.UID = nil }, "accessor's uid", 0},
		{"relative executable", func(r *control.Request) { r.Executable = "bin/gdb" }, "absolute path", 0},
		{"missing executable", func(r *control.Request) { r.Executable = "/nonexistent/gdb" }, "executable:", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			tc.change(&r)
			d, key, err := o.checkGrant(r)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("checkGrant error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d != 15*time.Minute || key.RuleId != 7 || key.Uid != tc.wantUID || key.Ino == 0 {
				t.Errorf("checkGrant = %v, %+v", d, key)
			}
		})
	}
}
