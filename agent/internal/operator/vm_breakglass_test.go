package operator

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/proto/optoken"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

func TestBreakGlass(t *testing.T) {
	vmenv.Require(t)
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, 0)
	tool := guesttest.Dir + "/breakglass-tool"
	if err := guesttest.CopyFile(guesttest.ProcBin, tool); err != nil {
		t.Fatal(err)
	}
	if _, res := guesttest.Attack(t, tool, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
		t.Fatalf("before the grant: %q", res)
	}
	uid := int64(0)
	grant := optoken.Claims{Action: optoken.ActionBreakGlass, Host: guesttest.Hostname(t), Operator: "alice",
		Reason: "incident 42: inspect a hung signer", Rule: "signer", Executable: tool, UID: &uid, Duration: "3s"}
	tok := guesttest.SignToken(t, guesttest.OperatorKey, grant)
	out, err := guesttest.BreakGlass(tok)
	if err != nil {
		t.Fatalf("break-glass: %v: %s", err, out)
	}
	guesttest.WaitEvent(t, "break-glass granted event", func(e guesttest.Event) bool {
		return e.Kind == "break_glass" && e.BreakGlass != nil && e.BreakGlass.Action == "granted" &&
			e.BreakGlass.Reason == "incident 42: inspect a hung signer"
	})
	apid, res := guesttest.Attack(t, tool, 0, "mem", v.PID, v.PID, v.Addr)
	if !strings.HasPrefix(res, "OK") {
		t.Fatalf("during the grant: %q, want OK", res)
	}
	guesttest.WaitEvent(t, "allowed_break_glass event", func(e guesttest.Event) bool {
		return e.Kind == "access" && e.Accessor != nil && e.Accessor.PID == uint32(apid) && e.Decision == "allowed_break_glass"
	})
	time.Sleep(3500 * time.Millisecond)
	if _, res := guesttest.Attack(t, tool, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
		t.Fatalf("after the grant expired: %q", res)
	}
	guesttest.WaitEvent(t, "break-glass expired event", func(e guesttest.Event) bool {
		return e.Kind == "break_glass" && e.BreakGlass != nil && e.BreakGlass.Action == "expired"
	})
	// Refused: the same token again, a token for another host, one signed by another key, none at all.
	grant.Host = "another-host"
	for name, tok := range map[string]string{"reused": tok, "other host": guesttest.SignToken(t, guesttest.OperatorKey, grant), "other key": guesttest.SignToken(t, guesttest.StrangerKey, grant)} {
		before := guesttest.Count()
		if out, err := guesttest.BreakGlass(tok); err == nil {
			t.Fatalf("break-glass with a %s token was accepted: %s", name, out)
		}
		guesttest.WaitEventAfter(t, before, "break_glass_refused event", func(e guesttest.Event) bool {
			return e.Kind == "side_door" && e.Operation == "break_glass_refused" && e.Decision == "denied"
		})
	}
	if out, err := exec.Command(guesttest.CLIBin, "break-glass", "-socket", guesttest.CtlSock).CombinedOutput(); err == nil {
		t.Fatalf("break-glass without a token was accepted: %s", out)
	}
	if _, res := guesttest.Attack(t, tool, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
		t.Fatalf("after refused grants: %q", res)
	}
}
