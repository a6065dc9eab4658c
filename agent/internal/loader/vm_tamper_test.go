package loader

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// Root, but not keyguard, tries what bpftool would do to switch keyguard off: every attempt is
// refused, reported, and protection stays.
func TestTamperRefused(t *testing.T) {
	vmenv.Require(t)
	v := guesttest.StartVictim(t, guesttest.VictimEnforce, 0)
	eperm := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, syscall.EPERM) {
			t.Errorf("%s: got %v, want EPERM", what, err)
		}
	}
	before := guesttest.Count()
	links, _ := filepath.Glob(guesttest.PinPath + "/links/*/kg_ptrace_access_check")
	if len(links) != 1 {
		t.Fatalf("pinned links: %v", links)
	}
	eperm("unlink a link pin", os.Remove(links[0]))
	eperm("unlink a map pin", os.Remove(guesttest.PinPath+"/marks"))
	eperm("rmdir the pin folder", syscall.Rmdir(filepath.Dir(links[0])))
	eperm("rename the pin folder", os.Rename(guesttest.PinPath, "/sys/fs/bpf/moved"))
	eperm("rename a pin", os.Rename(guesttest.PinPath+"/rules", guesttest.PinPath+"/rules2"))
	eperm("umount bpffs", syscall.Unmount("/sys/fs/bpf", 0))

	_, err := ebpf.LoadPinnedMap(guesttest.PinPath+"/marks", nil)
	eperm("open a map for writing", err)
	ro, err := ebpf.LoadPinnedMap(guesttest.PinPath+"/rules", &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Errorf("read-only open of a map: %v (reading is allowed)", err)
	} else {
		info, _ := ro.Info()
		id, _ := info.ID()
		ro.Close()
		_, err = ebpf.NewMapFromID(id)
		eperm("map fd by id", err)
	}
	l, err := link.LoadPinnedLink(links[0], nil)
	if err != nil {
		t.Fatalf("open the pinned link (allowed; detaching is not): %v", err)
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	eperm("detach the link", l.Detach())
	eperm("unpin the link", l.Unpin())
	l.Close()
	_, err = link.NewFromID(info.ID)
	eperm("link fd by id", err)
	_, err = ebpf.NewProgramFromID(info.Program)
	eperm("program fd by id", err)

	if _, res := guesttest.Attack(t, guesttest.ProcBin, 0, "mem", v.PID, v.PID, v.Addr); res != "ERR EACCES" {
		t.Fatalf("after the tamper attempts: %q, want ERR EACCES", res)
	}
	for _, op := range []string{"keyguard_pin_unlink", "keyguard_map_write", "keyguard_link_detach", "keyguard_link_fd", "keyguard_prog_fd"} {
		guesttest.WaitEventAfter(t, before, op+" event by this test, denied", func(e guesttest.Event) bool {
			return e.Kind == "side_door" && e.Operation == op && e.Decision == "denied" &&
				e.Accessor != nil && e.Accessor.PID == uint32(os.Getpid())
		})
	}
	// The agent itself is protected.
	if _, res := guesttest.Attack(t, guesttest.ProcBin, 0, "mem", guesttest.Agent.Process.Pid, guesttest.Agent.Process.Pid, ""); res != "ERR EACCES" {
		t.Errorf("reading the agent's memory: %q, want ERR EACCES", res)
	}
}
