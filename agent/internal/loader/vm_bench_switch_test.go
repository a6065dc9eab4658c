package loader

import (
	"fmt"
	"os/exec"
	"testing"

	"github.com/keyguard/keyguard/testvm/vmenv"
)

// TestABSwitch checks the benchmark's two sides: attached, a marked process is unreadable; detached,
// it is readable again. Without this the ratios could compare two identical configurations.
func TestABSwitch(t *testing.T) {
	vmenv.Require(t)
	g := benchLoad(t)
	pid := g.protectedVictim(t)
	g.attachAll(t)
	out, _ := exec.Command("/bin/testproc", "attack", "mem", fmt.Sprint(pid)).Output()
	if string(out) != "ERR EACCES\n" {
		t.Fatalf("attached: %q, want ERR EACCES", out)
	}
	g.detachAll()
	out, _ = exec.Command("/bin/testproc", "attack", "mem", fmt.Sprint(pid)).Output()
	if string(out) != "OK 0\n" {
		t.Fatalf("detached: %q, want OK 0", out)
	}
}
