// Package events turns what keyguard's BPF programs report into keyguard.v1 events, the agent's only
// event model: it reads the ring buffer, decodes the C-defined records (bpf2go types) straight into
// keyguardv1.Event, drains the kernel's aggregates of repeated access attempts (Aggregates), names
// rules, executables and cgroups, counts kernel-side loss so that none is silent, and writes the local
// event log (protojson lines, see JSONLines).
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

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/posture"
	"github.com/keyguard/keyguard/agent/internal/procfs"
	kgbpf "github.com/keyguard/keyguard/bpf"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Each BPF enum (bpf2go types from bpf/src) maps straight to its keyguard.v1 value: one table per enum.
// Where the API has no value of its own for a kernel value, the entry also carries the agent's word for
// it, which goes first in the event's detail (the API keeps its enums coarse; the detail tells apart,
// e.g., exec_traced from keyfile_traced).

// accessOp is what a KG_OP becomes in a MemoryAccess.
type accessOp struct {
	op   keyguardv1.AccessOperation
	note string // first word of MemoryAccess.detail; "" when the operation says it all
}

var accessOps = map[kgbpf.KeyguardKgOp]accessOp{
	kgbpf.KeyguardKgOpKG_OP_OTHER:             {keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER, "other"},
	kgbpf.KeyguardKgOpKG_OP_PTRACE_ATTACH:     {keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, ""},
	kgbpf.KeyguardKgOpKG_OP_PTRACE_SEIZE:      {keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_SEIZE, ""},
	kgbpf.KeyguardKgOpKG_OP_PROCESS_VM_READV:  {keyguardv1.AccessOperation_ACCESS_OPERATION_PROCESS_VM_READV, ""},
	kgbpf.KeyguardKgOpKG_OP_PROCESS_VM_WRITEV: {keyguardv1.AccessOperation_ACCESS_OPERATION_PROCESS_VM_WRITEV, ""},
	kgbpf.KeyguardKgOpKG_OP_PIDFD_GETFD:       {keyguardv1.AccessOperation_ACCESS_OPERATION_PIDFD_GETFD, ""},
	kgbpf.KeyguardKgOpKG_OP_PROC_OPEN:         {keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN, ""},
	kgbpf.KeyguardKgOpKG_OP_KCMP:              {keyguardv1.AccessOperation_ACCESS_OPERATION_KCMP, ""},
	kgbpf.KeyguardKgOpKG_OP_PERF_EVENT_OPEN:   {keyguardv1.AccessOperation_ACCESS_OPERATION_PERF_EVENT_OPEN, ""},
	kgbpf.KeyguardKgOpKG_OP_TRACEME:           {keyguardv1.AccessOperation_ACCESS_OPERATION_TRACEME, ""},
	kgbpf.KeyguardKgOpKG_OP_PROC_READ:         {keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN, "proc_read"},
	kgbpf.KeyguardKgOpKG_OP_EXEC_TRACED:       {keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER, "exec_traced"},
	kgbpf.KeyguardKgOpKG_OP_KEYFILE_TRACED:    {keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER, "keyfile_traced"},
	kgbpf.KeyguardKgOpKG_OP_PTRACE_OTHER:      {keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER, "ptrace_other"},
	kgbpf.KeyguardKgOpKG_OP_PROC_LINK:         {keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN, "proc_link"},
}

var decisions = map[kgbpf.KeyguardKgDecision]keyguardv1.Decision{
	kgbpf.KeyguardKgDecisionKG_DECISION_DENIED:              keyguardv1.Decision_DECISION_DENIED,
	kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_AUDIT:       keyguardv1.Decision_DECISION_ALLOWED_AUDIT,
	kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_POLICY:      keyguardv1.Decision_DECISION_ALLOWED_POLICY,
	kgbpf.KeyguardKgDecisionKG_DECISION_ALLOWED_BREAK_GLASS: keyguardv1.Decision_DECISION_ALLOWED_BREAK_GLASS,
}

var accessClasses = map[kgbpf.KeyguardKgAccessClass]keyguardv1.AccessClass{
	kgbpf.KeyguardKgAccessClassKG_CLASS_MEMORY:   keyguardv1.AccessClass_ACCESS_CLASS_MEMORY,
	kgbpf.KeyguardKgAccessClassKG_CLASS_METADATA: keyguardv1.AccessClass_ACCESS_CLASS_METADATA,
}

var policyModes = map[kgbpf.KeyguardKgMode]keyguardv1.PolicyMode{
	kgbpf.KeyguardKgModeKG_MODE_ENFORCE: keyguardv1.PolicyMode_POLICY_MODE_ENFORCE,
	kgbpf.KeyguardKgModeKG_MODE_AUDIT:   keyguardv1.PolicyMode_POLICY_MODE_AUDIT,
}

