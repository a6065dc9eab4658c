package dumphandler

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// Redacted dumps reach the replaced pattern (file or pipe) without any encoding of the keys the
// process held, and still parse as an ELF core with all its threads.
func TestDumpRedacted(t *testing.T) {
	vmenv.Require(t)
	cores := guesttest.Dir + "/cores"
	// An unredacted dump of the same program with the same keys holds them: the search works.
	t.Run("control", func(t *testing.T) {
		os.RemoveAll(cores)
		os.MkdirAll(cores, 0o777)
		guesttest.SetCorePattern(t, cores+"/plain")
		guesttest.Crash(t, guesttest.VictimPlain, "-sig", "SEGV", "-keys", guesttest.TestKeysDir)
		b, _ := os.ReadFile(cores + "/plain")
		if len(guesttest.Leaks(b)) == 0 {
			t.Fatalf("an unprotected dump (%d bytes) holds none of the key encodings: the search is broken", len(b))
		}
	})
	for _, pattern := range []string{"file", "pipe"} {
		guesttest.StopAgent()
		os.RemoveAll(cores)
		os.MkdirAll(cores, 0o777)
		if pattern == "file" {
			guesttest.SetCorePattern(t, cores+"/core.%p")
		} else {
			guesttest.SetCorePattern(t, "|/bin/testproc coresave "+cores+"/pipe.%p")
		}
		if err := guesttest.StartAgent(); err != nil {
			t.Fatal(err)
		}
		// Each signal with each pattern; threads and a forked child spread over them (a redaction takes
		// seconds under TCG, mostly the raw EC/Ed25519 search).
		cases := map[string][]struct {
			sig    string
			thread bool
			spawn  bool
		}{
			"file": {{"SEGV", false, false}, {"ABRT", true, false}, {"QUIT", false, true}},
			"pipe": {{"SEGV", true, false}, {"ABRT", false, true}, {"QUIT", false, false}},
		}[pattern]
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/%s/thread=%v/child=%v", pattern, c.sig, c.thread, c.spawn), func(t *testing.T) {
				args := []string{"-sig", c.sig, "-keys", guesttest.TestKeysDir}
				if c.thread {
					args = append(args, "-thread")
				}
				exe := guesttest.VictimRedact
				cmd := exec.Command(exe, append([]string{"crash"}, args...)...)
				if c.spawn {
					cmd = exec.Command(exe, append([]string{"crash", "-spawn", guesttest.VictimPlain}, args...)...)
				}
				cmd.Dir = guesttest.Dir + "/cwd"
				out, _ := cmd.CombinedOutput()
				var pid, threads int
				for _, l := range strings.Split(string(out), "\n") {
					if strings.HasPrefix(l, "CRASHING") {
						fmt.Sscanf(l, "CRASHING pid=%d keys=%d threads=%d", &pid, new(int), &threads)
					}
				}
				if pid == 0 {
					t.Fatalf("crasher said %q", out)
				}
				name := fmt.Sprintf("%s/core.%d", cores, pid)
				if pattern == "pipe" {
					name = fmt.Sprintf("%s/pipe.%d", cores, pid)
				}
				ev := guesttest.WaitEvent(t, "redacted event", func(e guesttest.Event) bool {
					return e.Kind == "core_dump" && e.Target != nil && e.Target.PID == uint32(pid) && e.Dump != nil &&
						(e.Dump.Action == "redacted" || e.Dump.Action == "discarded")
				})
				if ev.Dump.Action != "redacted" {
					t.Fatalf("dump of pid %d: %s (%s)", pid, ev.Dump.Action, ev.Dump.Reason)
				}
				b, err := os.ReadFile(name)
				if err != nil || len(b) == 0 {
					t.Fatalf("redacted dump at the replaced pattern: %v (%d bytes)", err, len(b))
				}
				if l := guesttest.Leaks(b); len(l) > 0 {
					t.Fatalf("redacted dump still holds %v", l)
				}
				f, err := elf.NewFile(bytes.NewReader(b))
				if err != nil || f.Type != elf.ET_CORE {
					t.Fatalf("redacted dump is not an ELF core: %v", err)
				}
				// At least every thread the crasher counted: the Go runtime may start one more between its
				// count and the signal, but a redaction must never drop a thread's notes.
				if n := countThreads(f); n < threads {
					t.Errorf("redacted core has %d threads, the process had %d", n, threads)
				}
			})
		}
	}
}

// countThreads counts NT_PRSTATUS notes, one per thread.
func countThreads(f *elf.File) int {
	n := 0
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		p.ReadAt(b, 0)
		for len(b) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(b[0:]))
			descsz := int(binary.LittleEndian.Uint32(b[4:]))
			typ := binary.LittleEndian.Uint32(b[8:])
			if typ == 1 { // NT_PRSTATUS
				n++
			}
			adv := 12 + (namesz+3)&^3 + (descsz+3)&^3
			if adv > len(b) {
				break
			}
			b = b[adv:]
		}
	}
	return n
}
