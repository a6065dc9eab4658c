package guard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
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

// TestOneShotAttackersAccounted: while the agent is stopped, a loop of one-shot attacker processes of one
// executable (fork+exec per attempt, then fork without exec per attempt) attacks one protected process:
// more processes than the ring buffer holds events (about 1,300). The kernel aggregates them by
// executable and uid, not by process, so after the restart the events account for every attempt exactly
// (one event naming the first process, one aggregate counting the rest with the processes and the last
// one's pid), with no loss event and no event lost in the kernel.
func TestOneShotAttackersAccounted(t *testing.T) {
	if agent == nil || agent.ProcessState != nil {
		if err := startAgent(); err != nil {
			t.Fatal(err)
		}
	}
	lostBefore := kernelLost(t)
	v := startVictim(t, victimEnforce, 0)
	stopAgent()
	off := logSize(t)
	type loop struct {
		mode                      string
		max, secs                 int
		made, denied, other, last int
		took                      time.Duration
	}
	loops := []*loop{{mode: "exec", max: 300, secs: 30}, {mode: "fork", max: 2_500, secs: 45}}
	var made, last int
	for _, l := range loops {
		start := time.Now()
		out, err := exec.Command(procBin, "spawn-attack", l.mode, strconv.Itoa(l.max), strconv.Itoa(v.pid), strconv.Itoa(l.secs)).Output()
		if err != nil {
			t.Fatalf("spawn-attack %s: %v: %s", l.mode, err, out)
		}
		l.took = time.Since(start)
		if _, err := fmt.Sscanf(string(out), "MADE %d DENIED %d OTHER %d LAST %d", &l.made, &l.denied, &l.other, &l.last); err != nil {
			t.Fatalf("spawn-attack %s said %q: %v", l.mode, out, err)
		}
		if l.other != 0 || l.denied != l.made {
			t.Fatalf("spawn-attack %s: %d processes, %d denied, %d not (want all denied with EPERM)", l.mode, l.made, l.denied, l.other)
		}
		made, last = made+l.made, l.last
	}
	if made <= 1_500 {
		t.Fatalf("only %d attacker processes (exec %d, fork %d): want more than the ring buffer holds events", made, loops[0].made, loops[1].made)
	}
	if err := startAgent(); err != nil {
		t.Fatal(err)
	}
	var got []*keyguardv1.MemoryAccess
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		got = nil
		for _, ev := range rawEventsFrom(t, off) {
			if m := ev.GetMemoryAccess(); m != nil && int(m.GetTarget().GetPid()) == v.pid {
				got = append(got, m)
			}
		}
		if attempts(got) >= uint64(made) {
			break
		}
	}
	var losses []string
	for _, ev := range rawEventsFrom(t, off) {
		if l := ev.GetLossReport(); l != nil {
			losses = append(losses, fmt.Sprintf("%v %d", l.GetSource(), l.GetCount()))
		}
	}
	lostAfter := kernelLost(t)
	var processes uint64
	var lastPID uint32
	for _, m := range got {
		if m.GetAccessor().GetExePath() != procBin || m.GetOperation() != keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH ||
			m.GetDecision() != keyguardv1.Decision_DECISION_DENIED {
			t.Errorf("unexpected event: %v", m)
		}
		if m.GetCount() > 1 {
			processes, lastPID = processes+m.GetAccessorProcesses(), m.GetLastAccessorPid()
		}
	}
	for _, l := range loops {
		t.Logf("ONESHOT %s: %d attacker processes in %v (%.1f ms each)", l.mode, l.made, l.took.Round(time.Millisecond), float64(l.took.Microseconds())/1000/float64(max(l.made, 1)))
	}
	t.Logf("ONESHOT %d attempts by %d processes while the agent was down: %d events counting %d attempts, aggregate processes %d, last pid %d (want %d), loss events %v, kernel lost %d -> %d",
		made, made, len(got), attempts(got), processes, lastPID, last, losses, lostBefore, lostAfter)
	if attempts(got) != uint64(made) || len(losses) != 0 || lostAfter != lostBefore {
		t.Fatalf("accounting: %d attempts, events count %d, loss events %v, kernel lost %d -> %d", made, attempts(got), losses, lostBefore, lostAfter)
	}
	if len(got) > 3 {
		t.Errorf("%d events for one loop of one-shot attackers, want it aggregated (at most a few)", len(got))
	}
	// The processes started one after another: each is counted, the first one's event included.
	if processes != uint64(made) || lastPID != uint32(last) {
		t.Errorf("aggregate: %d processes, last pid %d; want %d and %d", processes, lastPID, made, last)
	}
}

// kernelLost is the kernel's count of events lost to a full ring buffer, from `keyguard status`.
func kernelLost(t *testing.T) uint64 {
	t.Helper()
	out, err := exec.Command(cliBin, "status", "-socket", ctlSock, "-json").Output()
	if err != nil {
		t.Fatalf("keyguard status: %v", err)
	}
	var st struct {
		KernelLost uint64 `json:"kernel_lost"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v: %s", err, out)
	}
	return st.KernelLost
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