var reasons = map[kgbpf.KeyguardKgReason]keyguardv1.ProtectionReason{
	kgbpf.KeyguardKgReasonKG_REASON_EXEC:     keyguardv1.ProtectionReason_PROTECTION_REASON_EXEC,
	kgbpf.KeyguardKgReasonKG_REASON_KEY_FILE: keyguardv1.ProtectionReason_PROTECTION_REASON_KEY_FILE_OPEN,
	kgbpf.KeyguardKgReasonKG_REASON_CGROUP:   keyguardv1.ProtectionReason_PROTECTION_REASON_CGROUP,
	kgbpf.KeyguardKgReasonKG_REASON_SCAN:     keyguardv1.ProtectionReason_PROTECTION_REASON_PROCFS_SCAN,
	kgbpf.KeyguardKgReasonKG_REASON_INHERIT:  keyguardv1.ProtectionReason_PROTECTION_REASON_INHERITED,
}

// dumpAction is what a KG_DUMP_* becomes in a CoreDump.
type dumpAction struct {
	action keyguardv1.CoreDumpAction
	reason string
}

var dumpActions = map[kgbpf.KeyguardKgDumpAction]dumpAction{
	kgbpf.KeyguardKgDumpActionKG_DUMP_BLOCKED: {keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_BLOCKED,
		"the rule blocks core dumps: denied before any file or helper was created"},
	kgbpf.KeyguardKgDumpActionKG_DUMP_ALLOWED: {keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_ALLOWED, "the rule allows core dumps"},
	// The handler reports the outcome (redacted or discarded) in an event of its own.
	kgbpf.KeyguardKgDumpActionKG_DUMP_TO_HANDLER: {keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_UNSPECIFIED,
		"streaming to keyguard's handler for redaction"},
	kgbpf.KeyguardKgDumpActionKG_DUMP_BAD_DESTINATION: {keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_BLOCKED,
		"the dump was not going to keyguard's handler (core_pattern changed, handler missing, or a file pattern): the dumper was killed before its first byte"},
}

// sideDoor is what a KG_SIDE_* or KG_TAMPER_* becomes in a SideDoor; op is the first word of its detail.
type sideDoor struct {
	kind keyguardv1.SideDoorKind
	op   string
}

var sideDoors = map[kgbpf.KeyguardKgSideDoor]sideDoor{
	kgbpf.KeyguardKgSideDoorKG_SIDE_BPF_LOAD:  {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_BPF_LOAD, "bpf_load"},
	kgbpf.KeyguardKgSideDoorKG_SIDE_PERF_USER: {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_PERF_EVENT, "perf_event"},
	kgbpf.KeyguardKgSideDoorKG_SIDE_SYSCTL:    {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_SYSCTL_WRITE, "sysctl_write"},
	kgbpf.KeyguardKgSideDoorKG_SIDE_MODULE:    {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_MODULE_LOAD, "module_load"},
	kgbpf.KeyguardKgSideDoorKG_SIDE_RAW_DISK:  {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_RAW_DISK, "raw_disk"},
	// KG_SIDE_KMEM is told apart by the device opened: kmemDoors.
}

// kmemDoors names the kernel-memory side doors by the device opened (MKDEV(major, minor) as the kernel
// encodes it; 0 is /proc/kcore).
var kmemDoors = map[uint32]sideDoor{
	0:         {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KCORE, "kcore"},
	1<<20 | 1: {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_DEV_MEM, "dev_mem"},
	1<<20 | 2: {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_DEV_MEM, "dev_kmem"},
	1<<20 | 4: {keyguardv1.SideDoorKind_SIDE_DOOR_KIND_DEV_PORT, "dev_port"},
}

var tamperOps = map[kgbpf.KeyguardKgTamper]string{
	kgbpf.KeyguardKgTamperKG_TAMPER_MAP_WRITE:   "keyguard_map_write",
	kgbpf.KeyguardKgTamperKG_TAMPER_PROG_FD:     "keyguard_prog_fd",
	kgbpf.KeyguardKgTamperKG_TAMPER_LINK_FD:     "keyguard_link_fd",
	kgbpf.KeyguardKgTamperKG_TAMPER_LINK_DETACH: "keyguard_link_detach",
	kgbpf.KeyguardKgTamperKG_TAMPER_PIN_UNLINK:  "keyguard_pin_unlink",
	kgbpf.KeyguardKgTamperKG_TAMPER_PIN_RENAME:  "keyguard_pin_rename",
	kgbpf.KeyguardKgTamperKG_TAMPER_UMOUNT:      "keyguard_bpffs_umount",
	kgbpf.KeyguardKgTamperKG_TAMPER_EXE_WRITE:   "keyguard_exe_write",
	kgbpf.KeyguardKgTamperKG_TAMPER_EXE_DIGEST:  "keyguard_exe_digest",
}

