package dumphandler

import (
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

// freshCores empties the cores folder and points core_pattern into it: a file "core" or a pipe helper
// that writes the byte count and whether the secret was there into "pipe".
func freshCores(t *testing.T, pattern string) {
	t.Helper()
	cores := guesttest.Dir + "/cores"
	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o777)
	if pattern == "file" {
		guesttest.SetCorePattern(t, cores+"/core")
	} else {
		guesttest.SetCorePattern(t, "|/bin/testproc corecount "+cores+"/pipe")
	}
}

var crashSignals = []struct {
	name string
	sig  syscall.Signal
}{{"SEGV", syscall.SIGSEGV}, {"ABRT", syscall.SIGABRT}, {"QUIT", syscall.SIGQUIT}}

// Blocked dumps leave no bytes anywhere: no core file with a file pattern, no helper started with a
// pipe pattern, for every signal, from the main thread and another thread.
func TestDumpBlocked(t *testing.T) {
	vmenv.Require(t)
	os.MkdirAll(guesttest.Dir+"/cwd", 0o777)
	cores := guesttest.Dir + "/cores"
	for _, pattern := range []string{"file", "pipe"} {
		for _, s := range crashSignals {
			for _, thread := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/thread=%v", pattern, s.name, thread)
				t.Run(name, func(t *testing.T) {
					os.RemoveAll(cores)
					os.MkdirAll(cores, 0o777)
					if pattern == "file" {
						guesttest.SetCorePattern(t, cores+"/core.%p")
					} else {
						guesttest.SetCorePattern(t, "|/bin/testproc corecount "+cores+"/pipe.%p")
					}
					args := []string{"-sig", s.name}
					if thread {
						args = append(args, "-thread")
					}
					before := guesttest.Count()
					ws := guesttest.Crash(t, guesttest.VictimEnforce, args...)
					if !ws.Signaled() || ws.Signal() != s.sig {
						t.Fatalf("exit status %v, want death by %v", ws, s.sig)
					}
					if ws.CoreDump() {
						t.Errorf("the kernel reports a core dump was written")
					}
					time.Sleep(300 * time.Millisecond) // a pipe helper would have started by now
					if ents, _ := os.ReadDir(cores); len(ents) != 0 {
						t.Fatalf("dump bytes left: %v", guesttest.Names(ents))
					}
					ev := guesttest.WaitEventAfter(t, before, "core_dump blocked event", func(e guesttest.Event) bool {
						return e.Kind == "core_dump" && e.Dump != nil && e.Dump.Signal == uint32(s.sig)
					})
					if ev.Dump.Action != "blocked" || ev.Rule != "signer" || ev.Target == nil || ev.Target.Executable != guesttest.VictimEnforce {
						t.Errorf("event: %+v dump %+v", ev, ev.Dump)
					}
				})
			}
		}
	}
}

// A forked child of a protected process (running an unprotected executable) is protected too.
func TestDumpBlockedForkedChild(t *testing.T) {
	vmenv.Require(t)
	cores := guesttest.Dir + "/cores"
	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o777)
	guesttest.SetCorePattern(t, cores+"/core.%p")
	cmd := exec.Command(guesttest.VictimEnforce, "crash", "-sig", "SEGV", "-spawn", guesttest.VictimPlain)
	cmd.Dir = guesttest.Dir + "/cwd"
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CHILD signal: segmentation fault") {
		t.Fatalf("spawned crasher: %v: %s", err, out)
	}
	if ents, _ := os.ReadDir(cores); len(ents) != 0 {
		t.Fatalf("dump of the forked child left: %v", guesttest.Names(ents))
	}
}

