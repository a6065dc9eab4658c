package policy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

func fileop(t *testing.T, args ...string) string { t.Helper(); return guesttest.FileOp(t, args...) }

// TestKeyFileOnlyForHolders: root, by every alias of the redactor rule's key file, is refused (EPERM) and
// reported; every metadata change is refused; the rule's own process still loads its key after all of it.
func TestKeyFileOnlyForHolders(t *testing.T) {
	vmenv.Require(t)
	before := guesttest.Count()
	v := guesttest.StartVictim(t, guesttest.HolderExe, 0, "-keyfile", guesttest.HolderKey)
	v.Kill()

	os.MkdirAll(guesttest.Dir+"/bind", 0o755)
	if err := syscall.Mount(filepath.Dir(guesttest.HolderKey), guesttest.Dir+"/bind", "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	defer syscall.Unmount(guesttest.Dir+"/bind", syscall.MNT_DETACH)

	for _, tc := range []struct{ name string }{
		{"read " + guesttest.HolderKey},
		{"read " + guesttest.Dir + "/bind/h.pem"},
		{"read /proc/1/root" + guesttest.HolderKey},
		{"read /proc/self/root" + guesttest.HolderKey},
		{"opath-reopen " + guesttest.HolderKey},
		{"handle " + guesttest.HolderKey},
		{"write " + guesttest.HolderKey},
		{"link " + guesttest.HolderKey + " " + guesttest.Dir + "/hkeys/alias.pem"},
		{"link " + guesttest.HolderKey + " " + guesttest.Dir + "/alias.pem"},
		{"rename " + guesttest.HolderKey + " " + guesttest.Dir + "/hkeys/moved.pem"},
		{"unlink " + guesttest.HolderKey},
		{"truncate " + guesttest.HolderKey},
		{"chmod " + guesttest.HolderKey},
		{"chown " + guesttest.HolderKey},
		{"setxattr " + guesttest.HolderKey},
		{"removexattr " + guesttest.HolderKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fileop(t, strings.Fields(tc.name)...); got != "ERR EPERM" {
				t.Errorf("%s as root: %s, want ERR EPERM", tc.name, got)
			}
		})
	}
	// A file renamed over the key file would replace it.
	other := guesttest.Dir + "/hkeys-other.pem"
	os.WriteFile(other, []byte("x"), 0o644)
	defer os.Remove(other)
	if got := fileop(t, "rename", other, guesttest.HolderKey); got != "ERR EPERM" {
		t.Errorf("rename over the key file: %s, want ERR EPERM", got)
	}
	if b, err := os.ReadFile(guesttest.HolderKey); err != nil || !strings.Contains(string(b), "holder") {
		t.Fatalf("key file changed: %q %v", b, err)
	}
	// The rule's own process still loads its key.
	v = guesttest.StartVictim(t, guesttest.HolderExe, 0, "-keyfile", guesttest.HolderKey)
	v.Kill()
	guesttest.WaitEventAfter(t, before, "key_file open denied", func(e guesttest.Event) bool {
		return e.Kind == "key_file" && e.Operation == "open" && e.Decision == "denied" && e.Rule == "redactor" &&
			e.Accessor != nil && strings.HasSuffix(e.Accessor.Executable, "testproc")
	})
	guesttest.WaitEventAfter(t, before, "key_file link denied", func(e guesttest.Event) bool {
		return e.Kind == "key_file" && e.Operation == "link" && e.Decision == "denied"
	})
}

// TestKeyManagerAllowed: the policy's key manager (the test binary) may open, link and unlink key files,
// and is not marked by the open (its children, later tests' victims, would inherit the mark).
func TestKeyManagerAllowed(t *testing.T) {
	vmenv.Require(t)
	before := guesttest.Count()
	b, err := os.ReadFile(guesttest.HolderKey)
	if err != nil || !strings.Contains(string(b), "holder") {
		t.Fatalf("key manager read: %q %v", b, err)
	}
	alias := guesttest.Dir + "/hkeys/managed.pem"
	if err := os.Link(guesttest.HolderKey, alias); err != nil {
		t.Fatalf("key manager link: %v", err)
	}
	if err := os.Remove(alias); err != nil {
		t.Fatalf("key manager unlink: %v", err)
	}
	guesttest.WaitEventAfter(t, before, "key manager allowed", func(e guesttest.Event) bool {
		return e.Kind == "key_file" && e.Decision == "allowed_policy" && e.Operation == "link"
	})
}

// TestSignerRewriteRefused: the redactor rule's executable cannot be written in place, truncated, renamed
// over or unlinked by root; the package manager (the test binary) may write it.
func TestSignerRewriteRefused(t *testing.T) {
	vmenv.Require(t)
	for _, args := range [][]string{{"write", guesttest.HolderExe}, {"truncate", guesttest.HolderExe}, {"unlink", guesttest.HolderExe},
		{"rename", guesttest.HolderExe, guesttest.HolderExe + ".old"}, {"link", guesttest.HolderExe, guesttest.HolderExe + ".alias"}} {
		if got := fileop(t, args...); got != "ERR EPERM" {
			t.Errorf("%v as root: %s, want ERR EPERM", args, got)
		}
	}
	other := guesttest.Dir + "/not-a-signer"
	guesttest.CopyFile(guesttest.ProcBin, other)
	defer os.Remove(other)
	if got := fileop(t, "rename", other, guesttest.HolderExe); got != "ERR EPERM" {
		t.Errorf("rename over the signer: %s, want ERR EPERM", got)
	}
	f, err := os.OpenFile(guesttest.HolderExe, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("package manager write open: %v", err)
	}
	f.Close()
}

