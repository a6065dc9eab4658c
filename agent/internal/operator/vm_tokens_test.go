package operator

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// A changed policy (here: the signer rule switched to audit) is not applied without a policy token
// signed by the installed operator key; the pinned, approved policy keeps being enforced meanwhile. An
// operator key file swapped by root does not help: the key pinned at install stays in force.
func TestPolicyChangeNeedsToken(t *testing.T) {
	vmenv.Require(t)
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, 0)
	orig, err := os.ReadFile(guesttest.Dir + "/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	origPub, err := os.ReadFile(guesttest.OperatorPub)
	if err != nil {
		t.Fatal(err)
	}
	weak := strings.Replace(string(orig), "  - name: signer\n    mode: enforce", "  - name: signer\n    mode: audit", 1)
	if weak == string(orig) {
		t.Fatal("could not weaken the test policy")
	}
	weak = strings.Replace(weak, "version: 1\n", "version: 1\nside_doors: audit\nmodules: audit\n", 1)
	guesttest.StopAgent()
	restore := func() {
		os.WriteFile(guesttest.Dir+"/policy.yaml", orig, 0o644)
		os.WriteFile(guesttest.OperatorPub, origPub, 0o644)
		os.Remove(guesttest.Dir + "/policy.yaml.token")
	}
	defer func() {
		restore()
		if guesttest.Agent == nil || guesttest.Agent.ProcessState != nil {
			if err := guesttest.StartAgent(); err != nil {
				t.Errorf("restart agent with the original policy: %v", err)
			}
		}
	}()
	guesttest.Agent = nil
	if err := os.WriteFile(guesttest.Dir+"/policy.yaml", []byte(weak), 0o644); err != nil {
		t.Fatal(err)
	}
	sha := func(b []byte) string { d := sumHex(b); return d }
	policyClaims := optoken.Claims{Action: optoken.ActionPolicy, Host: guesttest.Hostname(t), Operator: "bob",
		Reason: "audit the signer during migration", PolicySHA256: sha([]byte(weak))}

	// Root swaps in its own operator key and signs the change with it.
	pub, priv, _ := optoken.GenerateKey()
	pemPub, _ := optoken.MarshalPublicKeyPEM(pub)
	os.WriteFile(guesttest.OperatorPub, pemPub, 0o644)
	otherPolicy := policyClaims
	otherPolicy.PolicySHA256 = sha(orig)
	for _, tc := range []struct {
		name  string
		token string // "" = no token file
	}{
		{"no token", ""},
		{"token signed by the swapped-in key", guesttest.SignToken(t, priv, policyClaims)},
		{"token for another policy", guesttest.SignToken(t, guesttest.OperatorKey, otherPolicy)},
	} {
		os.Remove(guesttest.Dir + "/policy.yaml.token")
		if tc.token != "" {
			os.WriteFile(guesttest.Dir+"/policy.yaml.token", []byte(tc.token+"\n"), 0o600)
		}
		before := guesttest.Count()
		out, err := guesttest.RunAgentOnce(t)
		if err == nil || !strings.Contains(out, "changed since they were approved") {
			t.Fatalf("%s: the agent started with an unapproved policy (%v):\n%s", tc.name, err, out)
		}
		guesttest.WaitEventAfter(t, before, "refused health event", func(e guesttest.Event) bool {
			return e.Kind == "health" && e.Health != nil && e.Health.State == "refused"
		})
		if _, res := guesttest.Attack(t, guesttest.ProcBin, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
			t.Fatalf("%s: while the change is refused: %q, want the approved policy enforced", tc.name, res)
		}
	}

	// Signed by the installed key (even though the key file now holds root's key): applied.
	os.WriteFile(guesttest.Dir+"/policy.yaml.token", []byte(guesttest.SignToken(t, guesttest.OperatorKey, policyClaims)), 0o600)
	before := guesttest.Count()
	if err := guesttest.StartAgent(); err != nil {
		t.Fatalf("agent with an approved policy change: %v", err)
	}
	guesttest.WaitEventAfter(t, before, "policy_approved event", func(e guesttest.Event) bool {
		return e.Kind == "health" && e.Health != nil && e.Health.State == "policy_approved" && strings.Contains(e.Health.Message, "bob")
	})
	guesttest.WaitEventAfter(t, before, "operator key mismatch reported", func(e guesttest.Event) bool {
		return e.Kind == "health" && e.Health != nil && strings.Contains(e.Health.Message, "is not the key installed")
	})
	if _, res := guesttest.Attack(t, guesttest.ProcBin, 0, "mem", v.PID, v.PID, v.Addr); !strings.HasPrefix(res, "OK") {
		t.Fatalf("signer rule approved as audit: %q, want OK", res)
	}
	// side_doors: audit and modules: audit report without refusing: kcore opens, and a module load
	// reaches the kernel's own checks (which refuse a file that is no module, but not with EPERM).
	for _, tc := range []struct {
		args     []string
		want, op string
	}{
		{[]string{"open", "/proc/kcore", "r"}, "OK 0", "kcore"},
		{[]string{"finit", guesttest.ProcBin}, "", "module_load"}, // "": whatever the kernel says, but not keyguard's EPERM
	} {
		before := guesttest.Count()
		cmd := exec.Command(guesttest.ProcBin, tc.args...)
		out, _ := cmd.CombinedOutput()
		if got := strings.TrimSpace(string(out)); (tc.want != "" && got != tc.want) || (tc.want == "" && (got == "ERR EPERM" || got == "")) {
			t.Fatalf("audit mode: %v: %q, want %q", tc.args, got, tc.want)
		}
		guesttest.WaitEventAfter(t, before, tc.op+" allowed_audit event", func(e guesttest.Event) bool {
			return e.Kind == "side_door" && e.Operation == tc.op && e.Decision == "allowed_audit" &&
				e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid)
		})
	}

	// Back to the original policy: that is a change too, and needs its own token.
	guesttest.StopAgent()
	guesttest.Agent = nil
	back := policyClaims
	back.PolicySHA256, back.Reason = sha(orig), "migration done, enforce again"
	restore()
	os.WriteFile(guesttest.Dir+"/policy.yaml.token", []byte(guesttest.SignToken(t, guesttest.OperatorKey, back)), 0o600)
	if err := guesttest.StartAgent(); err != nil {
		t.Fatalf("agent back on the original policy: %v", err)
	}
	if _, res := guesttest.Attack(t, guesttest.ProcBin, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
		t.Fatalf("after going back: %q", res)
	}
}

func sumHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// After a reboot the pins are gone and keyguard enforced nothing until the agent started again: the
// first start reports that gap. The reboot is stood in for by the agent's alive record naming another
// boot (a VM reboot would also lose the event log this suite reads).
func TestRebootGapReported(t *testing.T) {
	vmenv.Require(t)
	guesttest.StopAgent()
	guesttest.Agent = nil
	lastSeen := time.Now().Add(-5 * time.Minute).Truncate(time.Second)
	if err := os.WriteFile(guesttest.Dir+"/state/alive", []byte("00000000-1111-2222-3333-444444444444 "+strconv.FormatInt(lastSeen.Unix(), 10)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := guesttest.Count()
	if err := guesttest.StartAgent(); err != nil {
		t.Fatal(err)
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	ev := guesttest.WaitEventAfter(t, before, "health event with a gap", func(e guesttest.Event) bool {
		return e.Kind == "health" && e.Health != nil && e.Health.Gap != nil
	})
	g := ev.Health.Gap
	if g.PreviousBootID != "00000000-1111-2222-3333-444444444444" || g.BootID != strings.TrimSpace(string(boot)) || !g.LastSeen.Equal(lastSeen) {
		t.Fatalf("gap %+v, want previous boot 0000…, this boot %s, last seen %s", g, boot, lastSeen)
	}
	if !strings.Contains(ev.Health.Message, "did not enforce") {
		t.Errorf("health message %q does not explain the gap", ev.Health.Message)
	}
	// A plain restart in the same boot is no gap.
	guesttest.StopAgent()
	before = guesttest.Count()
	if err := guesttest.StartAgent(); err != nil {
		t.Fatal(err)
	}
	for _, e := range guesttest.Since(before) {
		if e.Kind == "health" && e.Health != nil && e.Health.Gap != nil {
			t.Fatalf("restart in the same boot reported a gap: %+v", e.Health.Gap)
		}
	}
}
