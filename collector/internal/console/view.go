package console

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// eventRow is one line of the event list (also sent as JSON to the live page).
type eventRow struct {
	Time     string `json:"time"`
	Host     string `json:"host"`
	Seq      uint64 `json:"seq"`
	Severity string `json:"severity"` // pb.SeverityLabel(pb.SeverityOf(ev)); also the row's CSS class sev-<label>
	Kind     string `json:"kind"`
	Decision string `json:"decision"`
	Rule     string `json:"rule"`
	Actor    string `json:"actor"`
	Target   string `json:"target"`
	Summary  string `json:"summary"`
	URL      string `json:"url"`
	Alert    bool   `json:"alert"` // denied, or an attack allowed only by audit / break-glass
}

const timeLayout = "2006-01-02 15:04:05.000 UTC"

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(timeLayout)
}

func procShort(p *pb.Process) string {
	if p == nil {
		return ""
	}
	name := p.GetExePath()
	if name == "" {
		name = p.GetComm()
	}
	return fmt.Sprintf("%s (pid %d, uid %d)", name, p.GetPid(), p.GetUid())
}

func eventURL(host string, pos uint64) string {
	return "/event/" + url.PathEscape(host) + "/" + strconv.FormatUint(pos, 10)
}

func rowOf(se *pb.StoredEvent) eventRow {
	ev := se.GetEvent()
	r := eventRow{Time: fmtTime(ev.GetTime()), Host: ev.GetHost(), Seq: ev.GetSeq(), URL: eventURL(ev.GetHost(), se.GetChainPosition()),
		Severity: pb.SeverityLabel(pb.SeverityOf(ev))}
	var d pb.Decision
	switch k := ev.GetKind().(type) {
	case *pb.Event_MemoryAccess:
		m := k.MemoryAccess
		r.Kind, d, r.Rule = "memory access", m.GetDecision(), m.GetRule()
		r.Actor, r.Target = procShort(m.GetAccessor()), procShort(m.GetTarget())
		r.Summary = strings.ToLower(strings.TrimPrefix(m.GetOperation().String(), "ACCESS_OPERATION_"))
		if m.GetProcPath() != "" {
			r.Summary += " " + m.GetProcPath()
		}
		if n := m.GetCount(); n > 1 {
			r.Summary += fmt.Sprintf(" (%d attempts)", n)
		}
	case *pb.Event_ProtectionChange:
		p := k.ProtectionChange
		r.Kind, r.Rule, r.Actor = "protection change", p.GetRule(), procShort(p.GetProcess())
		r.Summary = strings.ToLower(strings.TrimPrefix(p.GetState().String(), "PROTECTION_STATE_")) + " (" +
			strings.ToLower(strings.TrimPrefix(p.GetReason().String(), "PROTECTION_REASON_")) + ")"
	case *pb.Event_CoreDump:
		c := k.CoreDump
		r.Kind, r.Rule, r.Actor = "core dump", c.GetRule(), procShort(c.GetProcess())
		r.Summary = fmt.Sprintf("signal %d: %s", c.GetSignal(), strings.ToLower(strings.TrimPrefix(c.GetAction().String(), "CORE_DUMP_ACTION_")))
		if c.GetVerifierVerdict() != "" {
			r.Summary += ", verifier: " + c.GetVerifierVerdict()
		}
	case *pb.Event_KeyFileAccess:
		f := k.KeyFileAccess
		r.Kind, d, r.Rule, r.Actor, r.Target = "key file access", f.GetDecision(), f.GetRule(), procShort(f.GetProcess()), f.GetPath()
	case *pb.Event_SideDoor:
		s := k.SideDoor
		r.Kind, d, r.Rule = "side door", s.GetDecision(), s.GetRule()
		r.Actor, r.Target = procShort(s.GetAccessor()), procShort(s.GetTarget())
		r.Summary = strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "SIDE_DOOR_KIND_"))
		if s.GetDetail() != "" {
			r.Summary += ": " + s.GetDetail()
		}
	case *pb.Event_BreakGlass:
		b := k.BreakGlass
		r.Kind, r.Rule, r.Actor = "break glass", b.GetRule(), b.GetOperator()
		r.Target = fmt.Sprintf("%s (uid %d)", b.GetAccessorExePath(), b.GetAccessorUid())
		r.Summary = strings.ToLower(strings.TrimPrefix(b.GetState().String(), "BREAK_GLASS_STATE_")) + ": " + b.GetReason()
		r.Alert = b.GetState() == pb.BreakGlassState_BREAK_GLASS_STATE_GRANTED
	case *pb.Event_AgentHealth:
		h := k.AgentHealth
		r.Kind = "agent health"
		r.Summary = fmt.Sprintf("%s, %s, kernel %s, %d protected", strings.ToLower(strings.TrimPrefix(h.GetState().String(), "AGENT_STATE_")),
			h.GetAgentVersion(), h.GetKernelRelease(), h.GetProtectedProcessCount())
		r.Alert = h.GetState() == pb.AgentState_AGENT_STATE_UNINSTALLED
	case *pb.Event_LossReport:
		l := k.LossReport
		r.Kind = "loss report"
		r.Summary = fmt.Sprintf("%d events lost (%s)", l.GetCount(), strings.ToLower(strings.TrimPrefix(l.GetSource().String(), "LOSS_SOURCE_")))
		r.Alert = true
	case *pb.Event_KeyMaterialFound:
		m := k.KeyMaterialFound
		r.Kind = "key material found"
		r.Target = m.GetPath()
		r.Summary = fmt.Sprintf("%s at offset %d, key %q", m.GetEncoding(), m.GetOffset(), m.GetKey())
		if m.GetQuarantinePath() != "" {
			r.Summary += ", quarantined"
		}
		r.Alert = true
	case *pb.Event_KeyFingerprints:
		r.Kind = "key fingerprints"
		r.Summary = fmt.Sprintf("%d keys, %d fingerprints published", len(k.KeyFingerprints.GetKeys()), len(k.KeyFingerprints.GetFingerprints()))
	}
	r.Decision = decisionLabel(d)
	if d == pb.Decision_DECISION_DENIED || d == pb.Decision_DECISION_ALLOWED_AUDIT || d == pb.Decision_DECISION_ALLOWED_BREAK_GLASS {
		r.Alert = true
	}
	return r
}