// TestAgentBinaryOverwriteWhileDown: kill -9 the agent, overwrite its executable in place: refused by
// the pinned programs with no agent running; the binary is unchanged and still the trusted one.
func TestAgentBinaryOverwriteWhileDown(t *testing.T) {
	vmenv.Require(t)
	guesttest.Agent.Process.Kill()
	guesttest.Agent.Wait()
	defer func() {
		if err := guesttest.StartAgent(); err != nil {
			t.Fatalf("restart agent: %v", err)
		}
	}()
	for _, args := range [][]string{{"write", guesttest.AgentBin}, {"truncate", guesttest.AgentBin}} {
		if got := fileop(t, args...); got != "ERR EPERM" {
			t.Errorf("%v with the agent down: %s, want ERR EPERM", args, got)
		}
	}
	// The test binary is a key and package manager but not keyguard: refused too.
	if _, err := os.OpenFile(guesttest.AgentBin, os.O_WRONLY, 0); err == nil {
		t.Error("write open of the agent binary by root succeeded")
	}
	if err := os.Truncate(guesttest.AgentBin, 0); err == nil {
		t.Error("truncate of the agent binary by root succeeded")
	}
}

// TestKeyOpenRace: 1,000 fresh processes open a keyholder key file right after exec (the rule's openers
// are "any": they become protected by that open) and copy the key into memory, each under a reader hammering it by
// process_vm_readv (native, and 32-bit through int 0x80 where the kernel runs ia32 calls), fresh
// /proc/PID/mem fds and /proc/PID/mem fds kept from before the open. No read may return the key.
func TestKeyOpenRace(t *testing.T) {
	vmenv.Require(t)
	n := 1000
	if s := os.Getenv("KEYGUARD_RACE_N"); s != "" {
		fmt.Sscan(s, &n)
	}
	// The agent brackets process_vm_readv by the end its probe chose for this kernel: fexit/process_vm_rw
	// (6.12, 7.3) or fexit on every syscall entry (6.1). "none" would leave that path out of the wait.
	end := guesttest.VMRWEnd(t)
	if end == "none" || end == "" {
		t.Fatalf("the agent traces no end of process_vm_readv on this kernel (vm_rw_end %q)", end)
	}
	modes := []string{"vmreadv", "mem", "kept"}
	if guesttest.Compat32() {
		modes = append(modes, "vmreadv32") // the ia32 entry (int 0x80, compat iovecs)
	}
	t.Logf("process_vm_rw end %s; racing by %v", end, modes)
	leaks, killed, retries, loaded := map[string]int{}, 0, 0, 0
	start := time.Now()
	for i := 0; i < n; i++ {
		mode := modes[i%len(modes)]
		cmd := exec.Command(guesttest.ProcBin, "race-read", mode, guesttest.RacerExe, guesttest.RacerKey)
		out, err := cmd.Output()
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) > 0 && f[0] == "LEAK":
				leaks[mode]++
			case len(f) > 1 && f[0] == "LOADED":
				loaded++
				var r int
				fmt.Sscanf(f[1], "retries=%d", &r)
				retries += r
			}
		}
		if ee, ok := err.(*exec.ExitError); ok && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
			killed++ // keyguard killed the reader before a copy
		}
		if (i+1)%100 == 0 {
			fmt.Printf("race: %d/%d in %s, leaks %v, killed %d, retries %d\n", i+1, n, time.Since(start).Round(time.Second), leaks, killed, retries)
		}
	}
	t.Logf("%d fresh processes in %s: %d loaded the key, leaks %v, readers killed before a copy %d, EAGAIN retries %d",
		n, time.Since(start).Round(time.Second), loaded, leaks, killed, retries)
	if loaded < n*9/10 {
		t.Errorf("only %d of %d racers loaded their key", loaded, n)
	}
	for mode, l := range leaks {
		if l > 0 {
			t.Errorf("%s: %d of %d processes leaked their key", mode, l, n)
		}
	}
}

// TestKeyDirMoved: root renames the folder holding a key file, so the policy's glob no longer matches
// it; the file is still the same inode and stays refused after the agent has re-resolved the policy.
func TestKeyDirMoved(t *testing.T) {
	vmenv.Require(t)
	from, to := filepath.Dir(guesttest.HolderKey), filepath.Dir(guesttest.HolderKey)+"-moved"
	got := fileop(t, "rename", from, to)
	defer func() {
		if _, err := os.Stat(to); err == nil {
			if err := os.Rename(to, from); err != nil {
				t.Errorf("rename back: %v", err)
			}
		}
	}()
	if !strings.HasPrefix(got, "OK") {
		t.Fatalf("rename the key folder: %s", got)
	}
	time.Sleep(2 * time.Second) // the watcher re-resolves within milliseconds
	moved := filepath.Join(to, filepath.Base(guesttest.HolderKey))
	for _, op := range []string{"read", "opath-reopen", "unlink"} {
		if got := fileop(t, op, moved); got != "ERR EPERM" {
			t.Errorf("%s of the moved key file as root: %s, want ERR EPERM", op, got)
		}
	}
}