// An unprotected process's dump is untouched: the file and the pipe helper get it all.
func TestDumpUnprotectedUntouched(t *testing.T) {
	vmenv.Require(t)
	cores := guesttest.Dir + "/cores"
	for _, pattern := range []string{"file", "pipe"} {
		t.Run(pattern, func(t *testing.T) {
			freshCores(t, pattern)
			ws := guesttest.Crash(t, guesttest.VictimPlain, "-sig", "SEGV")
			if !ws.CoreDump() {
				t.Fatalf("no core dump for an unprotected process: %v", ws)
			}
			var b []byte
			for i := 0; i < 50; i++ {
				ents, _ := os.ReadDir(cores)
				if len(ents) == 1 {
					b, _ = os.ReadFile(filepath.Join(cores, ents[0].Name()))
					if len(b) > 0 {
						break
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			if pattern == "file" && !strings.Contains(string(b), "KEYGUARD-TEST-SECRET") {
				t.Fatalf("core file (%d bytes) lacks the process's memory", len(b))
			}
			if pattern == "pipe" && !strings.HasSuffix(strings.TrimSpace(string(b)), "true") {
				t.Fatalf("pipe helper saw %q", b)
			}
		})
	}
}

// A rule that wants redaction: while core_pattern does not lead to keyguard's handler (here a file
// pattern and a foreign pipe helper), the dump is stopped before its first byte.
func TestDumpRedactFailsClosed(t *testing.T) {
	vmenv.Require(t)
	cores := guesttest.Dir + "/cores"
	for _, pattern := range []string{"file", "pipe"} {
		t.Run(pattern, func(t *testing.T) {
			freshCores(t, pattern)
			guesttest.Crash(t, guesttest.VictimRedact, "-sig", "ABRT", "-thread")
			time.Sleep(300 * time.Millisecond)
			ents, _ := os.ReadDir(cores)
			for _, e := range ents {
				b, _ := os.ReadFile(filepath.Join(cores, e.Name()))
				if pattern == "file" && len(b) != 0 || pattern == "pipe" && !strings.HasPrefix(string(b), "0 ") {
					t.Fatalf("%s: dump bytes reached a destination that is not keyguard's handler: %q (%d bytes)", e.Name(), b[:min(len(b), 40)], len(b))
				}
			}
			guesttest.WaitEvent(t, "bad-destination event", func(e guesttest.Event) bool {
				return e.Kind == "core_dump" && e.Dump != nil && e.Rule == "redactor" && strings.Contains(e.Dump.Reason, "not going to keyguard's handler")
			})
		})
	}
}

// With a redact rule the agent installs itself as the core_pattern handler and hands every dump on
// to the pattern it replaced: unprotected dumps unchanged, protected ones only when they could be made
// safe (a protected dump that cannot be redacted is discarded and reported).
func TestDumpHandlerChains(t *testing.T) {
	vmenv.Require(t)
	cores := guesttest.Dir + "/cores"
	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o777)
	guesttest.StopAgent()
	t.Cleanup(func() { // last: once core_pattern is back, an agent that chains to no test helper
		guesttest.StopAgent()
		if err := guesttest.StartAgent(); err != nil {
			t.Errorf("restart the agent: %v", err)
		}
	})
	guesttest.SetCorePattern(t, "|/bin/testproc corecount "+cores+"/prev.%p")
	if err := guesttest.StartAgent(); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(guesttest.CorePattern)
	if !strings.HasPrefix(string(cur), "|/bin/keyguard-agent dump-handler ") {
		t.Fatalf("core_pattern after agent start: %q", cur)
	}

	ws := guesttest.Crash(t, guesttest.VictimPlain, "-sig", "SEGV")
	if !ws.CoreDump() {
		t.Fatalf("unprotected crash: %v", ws)
	}
	var got []byte
	for i := 0; i < 50 && len(got) == 0; i++ {
		ents, _ := os.ReadDir(cores)
		for _, e := range ents {
			got, _ = os.ReadFile(filepath.Join(cores, e.Name()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(got)), " true") {
		t.Fatalf("the previous pipe handler got %q for an unprotected dump, want all of it", got)
	}

	os.RemoveAll(cores)
	os.MkdirAll(cores, 0o777)
	guesttest.Crash(t, guesttest.VictimRedact, "-sig", "SEGV")
	ev := guesttest.WaitEvent(t, "handler's event for the protected dump", func(e guesttest.Event) bool {
		return e.Kind == "core_dump" && e.Rule == "redactor" && e.Dump != nil && (e.Dump.Action == "discarded" || e.Dump.Action == "redacted")
	})
	if ev.Dump.Action == "discarded" {
		time.Sleep(300 * time.Millisecond)
		if ents, _ := os.ReadDir(cores); len(ents) != 0 {
			t.Fatalf("a discarded protected dump reached the previous handler: %v", guesttest.Names(ents))
		}
	}
}