// field is one labelled value of the detail page.
type field struct{ Label, Value string }

// section is a titled group of fields.
type section struct {
	Title  string
	Fields []field
}

func procSection(title string, p *pb.Process) section {
	if p == nil {
		return section{Title: title, Fields: []field{{"", "(not recorded)"}}}
	}
	return section{Title: title, Fields: []field{
		{"executable", p.GetExePath()},
		{"comm", p.GetComm()},
		{"pid / tid", fmt.Sprintf("%d / %d", p.GetPid(), p.GetTid())},
		{"uid / euid", fmt.Sprintf("%d / %d", p.GetUid(), p.GetEuid())},
		{"cgroup / unit", p.GetCgroupPath()},
		{"cgroup id", strconv.FormatUint(p.GetCgroupId(), 10)},
		{"executable dev:inode", fmt.Sprintf("%#x:%d", p.GetExeDev(), p.GetExeInode())},
	}}
}

func lower(e fmt.Stringer, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(e.String(), prefix))
}

// detailSections lays out everything an event says.
func detailSections(se *pb.StoredEvent) []section {
	ev := se.GetEvent()
	head := section{Title: "Event", Fields: []field{
		{"host", ev.GetHost()},
		{"sequence number", strconv.FormatUint(ev.GetSeq(), 10)},
		{"time", fmtTime(ev.GetTime())},
		{"kind", kindLabel(pb.KindOf(ev))},
		{"agent version", ev.GetAgentVersion()},
		{"boot id", ev.GetBootId()},
	}}
	out := []section{head}
	out = append(out, kindSections(ev)...)
	out = append(out, section{Title: "Storage", Fields: []field{
		{"received", fmtTime(se.GetReceiveTime())},
		{"collector", se.GetCollector()},
		{"chain position", strconv.FormatUint(se.GetChainPosition(), 10)},
		{"chain hash", fmt.Sprintf("%x", se.GetChainHash())},
	}})
	return out
}