var keyFileOps = map[kgbpf.KeyguardKgKeyOp]keyguardv1.KeyFileOperation{
	kgbpf.KeyguardKgKeyOpKG_KEY_OPEN:        keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_OPEN,
	kgbpf.KeyguardKgKeyOpKG_KEY_LINK:        keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_LINK,
	kgbpf.KeyguardKgKeyOpKG_KEY_RENAME:      keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_RENAME,
	kgbpf.KeyguardKgKeyOpKG_KEY_UNLINK:      keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_UNLINK,
	kgbpf.KeyguardKgKeyOpKG_KEY_TRUNCATE:    keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_TRUNCATE,
	kgbpf.KeyguardKgKeyOpKG_KEY_CHMOD:       keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_CHMOD,
	kgbpf.KeyguardKgKeyOpKG_KEY_CHOWN:       keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_CHOWN,
	kgbpf.KeyguardKgKeyOpKG_KEY_XATTR:       keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_XATTR,
	kgbpf.KeyguardKgKeyOpKG_KEY_WRITE:       keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_WRITE,
	kgbpf.KeyguardKgKeyOpKG_KEY_OPEN_BUSY:   keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_OPEN_BUSY,
	kgbpf.KeyguardKgKeyOpKG_KEY_OPEN_DIGEST: keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_OPEN_DIGEST,
}

var guardedFiles = map[kgbpf.KeyguardKgGuarded]keyguardv1.GuardedFile{
	kgbpf.KeyguardKgGuardedKG_GUARD_KEY_FILE:   keyguardv1.GuardedFile_GUARDED_FILE_KEY_FILE,
	kgbpf.KeyguardKgGuardedKG_GUARD_SIGNER_EXE: keyguardv1.GuardedFile_GUARDED_FILE_SIGNER_EXECUTABLE,
	kgbpf.KeyguardKgGuardedKG_GUARD_AGENT_EXE:  keyguardv1.GuardedFile_GUARDED_FILE_AGENT_EXECUTABLE,
}

// keyFileAccess: an open or metadata change of a guarded file; the BPF record carries the file's
// device and inode in target.exe_dev/exe_ino and the name it was reached by in detail.
func keyFileAccess(r *kgbpf.KeyguardKgEvent, names Names) *keyguardv1.KeyFileAccess {
	k := &keyguardv1.KeyFileAccess{Process: process(r.Actor), Path: cstr(r.Detail[:]), Dev: r.Target.ExeDev,
		Inode: r.Target.ExeIno, Rule: names.RuleName(r.RuleId), PolicyMode: policyModes[kgbpf.KeyguardKgMode(r.RuleMode)],
		Decision: decisions[kgbpf.KeyguardKgDecision(r.Decision)], Operation: keyFileOps[kgbpf.KeyguardKgKeyOp(r.Op)],
		Guarded: guardedFiles[kgbpf.KeyguardKgGuarded(r.AccessMode)]}
	if k.PolicyMode == keyguardv1.PolicyMode_POLICY_MODE_UNSPECIFIED {
		k.PolicyMode = keyguardv1.PolicyMode_POLICY_MODE_ENFORCE
	}
	if k.Operation == keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_UNSPECIFIED {
		k.Detail = fmt.Sprintf("key_op_%d", r.Op)
	}
	return k
}

// Reason maps a kernel protection reason (a mark's KG_REASON_*) to the API's.
func Reason(r uint32) keyguardv1.ProtectionReason { return reasons[kgbpf.KeyguardKgReason(r)] }

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

// Decode turns one ring-buffer record into a keyguard.v1 event. Host, boot id, sequence number and
// agent version are left to the export pipeline and the collector.
func Decode(raw []byte, names Names) (*keyguardv1.Event, error) {
	var r kgbpf.KeyguardKgEvent
	size := binary.Size(r)
	if len(raw) < size-recordGrowth {
		return nil, fmt.Errorf("short event record: %d bytes, want %d", len(raw), size)
	}
	if len(raw) < size { // written by an older build into the pinned ring buffer: newer fields are zero
		raw = append(append([]byte(nil), raw...), make([]byte, size-len(raw))...)
	}
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &r); err != nil {
		return nil, fmt.Errorf("decode event record: %w", err)
	}
	return decodeRecord(&r, names)
}

