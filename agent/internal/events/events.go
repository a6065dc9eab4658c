// Package events turns what keyguard's BPF programs report into agent events: it reads the ring
// buffer, decodes the C-defined records (bpf2go types), names rules, executables and cgroups, and counts
// kernel-side loss so that none is silent.
package events

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/keyguard/keyguard/agent/internal/posture"
	kgbpf "github.com/keyguard/keyguard/bpf"
)

// Kinds of agent events.
const (
	KindAccess     = "access"
	KindProtect    = "protect"
	KindLoss       = "loss"
	KindHealth     = "health"
	KindBreakGlass = "break_glass"
	KindDump       = "core_dump"
	KindSideDoor   = "side_door"
	KindKeyFile    = "key_file"
)

// keyOpNames name what was attempted on a guarded file (Event.Operation of key_file events).
var keyOpNames = map[kgbpf.KeyguardKgKeyOp]string{
	kgbpf.KeyguardKgKeyOpKG_KEY_OPEN:      "open",
	kgbpf.KeyguardKgKeyOpKG_KEY_LINK:      "link",
	kgbpf.KeyguardKgKeyOpKG_KEY_RENAME:    "rename",
	kgbpf.KeyguardKgKeyOpKG_KEY_UNLINK:    "unlink",
	kgbpf.KeyguardKgKeyOpKG_KEY_TRUNCATE:  "truncate",
	kgbpf.KeyguardKgKeyOpKG_KEY_CHMOD:     "chmod",
	kgbpf.KeyguardKgKeyOpKG_KEY_CHOWN:     "chown",
	kgbpf.KeyguardKgKeyOpKG_KEY_XATTR:     "xattr",
	kgbpf.KeyguardKgKeyOpKG_KEY_WRITE:     "write",
	kgbpf.KeyguardKgKeyOpKG_KEY_OPEN_BUSY: "open_busy",
}

var guardedNames = map[kgbpf.KeyguardKgGuarded]string{
	kgbpf.KeyguardKgGuardedKG_GUARD_KEY_FILE:   "key_file",
	kgbpf.KeyguardKgGuardedKG_GUARD_SIGNER_EXE: "signer_executable",
	kgbpf.KeyguardKgGuardedKG_GUARD_AGENT_EXE:  "agent_executable",
}

var tamperNames = map[kgbpf.KeyguardKgTamper]string{
	kgbpf.KeyguardKgTamperKG_TAMPER_MAP_WRITE:   "keyguard_map_write",
	kgbpf.KeyguardKgTamperKG_TAMPER_PROG_FD:     "keyguard_prog_fd",
	kgbpf.KeyguardKgTamperKG_TAMPER_LINK_FD:     "keyguard_link_fd",
	kgbpf.KeyguardKgTamperKG_TAMPER_LINK_DETACH: "keyguard_link_detach",
	kgbpf.KeyguardKgTamperKG_TAMPER_PIN_UNLINK:  "keyguard_pin_unlink",
	kgbpf.KeyguardKgTamperKG_TAMPER_PIN_RENAME:  "keyguard_pin_rename",
	kgbpf.KeyguardKgTamperKG_TAMPER_UMOUNT:      "keyguard_bpffs_umount",
	kgbpf.KeyguardKgTamperKG_TAMPER_EXE_WRITE:   "keyguard_exe_write",
}

// Process identifies an accessor or a target.
type Process struct {
	PID        uint32 `json:"pid"`
	TID        uint32 `json:"tid"`
	Comm       string `json:"comm"`
	Executable string `json:"executable"`
	ExeDev     uint64 `json:"exe_dev"`
	ExeIno     uint64 `json:"exe_ino"`
	UID        uint32 `json:"uid"`
	EUID       uint32 `json:"euid"`
	Cgroup     string `json:"cgroup,omitempty"`
	CgroupID   uint64 `json:"cgroup_id"`
}