// kindSections lays out what is particular to the event's kind (none for an unknown kind).
func kindSections(ev *pb.Event) []section {
	switch k := ev.GetKind().(type) {
	case *pb.Event_MemoryAccess:
		return memoryAccessSections(k.MemoryAccess)
	case *pb.Event_ProtectionChange:
		return protectionChangeSections(k.ProtectionChange)
	case *pb.Event_CoreDump:
		return coreDumpSections(k.CoreDump)
	case *pb.Event_KeyFileAccess:
		return keyFileAccessSections(k.KeyFileAccess)
	case *pb.Event_SideDoor:
		return sideDoorSections(k.SideDoor)
	case *pb.Event_BreakGlass:
		return breakGlassSections(k.BreakGlass)
	case *pb.Event_AgentHealth:
		return agentHealthSections(k.AgentHealth)
	case *pb.Event_LossReport:
		return lossReportSections(k.LossReport)
	case *pb.Event_KeyMaterialFound:
		return keyMaterialFoundSections(k.KeyMaterialFound)
	case *pb.Event_KeyFingerprints:
		return keyFingerprintsSections(k.KeyFingerprints)
	}
	return nil
}

// memoryAccessSections: the decision, the accessor and the target, and for an in-kernel aggregate
// what it counts.
func memoryAccessSections(m *pb.MemoryAccess) []section {
	var agg []section
	if m.GetCount() > 1 {
		agg = []section{{Title: "Aggregate of repeated attempts", Fields: []field{
			{"attempts", strconv.FormatUint(m.GetCount(), 10)},
			{"first attempt", m.GetFirstTime().AsTime().UTC().Format(timeLayout)},
			{"last attempt", m.GetLastTime().AsTime().UTC().Format(timeLayout)},
			{"accessor processes", strconv.FormatUint(m.GetAccessorProcesses(), 10)},
			{"last accessor pid", strconv.FormatUint(uint64(m.GetLastAccessorPid()), 10)},
		}}}
	}
	return append(agg, section{Title: "Decision", Fields: []field{
		{"decision", decisionLabel(m.GetDecision())},
		{"rule", m.GetRule()},
		{"rule mode", lower(m.GetPolicyMode(), "POLICY_MODE_")},
		{"operation", lower(m.GetOperation(), "ACCESS_OPERATION_")},
		{"/proc path", m.GetProcPath()},
		{"access mode", fmt.Sprintf("%#x %s", m.GetAccessMode(), strings.Join(m.GetAccessModeNames(), " "))},
		{"detail", m.GetDetail()},
	}}, procSection("Accessor", m.GetAccessor()), procSection("Target", m.GetTarget()))
}

// protectionChangeSections: the protection state and the process.
func protectionChangeSections(p *pb.ProtectionChange) []section {
	return []section{{Title: "Protection", Fields: []field{
		{"state", lower(p.GetState(), "PROTECTION_STATE_")},
		{"reason", lower(p.GetReason(), "PROTECTION_REASON_")},
		{"rule", p.GetRule()},
		{"key file", p.GetKeyFilePath()},
		{"detail", p.GetDetail()},
	}}, procSection("Process", p.GetProcess())}
}

// coreDumpSections: the core dump, what was redacted from it, and the process.
func coreDumpSections(c *pb.CoreDump) []section {
	red := section{Title: "Redacted"}
	for _, r := range c.GetRedacted() {
		red.Fields = append(red.Fields, field{r.GetKind(), fmt.Sprintf("%d bytes", r.GetBytes())})
	}
	if len(red.Fields) == 0 {
		red.Fields = []field{{"", "nothing (no redaction recorded)"}}
	}
	return []section{{Title: "Core dump", Fields: []field{
		{"action", lower(c.GetAction(), "CORE_DUMP_ACTION_")},
		{"signal", strconv.Itoa(int(c.GetSignal()))},
		{"rule", c.GetRule()},
		{"reason", c.GetReason()},
		{"verifier verdict", c.GetVerifierVerdict()},
		{"destination", c.GetDestination()},
	}}, red, procSection("Process", c.GetProcess())}
}

// keyFileAccessSections: the key file decision and the process.
func keyFileAccessSections(f *pb.KeyFileAccess) []section {
	return []section{{Title: "Key file", Fields: []field{
		{"decision", decisionLabel(f.GetDecision())},
		{"rule", f.GetRule()},
		{"rule mode", lower(f.GetPolicyMode(), "POLICY_MODE_")},
		{"path", f.GetPath()},
		{"dev:inode", fmt.Sprintf("%#x:%d", f.GetDev(), f.GetInode())},
		{"open flags", fmt.Sprintf("%#o", f.GetOpenFlags())},
		{"detail", f.GetDetail()},
	}}, procSection("Process", f.GetProcess())}
}

