package guard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Issue 13: precision (what an access exposes decides how it is treated) and aggregation in the kernel
// (an attack loop is one event with a count, exactly, also while the agent is down).

// logSize is the event log's current size: rawEventsFrom(logSize()) reads only what comes after.
func logSize(t *testing.T) int64 {
	t.Helper()
	st, err := os.Stat(eventsLog)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// rawEventsFrom parses the full keyguard.v1 events of the log after byte offset off (complete lines).
func rawEventsFrom(t *testing.T, off int64) []*keyguardv1.Event {
	t.Helper()
	f, err := os.Open(eventsLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.LastIndexByte(data, '\n')
	var out []*keyguardv1.Event
	if end < 0 {
		return nil
	}
	for _, line := range bytes.Split(data[:end], []byte("\n")) {
		ev := &keyguardv1.Event{}
		if protojson.Unmarshal(line, ev) == nil {
			out = append(out, ev)
		}
	}
	return out
}

// accessesBy are the memory-access events after off by accessor pid on target pid.
func accessesBy(t *testing.T, off int64, accessor, target int) []*keyguardv1.MemoryAccess {
	var out []*keyguardv1.MemoryAccess
	for _, ev := range rawEventsFrom(t, off) {
		if m := ev.GetMemoryAccess(); m != nil && int(m.GetAccessor().GetPid()) == accessor && int(m.GetTarget().GetPid()) == target {
			out = append(out, m)
		}
	}
	return out
}

// attempts is what a list of access events stands for: each counts 1, an aggregate its count.
func attempts(ms []*keyguardv1.MemoryAccess) uint64 {
	var n uint64
	for _, m := range ms {
		n += max(m.GetCount(), 1)
	}
	return n
}

// TestAggregatedWhileAgentDown: 100,000 denied ptrace attaches while the agent is stopped are accounted
// exactly once it runs again: the first as an event of its own, the rest in one aggregate with a count,
// and no loss event.
func TestAggregatedWhileAgentDown(t *testing.T) {
	const n = 100_000
	if agent == nil || agent.ProcessState != nil {
		if err := startAgent(); err != nil {
			t.Fatal(err)
		}
	}
	v := startVictim(t, victimEnforce, 0)
	stopAgent()
	off := logSize(t)
	start := time.Now()
	denied := 0
	for i := 0; i < n; i++ {
		_, _, errno := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, uintptr(v.pid), 0)
		if errno != syscall.EPERM {
			t.Fatalf("attempt %d: ptrace attach: %v, want EPERM", i, errno)
		}
		denied++
	}
	loop := time.Since(start)
	if err := startAgent(); err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	var got []*keyguardv1.MemoryAccess
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		got = accessesBy(t, off, me, v.pid)
		if attempts(got) >= n {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var losses []string
	for _, ev := range rawEventsFrom(t, off) {
		if l := ev.GetLossReport(); l != nil {
			losses = append(losses, fmt.Sprintf("%v %d", l.GetSource(), l.GetCount()))
		}
	}
	var aggregates int
	for _, m := range got {
		if m.GetOperation() != keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH || m.GetDecision() != keyguardv1.Decision_DECISION_DENIED ||
			m.GetAccessClass() != keyguardv1.AccessClass_ACCESS_CLASS_MEMORY {
			t.Errorf("unexpected event: %v", m)
		}
		if m.GetCount() > 1 {
			aggregates++
			if m.GetFirstTime() == nil || m.GetLastTime() == nil || m.GetLastTime().AsTime().Before(m.GetFirstTime().AsTime()) {
				t.Errorf("aggregate without a sane first/last time: %v", m)
			}
		}
	}
	t.Logf("AGG %d denied attempts in %v (%.1f µs each) while the agent was down: %d events (%d aggregates) counting %d attempts, loss events %v",
		denied, loop.Round(time.Millisecond), float64(loop.Microseconds())/n, len(got), aggregates, attempts(got), losses)
	if attempts(got) != n || len(losses) != 0 {
		t.Fatalf("accounting: %d attempts, events count %d, loss events %v", n, attempts(got), losses)
	}
	if len(got) > 3 {
		t.Errorf("%d events for one attack loop, want it aggregated (at most a few)", len(got))
	}
}

// TestPrecision: metadata reads of a protected process by a process that is not keyguard's are allowed
// and reported below warning; reads of its memory (directly, through its fds, or through its root link)
// are still denied and reported at warning or above.
func TestPrecision(t *testing.T) {
	if agent == nil || agent.ProcessState != nil {
		if err := startAgent(); err != nil {
			t.Fatal(err)
		}
	}
	v := startVictim(t, victimEnforce, 0)
	off := logSize(t)
	p := fmt.Sprintf("/proc/%d", v.pid)

	// Metadata: the links' targets, stat, the binary through exe, a directory through root and cwd,
	// attr/current (journald), the fd links' names (ls -l /proc/PID/fd).
	for _, l := range []string{"exe", "cwd", "root", "fd/0", "ns/mnt"} {
		if _, err := os.Readlink(p + "/" + l); err != nil {
			t.Errorf("readlink %s/%s: %v", p, l, err)
		}
		if _, err := os.Stat(p + "/" + l); err != nil && l != "fd/0" {
			t.Errorf("stat %s/%s: %v", p, l, err)
		}
	}
	if b, err := readHead(p + "/exe"); err != nil || !bytes.HasPrefix(b, []byte("\x7fELF")) {
		t.Errorf("open %s/exe (the binary on disk): %q, %v", p, b, err)
	}
	if _, err := os.ReadDir(p + "/root/tmp"); err != nil {
		t.Errorf("list %s/root/tmp: %v", p, err)
	}
	if _, err := os.ReadDir(p + "/cwd"); err != nil {
		t.Errorf("list %s/cwd: %v", p, err)
	}
	if f, err := os.Open(p + "/attr/current"); err != nil {
		t.Errorf("open %s/attr/current: %v", p, err)
	} else {
		f.Close()
	}

	// Memory and secrets: still refused, however they are reached.
	for _, path := range []string{p + "/mem", p + "/environ", p + "/auxv", p + "/fd/0",
		p + "/root" + p + "/mem"} { // through the root link: the mem file is checked on its own
		f, err := os.Open(path)
		if err == nil {
			f.Close()
			t.Errorf("open %s succeeded, want it refused", path)
		} else if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
			t.Errorf("open %s: %v, want EACCES", path, err)
		}
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, uintptr(v.pid), 0); errno != syscall.EPERM {
		t.Errorf("ptrace attach: %v, want EPERM", errno)
	}

	// The events: metadata at info (class metadata, allowed), memory at warning or above (denied).
	me := os.Getpid()
	var meta, mem []*keyguardv1.Event
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		meta, mem = nil, nil
		for _, ev := range rawEventsFrom(t, off) {
			m := ev.GetMemoryAccess()
			if m == nil || int(m.GetAccessor().GetPid()) != me || int(m.GetTarget().GetPid()) != v.pid {
				continue
			}
			if m.GetAccessClass() == keyguardv1.AccessClass_ACCESS_CLASS_METADATA {
				meta = append(meta, ev)
			} else {
				mem = append(mem, ev)
			}
		}
		if attempts(views(mem)) >= 6 && len(meta) > 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, ev := range meta {
		m := ev.GetMemoryAccess()
		if ev.GetSeverity() >= keyguardv1.Severity_SEVERITY_MEDIUM || m.GetDecision() == keyguardv1.Decision_DECISION_DENIED {
			t.Errorf("metadata access reported at %v, %v: %v", ev.GetSeverity(), m.GetDecision(), m)
		}
	}
	var denied []string
	for _, ev := range mem {
		m := ev.GetMemoryAccess()
		if ev.GetSeverity() < keyguardv1.Severity_SEVERITY_MEDIUM || m.GetDecision() != keyguardv1.Decision_DECISION_DENIED {
			t.Errorf("memory access reported at %v, %v: %v", ev.GetSeverity(), m.GetDecision(), m)
		}
		denied = append(denied, strings.TrimSpace(m.GetOperation().String()+" "+m.GetProcPath()))
	}
	t.Logf("metadata events %d (info), memory events %d: %v", len(meta), len(mem), denied)
	if len(meta) == 0 || attempts(views(mem)) < 6 {
		t.Fatalf("want metadata events and 6 memory attempts, got %d and %d", len(meta), attempts(views(mem)))
	}
}

// TestPrecisionDenyMetadata: with -deny-metadata, metadata reads are decided like memory reads (denied,
// reported below warning); the default agent allows them again.
func TestPrecisionDenyMetadata(t *testing.T) {
	stopAgent()
	if err := startAgent("-deny-metadata"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stopAgent()
		if err := startAgent(); err != nil {
			t.Fatal(err)
		}
		v := startVictim(t, victimEnforce, 0)
		if _, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", v.pid)); err != nil {
			t.Errorf("default agent again: readlink exe: %v", err)
		}
	}()
	v := startVictim(t, victimEnforce, 0)
	off := logSize(t)
	if _, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", v.pid)); !errors.Is(err, unix.EACCES) {
		t.Fatalf("readlink exe with -deny-metadata: %v, want EACCES", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range rawEventsFrom(t, off) {
			m := ev.GetMemoryAccess()
			if m == nil || int(m.GetTarget().GetPid()) != v.pid || int(m.GetAccessor().GetPid()) != os.Getpid() {
				continue
			}
			if m.GetAccessClass() != keyguardv1.AccessClass_ACCESS_CLASS_METADATA || m.GetDecision() != keyguardv1.Decision_DECISION_DENIED ||
				ev.GetSeverity() >= keyguardv1.Severity_SEVERITY_MEDIUM {
				t.Fatalf("denied metadata read reported as %v %v at %v", m.GetAccessClass(), m.GetDecision(), ev.GetSeverity())
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("no event for the denied metadata read")
}

func views(evs []*keyguardv1.Event) []*keyguardv1.MemoryAccess {
	out := make([]*keyguardv1.MemoryAccess, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.GetMemoryAccess())
	}
	return out
}

func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 4)
	_, err = io.ReadFull(f, b)
	return b, err
}
