package guesttest

import (
	"bytes"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Proc is what the assertions read from a keyguard.v1 Process.
type Proc struct {
	PID        uint32
	TID        uint32
	Comm       string
	Executable string
	UID        uint32
	Cgroup     string
}

// Health is what the assertions read from an AgentHealth.
type Health struct {
	State   string
	Message string
	Posture []Finding
	Gap     *Gap
}

// Finding is a posture finding, as in `keyguard status -json`.
type Finding struct {
	Name        string `json:"name"`
	Value       string `json:"value"`
	Severity    string `json:"severity"`
	Remediation string `json:"remediation"`
}

// Gap is a reboot gap reported in an AgentHealth.
type Gap struct {
	PreviousBootID string
	BootID         string
	LastSeen       time.Time
}

// Event is what the assertions read from a keyguard.v1 event in the agent's log (see view): the kind,
// operation, decision and states by their short lower-case names.
type Event struct {
	Kind       string
	Operation  string
	Decision   string
	Rule       string
	Reason     string
	Detail     string
	AccessMode uint32
	// Attempts is how many attempts an access event stands for: 1, or an in-kernel aggregate's count.
	Attempts uint64
	// LastAccessorPID is an aggregate's last accessor (Accessor is its first); 0 for a single attempt.
	LastAccessorPID uint32
	Accessor        *Proc
	Target          *Proc
	Health          *Health
	Dump            *struct {
		Action string
		Signal uint32
		Reason string
	}
	Loss *struct {
		Source string
		Count  uint64
	}
	BreakGlass *struct {
		Action string
		Reason string
	}
}

// keepEvents bounds the events held in memory: the newest keepEvents..2*keepEvents are kept, older
// ones only counted. A test reads what came after a position it took (Count, Since); no test needs
// more than a few thousand events back (the race test writes tens of thousands in all).
const keepEvents = 1 << 15

// eventLog holds the events parsed so far from the append-only event log, so that each poll parses
// only what the agent wrote since the last one (late in a suite the log holds tens of thousands of
// events, and parsing all of them on every poll took minutes under TCG).
var eventLog struct {
	sync.Mutex
	ino    uint64
	offset int64
	base   int // events dropped from the front of events
	events []Event
}

// Count returns how many events the agent's log holds (format version 2: a header line, then one
// protojson keyguard.v1.Event per line): the position to pass to Since or WaitEventAfter.
func Count() int {
	refresh()
	eventLog.Lock()
	defer eventLog.Unlock()
	return eventLog.base + len(eventLog.events)
}

// Since returns the events from position n on (as far as they are still held).
func Since(n int) []Event {
	refresh()
	c := &eventLog
	c.Lock()
	defer c.Unlock()
	i := min(max(n-c.base, 0), len(c.events))
	return c.events[i:len(c.events):len(c.events)]
}

// ReadEvents returns the events held: every event of the log unless the suite wrote more than
// keepEvents of them, then the newest. Use Count and Since for positions.
func ReadEvents() []Event { return Since(0) }

func refresh() {
	c := &eventLog
	c.Lock()
	defer c.Unlock()
	f, err := os.Open(EventsLog)
	if err != nil {
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return
	}
	if ino := st.Sys().(*syscall.Stat_t).Ino; ino != c.ino || st.Size() < c.offset {
		c.ino, c.offset, c.base, c.events = ino, 0, 0, nil
	}
	if _, err := f.Seek(c.offset, io.SeekStart); err != nil {
		return
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return
	}
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return
	}
	for i, line := range bytes.Split(data[:end], []byte("\n")) {
		if c.offset == 0 && i == 0 {
			if string(line) != `{"keyguard_event_log":2}` {
				return
			}
			continue
		}
		ev := &keyguardv1.Event{}
		if protojson.Unmarshal(line, ev) == nil {
			c.events = append(c.events, view(ev))
		}
	}
	c.offset += int64(end + 1)
	if drop := len(c.events) - keepEvents; drop >= keepEvents {
		c.events = append([]Event(nil), c.events[drop:]...)
		c.base += drop
	}
}

// short is an enum value's name without its prefix, in lower case: DECISION_DENIED -> denied.
func short(v interface{ String() string }, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(v.String(), prefix))
}

func procOf(p *keyguardv1.Process) *Proc {
	if p == nil {
		return nil
	}
	return &Proc{PID: p.GetPid(), TID: p.GetTid(), Comm: p.GetComm(), Executable: p.GetExePath(), UID: p.GetUid(), Cgroup: p.GetCgroupPath()}
}

var reasonNames = map[keyguardv1.ProtectionReason]string{
	keyguardv1.ProtectionReason_PROTECTION_REASON_KEY_FILE_OPEN: "key_file",
	keyguardv1.ProtectionReason_PROTECTION_REASON_PROCFS_SCAN:   "procfs_scan",
}

func reasonOf(r keyguardv1.ProtectionReason) string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return short(r, "PROTECTION_REASON_")
}

