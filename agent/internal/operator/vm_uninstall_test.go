package operator

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// uninstall goes through the running agent: it records who and why, restores core_pattern, removes
// every pin and stops; protection ends once the kernel has released the links.
func TestUninstall(t *testing.T) {
	vmenv.Require(t)
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, 0)
	if out, err := exec.Command(guesttest.AgentBin, "uninstall", "-socket", guesttest.CtlSock).CombinedOutput(); err == nil {
		t.Fatalf("uninstall without a token succeeded: %s", out)
	}
	c := optoken.Claims{Action: optoken.ActionUninstall, Host: guesttest.Hostname(t), Operator: "alice", Reason: "decommissioning signer-01"}
	wrongAction := c
	wrongAction.Action = optoken.ActionPolicy
	wrongAction.PolicySHA256 = strings.Repeat("00", 32)
	otherHost := c
	otherHost.Host = "signer-02"
	expired := c
	expired.IssuedAt, expired.ExpiresAt = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	for name, tok := range map[string]string{
		"signed by another key": guesttest.SignToken(t, guesttest.StrangerKey, c),
		"for another host":      guesttest.SignToken(t, guesttest.OperatorKey, otherHost),
		"expired":               guesttest.SignToken(t, guesttest.OperatorKey, expired),
		"for another action":    guesttest.SignToken(t, guesttest.OperatorKey, wrongAction),
		"garbage":               "kgt1.e30.AAAA",
	} {
		before := guesttest.Count()
		if out, err := guesttest.UninstallWith(tok); err == nil {
			t.Fatalf("uninstall with a token %s succeeded: %s", name, out)
		}
		guesttest.WaitEventAfter(t, before, "uninstall_refused event ("+name+")", func(e guesttest.Event) bool {
			return e.Kind == "side_door" && e.Operation == "uninstall_refused" && e.Decision == "denied"
		})
		if _, res := guesttest.Attack(t, guesttest.ProcBin, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
			t.Fatalf("after a refused uninstall (%s): %q", name, res)
		}
	}
	out, err := guesttest.UninstallWith(guesttest.SignToken(t, guesttest.OperatorKey, c))
	if err != nil {
		t.Fatalf("uninstall: %v: %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- guesttest.Agent.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not stop after uninstall")
	}
	guesttest.Agent = nil
	if _, err := os.Stat(guesttest.PinPath); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after uninstall: %v", guesttest.PinPath, err)
	}
	if cp, _ := os.ReadFile(guesttest.CorePattern); strings.Contains(string(cp), "dump-handler") {
		t.Errorf("core_pattern still keyguard's after uninstall: %q", cp)
	}
	guesttest.WaitEvent(t, "uninstalled event", func(e guesttest.Event) bool {
		return e.Kind == "health" && e.Health != nil && e.Health.State == "uninstalled" &&
			strings.Contains(e.Health.Message, "alice") && strings.Contains(e.Health.Message, "decommissioning signer-01")
	})
	// The kernel detaches a link whose last reference went away from a workqueue, a moment later (more
	// than 2 s once, on a loaded machine).
	var res string
	for i := 0; i < 200; i++ {
		if _, res = guesttest.Attack(t, guesttest.ProcBin, 0, "mem", v.PID, v.PID, v.Addr); strings.HasPrefix(res, "OK") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.HasPrefix(res, "OK") {
		t.Fatalf("after uninstall: %q, want OK", res)
	}
}