// Event is one agent event. Exactly one of the kind-specific parts is set, matching Kind.
type Event struct {
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`

	// Access and protect events.
	Operation       string   `json:"operation,omitempty"`
	Decision        string   `json:"decision,omitempty"`
	Rule            string   `json:"rule,omitempty"`
	RuleID          uint32   `json:"rule_id,omitempty"` // set by the dump handler; the agent names it
	RuleMode        string   `json:"rule_mode,omitempty"`
	AccessMode      uint32   `json:"access_mode,omitempty"`
	AccessModeNames []string `json:"access_mode_names,omitempty"`
	Reason          string   `json:"reason,omitempty"`
	Syscall         int32    `json:"syscall,omitempty"`
	Detail          string   `json:"detail,omitempty"`
	Accessor        *Process `json:"accessor,omitempty"`
	Target          *Process `json:"target,omitempty"`

	Dump       *Dump       `json:"dump,omitempty"`
	KeyFile    *KeyFile    `json:"key_file,omitempty"`
	Loss       *Loss       `json:"loss,omitempty"`
	Health     *Health     `json:"health,omitempty"`
	BreakGlass *BreakGlass `json:"break_glass,omitempty"`
}

// Dump reports what happened to a protected process's core dump.
type Dump struct {
	// Action: blocked (no bytes anywhere), allowed (rule allows dumps), to_handler (streaming to
	// keyguard's redacting handler), redacted, discarded (the handler could not make it safe).
	Action string `json:"action"`
	Signal uint32 `json:"signal"`
	Reason string `json:"reason,omitempty"`
	// Set by the handler for redacted dumps.
	Destination     string            `json:"destination,omitempty"`
	RedactedBytes   map[string]uint64 `json:"redacted_bytes,omitempty"`
	VerifierVerdict string            `json:"verifier_verdict,omitempty"`
}

// KeyFile names the guarded file of a key_file event: a key file, a listed executable or keyguard's
// own executable, by device (kernel encoding) and inode, with the name it was reached by.
type KeyFile struct {
	Guarded string `json:"guarded"` // key_file, signer_executable, agent_executable
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Name    string `json:"name"`
}

// Loss reports events that were dropped before reaching the agent's output.
type Loss struct {
	Source string `json:"source"` // kernel_ringbuf, agent_queue
	Count  uint64 `json:"count"`
}

// Health reports the agent's state and the host's posture.
type Health struct {
	State              string    `json:"state"` // started, adopted, running (posture changed), stopping, uninstalled
	Version            string    `json:"version"`
	Kernel             string    `json:"kernel"`
	LSMActive          bool      `json:"lsm_active"`
	EnforcementPinned  bool      `json:"enforcement_pinned"`
	ProtectedProcesses int       `json:"protected_processes"`
	Posture            []Finding `json:"posture,omitempty"`
	Message            string    `json:"message,omitempty"`
	// Gap is set on the first start after a reboot: protection lapsed in between.
	Gap *Gap `json:"gap,omitempty"`
}

// Gap is a time without keyguard: the host rebooted since the agent last ran.
type Gap struct {
	PreviousBootID string    `json:"previous_boot_id"`
	BootID         string    `json:"boot_id"`
	LastSeen       time.Time `json:"last_seen"` // the previous boot's agent was last seen alive
	BootTime       time.Time `json:"boot_time"`
	Resumed        time.Time `json:"resumed"`
}

// Finding is one posture item (see package posture).
type Finding = posture.Finding

// BreakGlass reports a time-limited exception for one accessor.
type BreakGlass struct {
	Action     string    `json:"action"` // granted, expired, revoked
	Operator   string    `json:"operator"`
	Executable string    `json:"executable"`
	UID        int64     `json:"uid"` // -1: any
	Rule       string    `json:"rule"`
	Reason     string    `json:"reason"`
	Expires    time.Time `json:"expires"`
	GrantID    uint64    `json:"grant_id"`
}

// kmemNames names the kernel-memory side doors by the device opened (MKDEV(major, minor) as the kernel
// encodes it; 0 is /proc/kcore).
var kmemNames = map[uint32]string{0: "kcore", 1<<20 | 1: "dev_mem", 1<<20 | 2: "dev_kmem", 1<<20 | 4: "dev_port"}

// Decisions as reported in events.
var decisionNames = map[kgbpf.KeyguardKgDecision]string{
	kgbpf.KeyguardKgDecisionKG_DECISION_DENIED:              "denied",
	kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_AUDIT:       "allowed_audit",
	kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_POLICY:      "allowed_policy",
	kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_BREAK_GLASS: "allowed_break_glass",
}

var opNames = map[kgbpf.KeyguardKgOp]string{
	kgbpf.KeyguardKgOpKG_OP_OTHER:             "other",
	kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH:     "ptrace_attach",
	kgbpf.KeyguardKgOpKG_OP_PTRACE_SEIZE:      "ptrace_seize",
	kgbpf.KeyguardKgOpKG_OP_PROCESS_VM_READV:  "process_vm_readv",
	kgbpf.KeyguardKgOpKG_OP_PROCESS_VM_WRITEV: "process_vm_writev",
	kgbpf.KeyguardKgOpKG_OP_PIDFD_GETFD:       "pidfd_getfd",
	kgbpf.KeyguardKgOpKG_OP_PROC_OPEN:         "proc_open",
	kgbpf.KeyguardKgOpKG_OP_KCMP:              "kcmp",
	kgbpf.KeyguardKgOpKG_OP_PERF_EVENT_OPEN:   "perf_event_open",
	kgbpf.KeyguardKgOpKG_OP_TRACEME:           "traceme",
	kgbpf.KeyguardKgOpKG_OP_PROC_READ:         "proc_read",
	kgbpf.KeyguardKgOpKG_OP_EXEC_TRACED:       "exec_traced",
	kgbpf.KeyguardKgOpKG_OP_KEYFILE_TRACED:    "keyfile_traced",
	kgbpf.KeyguardKgOpKG_OP_PTRACE_OTHER:      "ptrace_other",
	kgbpf.KeyguardKgOpKG_OP_PROC_LINK:         "proc_link",
}

var reasonNames = map[kgbpf.KeyguardKgReason]string{
	kgbpf.KeyguardKgReasonKG_REASON_EXEC:     "exec",
	kgbpf.KeyguardKgReasonKG_REASON_KEY_FILE: "key_file",
	kgbpf.KeyguardKgReasonKG_REASON_CGROUP:   "cgroup",
	kgbpf.KeyguardKgReasonKG_REASON_SCAN:     "procfs_scan",
	kgbpf.KeyguardKgReasonKG_REASON_INHERIT:  "inherited",
}

// ReasonName names a protection reason.
func ReasonName(r uint32) string {
	if n, ok := reasonNames[kgbpf.KeyguardKgReason(r)]; ok {
		return n
	}
	return fmt.Sprintf("reason_%d", r)
}

// AccessModeNames decodes PTRACE_MODE_* bits.
func AccessModeNames(mode uint32) []string {
	var out []string
	for _, b := range []struct {
		bit  uint32
		name string
	}{{0x01, "read"}, {0x02, "attach"}, {0x04, "noaudit"}, {0x08, "fscreds"}, {0x10, "realcreds"}} {
		if mode&b.bit != 0 {
			out = append(out, b.name)
		}
	}
	return out
}

// Names resolves what the kernel reports by number.
type Names interface {
	// RuleName names a rule id; unknown ids (a rule removed from the policy) get a placeholder.
	RuleName(id uint32) string
}

// Decode turns one ring-buffer record into an Event.
func Decode(raw []byte, names Names) (Event, error) {
	var r kgbpf.KeyguardKgEvent
	if len(raw) < binary.Size(r) {
		return Event{}, fmt.Errorf("short event record: %d bytes, want %d", len(raw), binary.Size(r))
	}
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &r); err != nil {
		return Event{}, fmt.Errorf("decode event record: %w", err)
	}
	ev := Event{
		Time:    bootToWall(r.BootNs),
		Rule:    names.RuleName(r.RuleId),
		Reason:  ReasonName(r.Reason),
		Detail:  cstr(r.Detail[:]),
		Syscall: r.SyscallNr,
		Target:  process(r.Target),
	}
	switch kgbpf.KeyguardKgEventKind(r.Kind) {
	case kgbpf.KeyguardKgEventKindKG_EVENT_ACCESS:
		ev.Kind = KindAccess
		ev.Operation = opNames[kgbpf.KeyguardKgOp(r.Op)]
		if ev.Operation == "" {
			ev.Operation = fmt.Sprintf("op_%d", r.Op)
		}
		ev.Decision = decisionNames[kgbpf.KeyguardKgDecision(r.Decision)]
		ev.RuleMode = "enforce"
		if kgbpf.KeyguardKgMode(r.RuleMode) == kgbpf.KeyguardKgModeKG_MODE_AUDIT {
			ev.RuleMode = "audit"
		}
		ev.AccessMode = r.AccessMode
		ev.AccessModeNames = AccessModeNames(r.AccessMode)
		ev.Accessor = process(r.Actor)
	case kgbpf.KeyguardKgEventKindKG_EVENT_PROTECT:
		ev.Kind = KindProtect
		ev.Syscall = 0
	case kgbpf.KeyguardKgEventKindKG_EVENT_DUMP:
		ev.Kind = KindDump
		ev.Syscall = 0
		d := &Dump{Signal: r.AccessMode}
		switch kgbpf.KeyguardKgDumpAction(r.Op) {
		case kgbpf.KeyguardKgDumpActionKG_DUMP_BLOCKED:
			d.Action, d.Reason = "blocked", "the rule blocks core dumps: denied before any file or helper was created"
		case kgbpf.KeyguardKgDumpActionKG_DUMP_ALLOWED:
			d.Action, d.Reason = "allowed", "the rule allows core dumps"
		case kgbpf.KeyguardKgDumpActionKG_DUMP_TO_HANDLER:
			d.Action, d.Reason = "to_handler", "streaming to keyguard's handler for redaction"
		case kgbpf.KeyguardKgDumpActionKG_DUMP_BAD_DESTINATION:
			d.Action, d.Reason = "blocked", "the dump was not going to keyguard's handler (core_pattern changed, handler missing, or a file pattern): the dumper was killed before its first byte"
		default:
			d.Action = fmt.Sprintf("action_%d", r.Op)
		}
		ev.Dump = d
	case kgbpf.KeyguardKgEventKindKG_EVENT_TAMPER:
		ev.Kind = KindSideDoor
		ev.Rule, ev.Reason, ev.Target = "", "", nil
		ev.Operation = tamperNames[kgbpf.KeyguardKgTamper(r.Op)]
		if ev.Operation == "" {
			ev.Operation = fmt.Sprintf("keyguard_tamper_%d", r.Op)
		}
		ev.Decision = decisionNames[kgbpf.KeyguardKgDecision(r.Decision)]
		ev.Accessor = process(r.Actor)
		if r.AccessMode != 0 {
			ev.Detail = strings.TrimSpace(fmt.Sprintf("id %d %s", r.AccessMode, ev.Detail))
		}
	case kgbpf.KeyguardKgEventKindKG_EVENT_SIDE_DOOR:
		ev.Kind = KindSideDoor
		ev.Rule, ev.Reason, ev.Target = "", "", nil
		ev.Operation = fmt.Sprintf("side_door_%d", r.Op)
		switch kgbpf.KeyguardKgSideDoor(r.Op) {
		case kgbpf.KeyguardKgSideDoorKG_SIDE_BPF_LOAD:
			ev.Operation = "bpf_load"
			ev.Detail = strings.TrimSpace(fmt.Sprintf("%s (program type %d)", ev.Detail, r.AccessMode))
		case kgbpf.KeyguardKgSideDoorKG_SIDE_PERF_USER:
			ev.Operation = "perf_event"
			ev.Detail = fmt.Sprintf("sample_type %#x", r.AccessMode)
			if r.Target.Pid != 0 {
				ev.Target, ev.Rule = process(r.Target), names.RuleName(r.RuleId)
			} else {
				ev.Detail += " (CPU-wide)"
			}
		case kgbpf.KeyguardKgSideDoorKG_SIDE_SYSCTL:
			ev.Operation = "sysctl_write"
		case kgbpf.KeyguardKgSideDoorKG_SIDE_KMEM:
			ev.Operation = kmemNames[r.AccessMode]
			if ev.Operation == "" {
				ev.Operation = fmt.Sprintf("kernel_memory_%#x", r.AccessMode)
			}
		case kgbpf.KeyguardKgSideDoorKG_SIDE_RAW_DISK:
			ev.Operation = "raw_disk"
			if r.AccessMode != 0 {
				ev.Detail = strings.TrimSpace(fmt.Sprintf("%s (block device %d:%d)", ev.Detail, r.AccessMode>>20, r.AccessMode&(1<<20-1)))
			}
		case kgbpf.KeyguardKgSideDoorKG_SIDE_MODULE:
			ev.Operation = "module_load"
			if r.AccessMode == 2 {
				ev.Operation = "kexec_load"
			}
		}
		ev.Decision = decisionNames[kgbpf.KeyguardKgDecision(r.Decision)]
		ev.Accessor = process(r.Actor)
	case kgbpf.KeyguardKgEventKindKG_EVENT_KEY_FILE:
		ev.Kind = KindKeyFile
		ev.Syscall, ev.Target = 0, nil
		ev.Operation = keyOpNames[kgbpf.KeyguardKgKeyOp(r.Op)]
		if ev.Operation == "" {
			ev.Operation = fmt.Sprintf("key_op_%d", r.Op)
		}
		ev.Decision = decisionNames[kgbpf.KeyguardKgDecision(r.Decision)]
		ev.RuleMode = "enforce"
		if kgbpf.KeyguardKgMode(r.RuleMode) == kgbpf.KeyguardKgModeKG_MODE_AUDIT {
			ev.RuleMode = "audit"
		}
		if kgbpf.KeyguardKgGuarded(r.AccessMode) != kgbpf.KeyguardKgGuardedKG_GUARD_KEY_FILE {
			ev.Reason = ""
		}
		ev.Accessor = process(r.Actor)
		ev.KeyFile = &KeyFile{Guarded: guardedNames[kgbpf.KeyguardKgGuarded(r.AccessMode)], Dev: r.Target.ExeDev,
			Ino: r.Target.ExeIno, Name: ev.Detail}
	default:
		return Event{}, fmt.Errorf("unknown event kind %d", r.Kind)
	}
	return ev, nil
}

func process(p kgbpf.KeyguardKgProc) *Process {
	out := &Process{
		PID: p.Pid, TID: p.Tid, UID: p.Uid, EUID: p.Euid,
		Comm: cstr(p.Comm[:]), ExeDev: p.ExeDev, ExeIno: p.ExeIno, CgroupID: p.CgroupId,
	}
	// The kernel walks the executable's dentries; a path it had to cut short is completed from /proc
	// while the process lives (checked against the inode the kernel reported), else the basename stays.
	out.Executable = exePath(p.ExePath[:])
	if out.Executable == "" {
		out.Executable = cstr(p.ExeName[:])
	}
	if p.Pid != 0 {
		if !strings.HasPrefix(out.Executable, "/") {
			if path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid)); err == nil {
				var st unix.Stat_t
				if unix.Stat(fmt.Sprintf("/proc/%d/exe", p.Pid), &st) == nil && st.Ino == p.ExeIno {
					out.Executable = path
				}
			}
		}
		out.Cgroup = CgroupPath(p.Pid)
	}
	return out
}

// exePath rebuilds a path from the kernel's leaf-first, NUL-separated components. It returns "" when
// the walk did not reach the root (no "/" component).
func exePath(b []int8) string {
	var comps []string
	start := 0
	for i := 0; i < len(b); i++ {
		if b[i] != 0 {
			continue
		}
		if i == start {
			break
		}
		comps = append(comps, cstr(b[start:i]))
		start = i + 1
	}
	if len(comps) == 0 || comps[len(comps)-1] != "/" {
		return ""
	}
	comps = comps[:len(comps)-1]
	for i, j := 0, len(comps)-1; i < j; i, j = i+1, j-1 {
		comps[i], comps[j] = comps[j], comps[i]
	}
	return "/" + strings.Join(comps, "/")
}

// CgroupPath returns a process's cgroup v2 path from /proc/PID/cgroup, or "".
func CgroupPath(pid uint32) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	return ""
}

func cstr(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	out := make([]byte, n)
	for i := range out {
		out[i] = byte(b[i])
	}
	return string(out)
}

func bootToWall(bootNs uint64) time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(time.Duration(int64(bootNs) - ts.Nano()))
}

// Reader reads the BPF ring buffer and hands decoded events to emit. It also polls the kernel's lost
// counter and emits a loss event for every increase, so kernel-side loss is never silent.
type Reader struct {
	Events *ebpf.Map
	// Lost returns the kernel's cumulative lost-event count.
	Lost  func() (uint64, error)
	Names Names
	Log   *slog.Logger
	// LostBaseline is the lost count already reported (by an earlier agent); only increases beyond it
	// are reported.
	LostBaseline uint64
	// OnLostReported is called with the new cumulative count after a loss event is emitted, so it can be
	// persisted for the next agent.
	OnLostReported func(total uint64)
	PollLost       time.Duration
}

// Run reads until ctx is done. emit must not block for long: it is on the ring buffer's path.
func (r *Reader) Run(ctx context.Context, emit func(Event)) error {
	rd, err := ringbuf.NewReader(r.Events)
	if err != nil {
		return fmt.Errorf("open BPF ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	poll := r.PollLost
	if poll == 0 {
		poll = time.Second
	}
	reported := r.LostBaseline
	checkLost := func() {
		n, err := r.Lost()
		if err != nil {
			r.Log.Error("read kernel lost-event counter", "error", err)
			return
		}
		if n > reported {
			emit(Event{Time: time.Now(), Kind: KindLoss, Loss: &Loss{Source: "kernel_ringbuf", Count: n - reported}})
			reported = n
			if r.OnLostReported != nil {
				r.OnLostReported(n)
			}
		}
	}
	checkLost()
	last := time.Now()
	var rec ringbuf.Record
	for {
		rd.SetDeadline(time.Now().Add(poll))
		err := rd.ReadInto(&rec)
		if time.Since(last) >= poll {
			checkLost()
			last = time.Now()
		}
		switch {
		case err == nil:
			ev, derr := Decode(rec.RawSample, r.Names)
			if derr != nil {
				r.Log.Error("undecodable BPF event", "error", derr)
				continue
			}
			emit(ev)
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			checkLost()
			return nil
		default:
			return fmt.Errorf("read BPF ring buffer: %w", err)
		}
	}
}

// IsTamper reports whether a side_door event is an attempt on keyguard's own programs, maps, links or
// pins (the operations named keyguard_*), as opposed to a side door into a protected process.
func (ev Event) IsTamper() bool {
	return ev.Kind == KindSideDoor && strings.HasPrefix(ev.Operation, "keyguard_")
}