// recordGrowth is how many bytes kg_event grew since the oldest build whose records a new agent may
// find in the pinned ring buffer (access_class and its padding).
const recordGrowth = 8

func decodeRecord(r *kgbpf.KeyguardKgEvent, names Names) (*keyguardv1.Event, error) {
	ev := &keyguardv1.Event{Time: timestamppb.New(bootToWall(r.BootNs))}
	switch kgbpf.KeyguardKgEventKind(r.Kind) {
	case kgbpf.KeyguardKgEventKindKG_EVENT_ACCESS:
		ev.Kind = &keyguardv1.Event_MemoryAccess{MemoryAccess: memoryAccess(r, names)}
	case kgbpf.KeyguardKgEventKindKG_EVENT_PROTECT:
		pc := &keyguardv1.ProtectionChange{Process: process(r.Target), Rule: names.RuleName(r.RuleId),
			State: keyguardv1.ProtectionState_PROTECTION_STATE_PROTECTED, Reason: Reason(r.Reason), Detail: cstr(r.Detail[:])}
		if pc.Reason == keyguardv1.ProtectionReason_PROTECTION_REASON_KEY_FILE_OPEN {
			pc.KeyFilePath = pc.Detail
		}
		ev.Kind = &keyguardv1.Event_ProtectionChange{ProtectionChange: pc}
	case kgbpf.KeyguardKgEventKindKG_EVENT_DUMP:
		d, ok := dumpActions[kgbpf.KeyguardKgDumpAction(r.Op)]
		if !ok {
			d.reason = fmt.Sprintf("action_%d", r.Op)
		}
		ev.Kind = &keyguardv1.Event_CoreDump{CoreDump: &keyguardv1.CoreDump{Process: process(r.Target),
			Signal: int32(r.AccessMode), Rule: names.RuleName(r.RuleId), Action: d.action, Reason: d.reason}}
	case kgbpf.KeyguardKgEventKindKG_EVENT_TAMPER:
		op, ok := tamperOps[kgbpf.KeyguardKgTamper(r.Op)]
		if !ok {
			op = fmt.Sprintf("keyguard_tamper_%d", r.Op)
		}
		detail := cstr(r.Detail[:])
		if r.AccessMode != 0 {
			detail = fmt.Sprintf("id %d %s", r.AccessMode, detail)
		}
		ev.Kind = &keyguardv1.Event_SideDoor{SideDoor: &keyguardv1.SideDoor{Accessor: process(r.Actor),
			Kind: keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER, Detail: strings.TrimSpace(op + " " + detail),
			Decision: decisions[kgbpf.KeyguardKgDecision(r.Decision)]}}
	case kgbpf.KeyguardKgEventKindKG_EVENT_SIDE_DOOR:
		ev.Kind = &keyguardv1.Event_SideDoor{SideDoor: sideDoorEvent(r, names)}
	case kgbpf.KeyguardKgEventKindKG_EVENT_KEY_FILE:
		ev.Kind = &keyguardv1.Event_KeyFileAccess{KeyFileAccess: keyFileAccess(r, names)}
	default:
		return nil, fmt.Errorf("unknown event kind %d", r.Kind)
	}
	return ev, nil
}

func memoryAccess(r *kgbpf.KeyguardKgEvent, names Names) *keyguardv1.MemoryAccess {
	op, ok := accessOps[kgbpf.KeyguardKgOp(r.Op)]
	if !ok {
		op = accessOp{keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER, fmt.Sprintf("op_%d", r.Op)}
	}
	ma := &keyguardv1.MemoryAccess{
		Accessor: process(r.Actor), Target: process(r.Target), Operation: op.op,
		AccessMode: r.AccessMode, AccessModeNames: AccessModeNames(r.AccessMode), Rule: names.RuleName(r.RuleId),
		PolicyMode: policyModes[kgbpf.KeyguardKgMode(r.RuleMode)], Decision: decisions[kgbpf.KeyguardKgDecision(r.Decision)],
		TargetReason: Reason(r.Reason), AccessClass: accessClasses[kgbpf.KeyguardKgAccessClass(r.AccessClass)],
	}
	if ma.PolicyMode == keyguardv1.PolicyMode_POLICY_MODE_UNSPECIFIED {
		ma.PolicyMode = keyguardv1.PolicyMode_POLICY_MODE_ENFORCE
	}
	detail := cstr(r.Detail[:])
	if strings.HasPrefix(detail, "/proc/") {
		ma.ProcPath, detail = detail, ""
	}
	if op.note != "" {
		detail = strings.TrimSuffix(op.note+": "+detail, ": ")
	}
	ma.Detail = detail
	return ma
}

