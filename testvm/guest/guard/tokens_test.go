package guard

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"
)

var (
	operatorPub = dir + "/operator.pub"
	operatorKey ed25519.PrivateKey // the operator's key, installed as operatorPub
	strangerKey ed25519.PrivateKey // anyone else's
)

func writeOperatorKey() error {
	pub, priv, err := optoken.GenerateKey()
	if err != nil {
		return err
	}
	operatorKey = priv
	if _, strangerKey, err = optoken.GenerateKey(); err != nil {
		return err
	}
	b, err := optoken.MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	return os.WriteFile(operatorPub, b, 0o644)
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func signToken(t *testing.T, key ed25519.PrivateKey, c optoken.Claims) string {
	t.Helper()
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now().Add(-time.Second)
		c.ExpiresAt = c.IssuedAt.Add(time.Hour)
	}
	tok, err := optoken.Sign(key, c)
	if err != nil {
		t.Fatalf("sign %+v: %v", c, err)
	}
	return tok
}

func withStdin(cmd *exec.Cmd, s string) *exec.Cmd {
	cmd.Stdin = strings.NewReader(s)
	return cmd
}

func breakGlass(tok string) ([]byte, error) {
	return withStdin(exec.Command(cliBin, "break-glass", "-socket", ctlSock, "-token-file", "-"), tok).CombinedOutput()
}

func uninstallWith(tok string) ([]byte, error) {
	return withStdin(exec.Command(agentBin, "uninstall", "-socket", ctlSock, "-token-file", "-"), tok).CombinedOutput()
}

