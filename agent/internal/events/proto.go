package events

import (
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/posture"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

var protoOps = map[string]keyguardv1.AccessOperation{
	"ptrace_attach":     keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH,
	"ptrace_seize":      keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_SEIZE,
	"process_vm_readv":  keyguardv1.AccessOperation_ACCESS_OPERATION_PROCESS_VM_READV,
	"process_vm_writev": keyguardv1.AccessOperation_ACCESS_OPERATION_PROCESS_VM_WRITEV,
	"pidfd_getfd":       keyguardv1.AccessOperation_ACCESS_OPERATION_PIDFD_GETFD,
	"proc_open":         keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN,
	"proc_read":         keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN,
	"proc_link":         keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN,
	"kcmp":              keyguardv1.AccessOperation_ACCESS_OPERATION_KCMP,
	"perf_event_open":   keyguardv1.AccessOperation_ACCESS_OPERATION_PERF_EVENT_OPEN,
	"traceme":           keyguardv1.AccessOperation_ACCESS_OPERATION_TRACEME,
}

var protoDecisions = map[string]keyguardv1.Decision{
	"denied":              keyguardv1.Decision_DECISION_DENIED,
	"allowed_audit":       keyguardv1.Decision_DECISION_ALLOWED_AUDIT,
	"allowed_policy":      keyguardv1.Decision_DECISION_ALLOWED_POLICY,
	"allowed_break_glass": keyguardv1.Decision_DECISION_ALLOWED_BREAK_GLASS,
}

var protoReasons = map[string]keyguardv1.ProtectionReason{
	"exec":        keyguardv1.ProtectionReason_PROTECTION_REASON_EXEC,
	"key_file":    keyguardv1.ProtectionReason_PROTECTION_REASON_KEY_FILE_OPEN,
	"cgroup":      keyguardv1.ProtectionReason_PROTECTION_REASON_CGROUP,
	"procfs_scan": keyguardv1.ProtectionReason_PROTECTION_REASON_PROCFS_SCAN,
	"inherited":   keyguardv1.ProtectionReason_PROTECTION_REASON_INHERITED,
}

var protoStates = map[string]keyguardv1.AgentState{
	"started":         keyguardv1.AgentState_AGENT_STATE_STARTED,
	"adopted":         keyguardv1.AgentState_AGENT_STATE_ADOPTED,
	"stopping":        keyguardv1.AgentState_AGENT_STATE_STOPPING,
	"uninstalled":     keyguardv1.AgentState_AGENT_STATE_UNINSTALLED,
	"running":         keyguardv1.AgentState_AGENT_STATE_RUNNING,
	"policy_approved": keyguardv1.AgentState_AGENT_STATE_POLICY_APPROVED,
	"refused":         keyguardv1.AgentState_AGENT_STATE_REFUSED,
}

var protoSeverities = map[posture.Severity]keyguardv1.Severity{
	posture.Info: keyguardv1.Severity_SEVERITY_INFO, posture.Low: keyguardv1.Severity_SEVERITY_LOW,
	posture.Medium: keyguardv1.Severity_SEVERITY_MEDIUM, posture.High: keyguardv1.Severity_SEVERITY_HIGH,
	posture.Critical: keyguardv1.Severity_SEVERITY_CRITICAL,
}

var protoGrantStates = map[string]keyguardv1.BreakGlassState{
	"granted": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_GRANTED,
	"expired": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_EXPIRED,
	"revoked": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_REVOKED,
}

func (p *Process) proto() *keyguardv1.Process {
	if p == nil {
		return nil
	}
	return &keyguardv1.Process{
		Pid: p.PID, Tid: p.TID, Comm: p.Comm, ExePath: p.Executable, ExeDev: p.ExeDev, ExeInode: p.ExeIno,
		Uid: p.UID, Euid: p.EUID, CgroupPath: p.Cgroup, CgroupId: p.CgroupID,
	}
}

// Proto converts an event to the keyguard.v1 envelope the collector stores. Host, boot id and sequence
// number are filled in by the export pipeline and the collector.
func (ev Event) Proto(agentVersion string) *keyguardv1.Event {
	out := &keyguardv1.Event{Time: timestamppb.New(ev.Time), AgentVersion: agentVersion}
	mode := keyguardv1.PolicyMode_POLICY_MODE_ENFORCE
	if ev.RuleMode == "audit" {
		mode = keyguardv1.PolicyMode_POLICY_MODE_AUDIT
	}
	switch ev.Kind {
	case KindAccess:
		op, ok := protoOps[ev.Operation]
		if !ok {
			op = keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER
		}
		ma := &keyguardv1.MemoryAccess{
			Accessor: ev.Accessor.proto(), Target: ev.Target.proto(), Operation: op,
			AccessMode: ev.AccessMode, AccessModeNames: ev.AccessModeNames, Rule: ev.Rule, PolicyMode: mode,
			Decision: protoDecisions[ev.Decision],
		}
		if strings.HasPrefix(ev.Detail, "/proc/") {
			ma.ProcPath = ev.Detail
		} else {
			ma.Detail = ev.Detail
		}
		if ma.Operation == keyguardv1.AccessOperation_ACCESS_OPERATION_OTHER || ev.Operation == "proc_read" || ev.Operation == "proc_link" {
			ma.Detail = strings.TrimSuffix(ev.Operation+": "+ma.Detail, ": ")
		}
		out.Kind = &keyguardv1.Event_MemoryAccess{MemoryAccess: ma}
	case KindProtect:
		pc := &keyguardv1.ProtectionChange{
			Process: ev.Target.proto(), Rule: ev.Rule, State: keyguardv1.ProtectionState_PROTECTION_STATE_PROTECTED,
			Reason: protoReasons[ev.Reason], Detail: ev.Detail,
		}
		if ev.Reason == "key_file" {
			pc.KeyFilePath = ev.Detail
		}
		out.Kind = &keyguardv1.Event_ProtectionChange{ProtectionChange: pc}
	case KindDump:
		d := ev.Dump
		cd := &keyguardv1.CoreDump{Process: ev.Target.proto(), Signal: int32(d.Signal), Rule: ev.Rule, Reason: d.Reason,
			VerifierVerdict: d.VerifierVerdict, Destination: d.Destination}
		switch d.Action {
		case "blocked":
			cd.Action = keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_BLOCKED
		case "allowed":
			cd.Action = keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_ALLOWED
		case "redacted":
			cd.Action = keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_REDACTED
		case "discarded":
			cd.Action = keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_DISCARDED
		}
		kinds := make([]string, 0, len(d.RedactedBytes))
		for k := range d.RedactedBytes {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			cd.Redacted = append(cd.Redacted, &keyguardv1.RedactedBytes{Kind: k, Bytes: d.RedactedBytes[k]})
		}
		out.Kind = &keyguardv1.Event_CoreDump{CoreDump: cd}
	case KindSideDoor:
		kind := keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER
		switch ev.Operation {
		case "bpf_load":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_BPF_LOAD
		case "perf_event":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_PERF_EVENT
		case "sysctl_write":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_SYSCTL_WRITE
		case "kcore":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KCORE
		case "dev_mem", "dev_kmem":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_DEV_MEM
		case "dev_port":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_DEV_PORT
		case "module_load":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_MODULE_LOAD
		case "kexec_load":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEXEC_LOAD
		case "raw_disk":
			kind = keyguardv1.SideDoorKind_SIDE_DOOR_KIND_RAW_DISK
		}
		out.Kind = &keyguardv1.Event_SideDoor{SideDoor: &keyguardv1.SideDoor{
			Accessor: ev.Accessor.proto(), Kind: kind,
			Target: ev.Target.proto(), Detail: strings.TrimSpace(ev.Operation + " " + ev.Detail),
			Decision: protoDecisions[ev.Decision], Rule: ev.Rule,
		}}
	case KindKeyFile:
		k := ev.KeyFile
		if k == nil {
			k = &KeyFile{}
		}
		out.Kind = &keyguardv1.Event_KeyFileAccess{KeyFileAccess: &keyguardv1.KeyFileAccess{
			Process: ev.Accessor.proto(), Path: k.Name, Dev: k.Dev, Inode: k.Ino, Rule: ev.Rule,
			PolicyMode: mode, Decision: protoDecisions[ev.Decision], Detail: ev.Detail,
			Operation: protoKeyOps[ev.Operation], Guarded: protoGuarded[k.Guarded],
		}}
	case KindLoss:
		src := keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER
		if ev.Loss.Source == "agent_queue" {
			src = keyguardv1.LossSource_LOSS_SOURCE_AGENT_QUEUE
		}
		out.Kind = &keyguardv1.Event_LossReport{LossReport: &keyguardv1.LossReport{Source: src, Count: ev.Loss.Count}}
	case KindHealth:
		h := ev.Health
		ah := &keyguardv1.AgentHealth{
			State: protoStates[h.State], AgentVersion: h.Version, KernelRelease: h.Kernel, LsmActive: h.LSMActive,
			EnforcementPinned: h.EnforcementPinned, ProtectedProcessCount: uint32(h.ProtectedProcesses), Detail: h.Message,
		}
		if g := h.Gap; g != nil {
			ah.Gap = &keyguardv1.ProtectionGap{PreviousBootId: g.PreviousBootID, BootId: g.BootID,
				LapseStartTime: timestamppb.New(g.LastSeen), BootTime: timestamppb.New(g.BootTime), ResumeTime: timestamppb.New(g.Resumed)}
		}
		for _, f := range h.Posture {
			ah.Findings = append(ah.Findings, &keyguardv1.PostureFinding{Name: f.Name, Value: f.Value, Severity: protoSeverities[f.Severity], Remediation: f.Remediation})
		}
		out.Kind = &keyguardv1.Event_AgentHealth{AgentHealth: ah}
	case KindBreakGlass:
		b := ev.BreakGlass
		uid := uint32(b.UID)
		if b.UID < 0 {
			uid = ^uint32(0)
		}
		out.Kind = &keyguardv1.Event_BreakGlass{BreakGlass: &keyguardv1.BreakGlass{
			Operator: b.Operator, AccessorExePath: b.Executable, AccessorUid: uid, Rule: b.Rule, Reason: b.Reason,
			State: protoGrantStates[b.Action], ExpireTime: timestamppb.New(b.Expires),
		}}
	}
	return out
}

var protoKeyOps = map[string]keyguardv1.KeyFileOperation{
	"open": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_OPEN, "link": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_LINK,
	"rename": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_RENAME, "unlink": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_UNLINK,
	"truncate": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_TRUNCATE, "chmod": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_CHMOD,
	"chown": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_CHOWN, "xattr": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_XATTR,
	"write": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_WRITE, "open_busy": keyguardv1.KeyFileOperation_KEY_FILE_OPERATION_OPEN_BUSY,
}

var protoGuarded = map[string]keyguardv1.GuardedFile{
	"key_file":          keyguardv1.GuardedFile_GUARDED_FILE_KEY_FILE,
	"signer_executable": keyguardv1.GuardedFile_GUARDED_FILE_SIGNER_EXECUTABLE,
	"agent_executable":  keyguardv1.GuardedFile_GUARDED_FILE_AGENT_EXECUTABLE,
}
