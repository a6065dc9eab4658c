package bench

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// TestABSwitch checks the benchmark's two sides: attached, a marked process is unreadable; detached,
// it is readable again. Without this the ratios could compare two identical configurations.
func TestABSwitch(t *testing.T) {
	vmenv.Require(t)
	d := "/sys/fs/bpf/kg_bench_test"
	os.RemoveAll(d)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(d)
	coll, progs := loadAll(t, d)
	defer coll.Close()
	victim := exec.Command("/bin/testproc", "hold")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { victim.Process.Kill(); victim.Wait() }()
	l, err := link.AttachLSM(link.LSMOptions{Program: progs["ptrace_access_check"]})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(victim.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := coll.Maps["marks"].Update(uint32(fd), kgbpf.KeyguardKgMark{RuleId: 1, Reason: 4}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("/bin/testproc", "attack", "mem", fmt.Sprint(victim.Process.Pid)).Output()
	if string(out) != "ERR EACCES\n" {
		t.Fatalf("attached: %q, want ERR EACCES", out)
	}
	l.Close()
	out, _ = exec.Command("/bin/testproc", "attack", "mem", fmt.Sprint(victim.Process.Pid)).Output()
	if string(out) != "OK 0\n" {
		t.Fatalf("detached: %q, want OK 0", out)
	}
}
