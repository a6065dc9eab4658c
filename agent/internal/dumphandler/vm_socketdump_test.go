package dumphandler

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// socketCores starts a minimal socket receiver (testproc corelisten: the initramfs VM has no
// systemd, and Debian 12's systemd 252 predates socket mode) and points core_pattern at it. It skips
// on kernels without socket core dumps (before 6.16: the pattern would name a file "@/...").
func socketCores(t *testing.T, request bool) string {
	t.Helper()
	var u unix.Utsname
	unix.Uname(&u)
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil || major < 6 || major == 6 && minor < 16 {
		t.Skipf("kernel %s has no socket core dumps (6.16)", unix.ByteSliceToString(u.Release[:]))
	}
	cores := guesttest.Dir + "/cores"
	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o777)
	sock := guesttest.Dir + "/core.sock"
	os.Remove(sock)
	cmd := exec.Command(guesttest.ProcBin, "corelisten", sock, cores)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "LISTENING") {
		t.Fatalf("corelisten: %q", line)
	}
	p := "@" + sock
	if request {
		p = "@@" + sock
	}
	guesttest.SetCorePattern(t, p)
	return cores
}

// received waits for the receiver's records (one per connection).
func received(cores string, want int) []string {
	var got []string
	for i := 0; i < 30; i++ {
		got = nil
		ents, _ := os.ReadDir(cores)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") { // a record still being written
				continue
			}
			b, _ := os.ReadFile(filepath.Join(cores, e.Name()))
			got = append(got, strings.TrimSpace(string(b)))
		}
		if len(got) >= want {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return got
}

// Socket core dumps (Linux 6.16): an unprotected dump reaches the receiver whole, a blocked one never
// connects, and a redact rule's dump sent to a socket that is not keyguard's handler (core_pattern
// changed behind keyguard's back) is killed before its first byte. keyguard's own handler is always a
// pipe, so a protected dump never goes to a socket.
func TestDumpSocket(t *testing.T) {
	vmenv.Require(t)
	t.Run("unprotected", func(t *testing.T) {
		cores := socketCores(t, false)
		if ws := guesttest.Crash(t, guesttest.VictimPlain, "-sig", "SEGV"); !ws.Signaled() {
			t.Fatalf("exit %v", ws)
		}
		got := received(cores, 1)
		if len(got) != 1 || !strings.HasSuffix(got[0], " true") || strings.HasPrefix(got[0], "0 ") {
			t.Fatalf("the receiver got %q, want the whole dump with the secret", got)
		}
	})
	t.Run("block", func(t *testing.T) {
		cores := socketCores(t, false)
		before := guesttest.Count()
		guesttest.Crash(t, guesttest.VictimEnforce, "-sig", "SEGV")
		if got := received(cores, 1); len(got) != 0 {
			t.Fatalf("a blocked dump reached the socket: %q", got)
		}
		ev := guesttest.WaitEventAfter(t, before, "blocked event", func(e guesttest.Event) bool { return e.Kind == "core_dump" && e.Rule == "signer" && e.Dump != nil })
		if ev.Dump.Action != "blocked" {
			t.Errorf("action %q, want blocked", ev.Dump.Action)
		}
	})
	// (The @@ request protocol needs a receiver that answers the kernel's coredump_req; the minimal
	// receiver does not, so only @ is tested.)
	for _, request := range []bool{false} {
		t.Run("redact fails closed", func(t *testing.T) {
			cores := socketCores(t, request)
			before := guesttest.Count()
			guesttest.Crash(t, guesttest.VictimRedact, "-sig", "ABRT", "-thread")
			for _, r := range received(cores, 1) {
				if !strings.HasPrefix(r, "0 ") {
					t.Fatalf("dump bytes reached a socket that is not keyguard's handler: %q", r)
				}
			}
			guesttest.WaitEventAfter(t, before, "bad-destination event", func(e guesttest.Event) bool {
				return e.Kind == "core_dump" && e.Dump != nil && e.Rule == "redactor" && strings.Contains(e.Dump.Reason, "not going to keyguard's handler")
			})
		})
	}
}