// runAgentOnce starts the agent expecting it to refuse, and returns its output.
func runAgentOnce(t *testing.T, extra ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(agentBin, append([]string{"run", "-policy", dir + "/policy.yaml", "-events", eventsLog,
		"-state-dir", dir + "/state", "-control-socket", ctlSock, "-operator-key", operatorPub}, extra...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the agent did not refuse within 60 s: %s", out)
	}
	return string(out), err
}

// A changed policy (here: the signer rule switched to audit) is not applied without a policy token
// signed by the installed operator key; the pinned, approved policy keeps being enforced meanwhile. An
// operator key file swapped by root does not help: the key pinned at install stays in force.
func TestPolicyChangeNeedsToken(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	orig, err := os.ReadFile(dir + "/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	origPub, err := os.ReadFile(operatorPub)
	if err != nil {
		t.Fatal(err)
	}
	weak := strings.Replace(string(orig), "  - name: signer\n    mode: enforce", "  - name: signer\n    mode: audit", 1)
	if weak == string(orig) {
		t.Fatal("could not weaken the test policy")
	}
	weak = strings.Replace(weak, "version: 1\n", "version: 1\nside_doors: audit\nmodules: audit\n", 1)
	stopAgent()
	restore := func() {
		os.WriteFile(dir+"/policy.yaml", orig, 0o644)
		os.WriteFile(operatorPub, origPub, 0o644)
		os.Remove(dir + "/policy.yaml.token")
	}
	defer func() {
		restore()
		if agent == nil || agent.ProcessState != nil {
			if err := startAgent(); err != nil {
				t.Errorf("restart agent with the original policy: %v", err)
			}
		}
	}()
	agent = nil
	if err := os.WriteFile(dir+"/policy.yaml", []byte(weak), 0o644); err != nil {
		t.Fatal(err)
	}
	sha := func(b []byte) string { d := sumHex(b); return d }
	policyClaims := optoken.Claims{Action: optoken.ActionPolicy, Host: hostname(t), Operator: "bob",
		Reason: "audit the signer during migration", PolicySHA256: sha([]byte(weak))}

	// Root swaps in its own operator key and signs the change with it.
	pub, priv, _ := optoken.GenerateKey()
	pemPub, _ := optoken.MarshalPublicKeyPEM(pub)
	os.WriteFile(operatorPub, pemPub, 0o644)
	otherPolicy := policyClaims
	otherPolicy.PolicySHA256 = sha(orig)
	for _, tc := range []struct {
		name  string
		token string // "" = no token file
	}{
		{"no token", ""},
		{"token signed by the swapped-in key", signToken(t, priv, policyClaims)},
		{"token for another policy", signToken(t, operatorKey, otherPolicy)},
	} {
		os.Remove(dir + "/policy.yaml.token")
		if tc.token != "" {
			os.WriteFile(dir+"/policy.yaml.token", []byte(tc.token+"\n"), 0o600)
		}
		before := len(readEvents())
		out, err := runAgentOnce(t)
		if err == nil || !strings.Contains(out, "changed since they were approved") {
			t.Fatalf("%s: the agent started with an unapproved policy (%v):\n%s", tc.name, err, out)
		}
		waitEventAfter(t, before, "refused health event", func(e event) bool {
			return e.Kind == "health" && e.Health != nil && e.Health.State == "refused"
		})
		if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
			t.Fatalf("%s: while the change is refused: %q, want the approved policy enforced", tc.name, res)
		}
	}

	// Signed by the installed key (even though the key file now holds root's key): applied.
	os.WriteFile(dir+"/policy.yaml.token", []byte(signToken(t, operatorKey, policyClaims)), 0o600)
	before := len(readEvents())
	if err := startAgent(); err != nil {
		t.Fatalf("agent with an approved policy change: %v", err)
	}
	waitEventAfter(t, before, "policy_approved event", func(e event) bool {
		return e.Kind == "health" && e.Health != nil && e.Health.State == "policy_approved" && strings.Contains(e.Health.Message, "bob")
	})
	waitEventAfter(t, before, "operator key mismatch reported", func(e event) bool {
		return e.Kind == "health" && e.Health != nil && strings.Contains(e.Health.Message, "is not the key installed")
	})
	if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); !strings.HasPrefix(res, "OK") {
		t.Fatalf("signer rule approved as audit: %q, want OK", res)
	}
	// side_doors: audit and modules: audit report without refusing: kcore opens, and a module load
	// reaches the kernel's own checks (which refuse a file that is no module, but not with EPERM).
	for _, tc := range []struct {
		args     []string
		want, op string
	}{
		{[]string{"open", "/proc/kcore", "r"}, "OK 0", "kcore"},
		{[]string{"finit", procBin}, "", "module_load"}, // "": whatever the kernel says, but not keyguard's EPERM
	} {
		before := len(readEvents())
		cmd := exec.Command(procBin, tc.args...)
		out, _ := cmd.CombinedOutput()
		if got := strings.TrimSpace(string(out)); (tc.want != "" && got != tc.want) || (tc.want == "" && (got == "ERR EPERM" || got == "")) {
			t.Fatalf("audit mode: %v: %q, want %q", tc.args, got, tc.want)
		}
		waitEventAfter(t, before, tc.op+" allowed_audit event", func(e event) bool {
			return e.Kind == "side_door" && e.Operation == tc.op && e.Decision == "allowed_audit" &&
				e.Accessor != nil && e.Accessor.PID == uint32(cmd.Process.Pid)
		})
	}

	// Back to the original policy: that is a change too, and needs its own token.
	stopAgent()
	agent = nil
	back := policyClaims
	back.PolicySHA256, back.Reason = sha(orig), "migration done, enforce again"
	restore()
	os.WriteFile(dir+"/policy.yaml.token", []byte(signToken(t, operatorKey, back)), 0o600)
	if err := startAgent(); err != nil {
		t.Fatalf("agent back on the original policy: %v", err)
	}
	if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
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
	stopAgent()
	agent = nil
	lastSeen := time.Now().Add(-5 * time.Minute).Truncate(time.Second)
	if err := os.WriteFile(dir+"/state/alive", []byte("00000000-1111-2222-3333-444444444444 "+strconv.FormatInt(lastSeen.Unix(), 10)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := len(readEvents())
	if err := startAgent(); err != nil {
		t.Fatal(err)
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	ev := waitEventAfter(t, before, "health event with a gap", func(e event) bool {
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
	stopAgent()
	before = len(readEvents())
	if err := startAgent(); err != nil {
		t.Fatal(err)
	}
	for _, e := range readEvents()[before:] {
		if e.Kind == "health" && e.Health != nil && e.Health.Gap != nil {
			t.Fatalf("restart in the same boot reported a gap: %+v", e.Health.Gap)
		}
	}
}
