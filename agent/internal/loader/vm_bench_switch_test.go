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
	victim := exec.Command("/bin/testproc", "hold")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { victim.Process.Kill(); victim.Wait() }()
	if err := g.Mark(victim.Process.Pid, 1, 4); err != nil {
		t.Fatal(err)
	}
	g.attachAll(t)
	out, _ := exec.Command("/bin/testproc", "attack", "mem", fmt.Sprint(victim.Process.Pid)).Output()
	if string(out) != "ERR EACCES\n" {
		t.Fatalf("attached: %q, want ERR EACCES", out)
	}
	g.detachAll()
	out, _ = exec.Command("/bin/testproc", "attack", "mem", fmt.Sprint(victim.Process.Pid)).Output()
	if string(out) != "OK 0\n" {
		t.Fatalf("detached: %q, want OK 0", out)
	}
}