func sideDoorEvent(r *kgbpf.KeyguardKgEvent, names Names) *keyguardv1.SideDoor {
	sd, ok := sideDoors[kgbpf.KeyguardKgSideDoor(r.Op)]
	if kgbpf.KeyguardKgSideDoor(r.Op) == kgbpf.KeyguardKgSideDoorKG_SIDE_KMEM {
		if sd, ok = kmemDoors[r.AccessMode]; !ok {
			sd = sideDoor{keyguardv1.SideDoorKind_SIDE_DOOR_KIND_DEV_MEM, fmt.Sprintf("kernel_memory_%#x", r.AccessMode)}
		}
	} else if !ok {
		sd = sideDoor{keyguardv1.SideDoorKind_SIDE_DOOR_KIND_UNSPECIFIED, fmt.Sprintf("side_door_%d", r.Op)}
	}
	out := &keyguardv1.SideDoor{Accessor: process(r.Actor), Kind: sd.kind, Decision: decisions[kgbpf.KeyguardKgDecision(r.Decision)]}
	detail := cstr(r.Detail[:])
	switch kgbpf.KeyguardKgSideDoor(r.Op) {
	case kgbpf.KeyguardKgSideDoorKG_SIDE_BPF_LOAD:
		detail = fmt.Sprintf("%s (program type %d)", detail, r.AccessMode)
	case kgbpf.KeyguardKgSideDoorKG_SIDE_PERF_USER:
		detail = fmt.Sprintf("sample_type %#x", r.AccessMode)
		if r.Target.Pid != 0 {
			out.Target, out.Rule = process(r.Target), names.RuleName(r.RuleId)
		} else {
			detail += " (CPU-wide)"
		}
	case kgbpf.KeyguardKgSideDoorKG_SIDE_RAW_DISK:
		if r.AccessMode != 0 {
			detail = fmt.Sprintf("%s (block device %d:%d)", detail, r.AccessMode>>20, r.AccessMode&(1<<20-1))
		}
	case kgbpf.KeyguardKgSideDoorKG_SIDE_MODULE:
		if r.AccessMode == 2 {
			sd = sideDoor{keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEXEC_LOAD, "kexec_load"}
			out.Kind = sd.kind
		}
	}
	out.Detail = strings.TrimSpace(sd.op + " " + strings.TrimSpace(detail))
	return out
}

func process(p kgbpf.KeyguardKgProc) *keyguardv1.Process {
	out := &keyguardv1.Process{
		Pid: p.Pid, Tid: p.Tid, Uid: p.Uid, Euid: p.Euid,
		Comm: cstr(p.Comm[:]), ExeDev: p.ExeDev, ExeInode: p.ExeIno, CgroupId: p.CgroupId,
	}
	// The kernel walks the executable's dentries; a path it had to cut short is completed from /proc
	// while the process lives (checked against the inode the kernel reported), else the basename stays.
	out.ExePath = exePath(p.ExePath[:])
	if out.ExePath == "" {
		out.ExePath = cstr(p.ExeName[:])
	}
	if p.Pid != 0 {
		if !strings.HasPrefix(out.ExePath, "/") {
			if path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid)); err == nil {
				var st unix.Stat_t
				if unix.Stat(fmt.Sprintf("/proc/%d/exe", p.Pid), &st) == nil && st.Ino == p.ExeIno {
					out.ExePath = path
				}
			}
		}
		out.CgroupPath = procfs.FS{}.Cgroup(int(p.Pid))
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
func (r *Reader) Run(ctx context.Context, emit func(*keyguardv1.Event)) error {
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
			emit(&keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_LossReport{LossReport: &keyguardv1.LossReport{
				Source: keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER, Count: n - reported}}})
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

// severities maps posture severities to the API's.
var severities = map[posture.Severity]keyguardv1.Severity{
	posture.Info: keyguardv1.Severity_SEVERITY_INFO, posture.Low: keyguardv1.Severity_SEVERITY_LOW,
	posture.Medium: keyguardv1.Severity_SEVERITY_MEDIUM, posture.High: keyguardv1.Severity_SEVERITY_HIGH,
	posture.Critical: keyguardv1.Severity_SEVERITY_CRITICAL,
}

// Findings turns posture findings into the findings of an AgentHealth event.
func Findings(fs []posture.Finding) []*keyguardv1.PostureFinding {
	out := make([]*keyguardv1.PostureFinding, 0, len(fs))
	for _, f := range fs {
		out = append(out, &keyguardv1.PostureFinding{Name: f.Name, Value: f.Value, Severity: severities[f.Severity], Remediation: f.Remediation})
	}
	return out
}