// sideDoorSections: the side door decision, the accessor and, when recorded, the target.
func sideDoorSections(s *pb.SideDoor) []section {
	out := []section{{Title: "Side door", Fields: []field{
		{"route", lower(s.GetKind(), "SIDE_DOOR_KIND_")},
		{"decision", decisionLabel(s.GetDecision())},
		{"rule", s.GetRule()},
		{"detail", s.GetDetail()},
	}}, procSection("Accessor", s.GetAccessor())}
	if s.GetTarget() != nil {
		out = append(out, procSection("Target", s.GetTarget()))
	}
	return out
}

// breakGlassSections: the break-glass grant.
func breakGlassSections(b *pb.BreakGlass) []section {
	return []section{{Title: "Break glass", Fields: []field{
		{"state", lower(b.GetState(), "BREAK_GLASS_STATE_")},
		{"operator", b.GetOperator()},
		{"accessor executable", b.GetAccessorExePath()},
		{"accessor uid", strconv.FormatUint(uint64(b.GetAccessorUid()), 10)},
		{"rule", b.GetRule()},
		{"reason", b.GetReason()},
		{"expires", fmtTime(b.GetExpireTime())},
	}}}
}

// agentHealthSections: the agent's health and, if any, its posture findings.
func agentHealthSections(h *pb.AgentHealth) []section {
	out := []section{{Title: "Agent health", Fields: []field{
		{"state", lower(h.GetState(), "AGENT_STATE_")},
		{"agent version", h.GetAgentVersion()},
		{"kernel", h.GetKernelRelease()},
		{"BPF LSM active", yesNo(h.GetLsmActive())},
		{"enforcement pinned", yesNo(h.GetEnforcementPinned())},
		{"protected processes", strconv.FormatUint(uint64(h.GetProtectedProcessCount()), 10)},
		{"detail", h.GetDetail()},
	}}}
	fs := section{Title: "Posture findings"}
	for _, f := range h.GetFindings() {
		fs.Fields = append(fs.Fields, field{f.GetName(), fmt.Sprintf("%s [%s] %s", f.GetValue(), lower(f.GetSeverity(), "SEVERITY_"), f.GetRemediation())})
	}
	if len(fs.Fields) > 0 {
		out = append(out, fs)
	}
	return out
}

// lossReportSections: what was lost, per kind, and the evicted sequence ranges.
func lossReportSections(l *pb.LossReport) []section {
	ls := section{Title: "Loss", Fields: []field{
		{"source", lower(l.GetSource(), "LOSS_SOURCE_")},
		{"events lost", strconv.FormatUint(l.GetCount(), 10)},
		{"window", fmtTime(l.GetWindowStartTime()) + " – " + fmtTime(l.GetWindowEndTime())},
	}}
	for _, pk := range l.GetPerKind() {
		ls.Fields = append(ls.Fields, field{kindLabel(pk.GetKind()), strconv.FormatUint(pk.GetCount(), 10)})
	}
	for _, r := range l.GetEvicted() {
		ls.Fields = append(ls.Fields, field{"evicted seq", fmt.Sprintf("%d–%d", r.GetFirst(), r.GetLast())})
	}
	return []section{ls}
}

// keyMaterialFoundSections: where key material was found on disk and what became of it.
func keyMaterialFoundSections(m *pb.KeyMaterialFound) []section {
	return []section{{Title: "Key material found", Fields: []field{
		{"file", m.GetPath()},
		{"compression", m.GetCompression()},
		{"offset", strconv.FormatUint(m.GetOffset(), 10)},
		{"length", strconv.FormatUint(uint64(m.GetLength()), 10)},
		{"encoding", m.GetEncoding()},
		{"key", m.GetKey()},
		{"key fingerprint", m.GetKeyFingerprint()},
		{"findings in the file", strconv.FormatUint(uint64(m.GetFileFindings()), 10)},
		{"quarantined to", m.GetQuarantinePath()},
	}}}
}

// keyFingerprintsSections: the names of the fingerprinted keys.
func keyFingerprintsSections(k *pb.KeyFingerprints) []section {
	fs := section{Title: "Key fingerprints"}
	for _, key := range k.GetKeys() {
		fs.Fields = append(fs.Fields, field{"key", key.GetName()})
	}
	return []section{fs}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func rawJSON(se *pb.StoredEvent) string {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(se.GetEvent())
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func ago(t time.Time, now time.Time) string {
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func itoa(n int) string { return strconv.Itoa(n) }