// view reads the fields the assertions check from ev. A memory access's operation is the API's
// operation, or the agent's word for it that leads the detail (proc_read, exec_traced, ...); a side
// door's operation is the first word of its detail.
func view(ev *keyguardv1.Event) Event {
	var e Event
	switch k := ev.GetKind().(type) {
	case *keyguardv1.Event_MemoryAccess:
		m := k.MemoryAccess
		e.Kind, e.Operation, e.Decision, e.Rule = "access", short(m.GetOperation(), "ACCESS_OPERATION_"), short(m.GetDecision(), "DECISION_"), m.GetRule()
		e.AccessMode, e.Accessor, e.Target, e.Detail = m.GetAccessMode(), procOf(m.GetAccessor()), procOf(m.GetTarget()), m.GetDetail()
		e.Attempts = max(m.GetCount(), 1)
		e.LastAccessorPID = m.GetLastAccessorPid()
		e.Reason = reasonOf(m.GetTargetReason())
		if note, rest, _ := strings.Cut(m.GetDetail(), ": "); e.Operation == "other" || note == "proc_read" || note == "proc_link" {
			e.Operation, e.Detail = note, rest
		}
		if m.GetProcPath() != "" {
			e.Detail = m.GetProcPath()
		}
	case *keyguardv1.Event_ProtectionChange:
		p := k.ProtectionChange
		e.Kind, e.Rule, e.Detail, e.Target = "protect", p.GetRule(), p.GetDetail(), procOf(p.GetProcess())
		e.Reason = reasonOf(p.GetReason())
	case *keyguardv1.Event_CoreDump:
		d := k.CoreDump
		e.Kind, e.Rule, e.Target = "core_dump", d.GetRule(), procOf(d.GetProcess())
		e.Dump = &struct {
			Action string
			Signal uint32
			Reason string
		}{short(d.GetAction(), "CORE_DUMP_ACTION_"), uint32(d.GetSignal()), d.GetReason()}
		if d.GetAction() == keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_UNSPECIFIED {
			e.Dump.Action = "to_handler" // the kernel's report; the handler's own event follows
		}
	case *keyguardv1.Event_SideDoor:
		sd := k.SideDoor
		e.Kind, e.Decision, e.Rule = "side_door", short(sd.GetDecision(), "DECISION_"), sd.GetRule()
		e.Operation, e.Detail, _ = strings.Cut(sd.GetDetail(), " ")
		e.Accessor, e.Target = procOf(sd.GetAccessor()), procOf(sd.GetTarget())
	case *keyguardv1.Event_KeyFileAccess:
		kf := k.KeyFileAccess
		e.Kind, e.Decision, e.Rule = "key_file", short(kf.GetDecision(), "DECISION_"), kf.GetRule()
		e.Operation, e.Detail = short(kf.GetOperation(), "KEY_FILE_OPERATION_"), kf.GetPath()
		e.Accessor = procOf(kf.GetProcess())
	case *keyguardv1.Event_AgentHealth:
		e.Kind = "health"
		e.Health = healthView(k.AgentHealth)
	case *keyguardv1.Event_LossReport:
		e.Kind = "loss"
		src := map[keyguardv1.LossSource]string{keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER: "kernel_ringbuf",
			keyguardv1.LossSource_LOSS_SOURCE_AGENT_QUEUE: "agent_queue"}[k.LossReport.GetSource()]
		e.Loss = &struct {
			Source string
			Count  uint64
		}{src, k.LossReport.GetCount()}
	case *keyguardv1.Event_BreakGlass:
		e.Kind = "break_glass"
		e.BreakGlass = &struct {
			Action string
			Reason string
		}{short(k.BreakGlass.GetState(), "BREAK_GLASS_STATE_"), k.BreakGlass.GetReason()}
	}
	return e
}

func healthView(h *keyguardv1.AgentHealth) *Health {
	out := &Health{State: short(h.GetState(), "AGENT_STATE_"), Message: h.GetDetail()}
	for _, f := range h.GetFindings() {
		out.Posture = append(out.Posture, Finding{Name: f.GetName(), Value: f.GetValue(),
			Severity: short(f.GetSeverity(), "SEVERITY_"), Remediation: f.GetRemediation()})
	}
	if g := h.GetGap(); g != nil {
		out.Gap = &Gap{g.GetPreviousBootId(), g.GetBootId(), g.GetLapseStartTime().AsTime()}
	}
	return out
}

// WaitEvent waits until an event matching pred is in the log (the agent flushes every 200 ms).
func WaitEvent(t *testing.T, what string, pred func(Event) bool) Event {
	t.Helper()
	return WaitEventAfter(t, 0, what, pred)
}

// WaitEventAfter is WaitEvent for events from position skip on (see Count).
func WaitEventAfter(t *testing.T, skip int, what string, pred func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range Since(skip) {
			if pred(ev) {
				return ev
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Show what did arrive, to tell a missing event from a different one.
	t.Fatalf("no event: %s (log has %d parsed events, last lines:\n%s)", what, Count(), strings.Join(lastLines(EventsLog, 4), "\n"))
	return Event{}
}

// lastLines returns up to n last lines of the file at path, reading only its end.
func lastLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(st.Size()-64<<10, 0)
	buf := make([]byte, st.Size()-off)
	f.ReadAt(buf, off)
	lines := strings.Split(strings.TrimSpace(string(buf)), "\n")
	return lines[max(len(lines)-n, 0):]
}
