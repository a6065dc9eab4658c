// Package guard holds keyguard's VM tests of memory protection: the real agent binary enforcing its
// BPF LSM programs on a stock kernel, attacked by real processes. They run only inside testvm
// (KEYGUARD_VM=1), where they must pass; on any other machine they skip.
package guard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

const (
	dir       = "/tmp/kg"
	agentBin  = "/bin/keyguard-agent"
	cliBin    = "/bin/keyguard"
	procBin   = "/bin/testproc"
	eventsLog = dir + "/events.jsonl"
	pinPath   = "/sys/fs/bpf/keyguard"
	ctlSock   = dir + "/agent.sock"
	user      = 1000
)

var (
	victimEnforce = dir + "/victim-enforce"
	victimLink    = dir + "/victim-enforce-link" // hard link: same file, also protected
	victimCopy    = dir + "/victim-enforce-copy" // copy: another file, not protected
	victimAudit   = dir + "/victim-audit"
	victimPlain   = dir + "/victim-plain"
	victimRedact  = dir + "/victim-redact"
	debugger      = dir + "/debugger" // allowed accessor (uid 0) of the signer rule
	bpfTool       = dir + "/bpf-tool" // allowed BPF loader (uid 0)
	keyFile       = dir + "/keys/signing.pem"
	holderExe     = victimRedact           // the redactor rule's executable: its key files are its alone
	holderKey     = dir + "/hkeys/h.pem"   // the redactor rule's key file
	racerExe      = dir + "/racer"         // opens a keyholder key file (openers: any): protected by that open
	racerKey      = dir + "/keys/race.pem" // a keyholder rule key file
)

// policyYAML is the suite's policy; %[1]s is the test binary, which sets core_pattern for the dump tests
// and is the key manager and package manager.
const policyYAML = `version: 1
bpf_loaders:
  - executable: /tmp/kg/bpf-tool
    uid: 0
sysctl_writers:
  - executable: %[1]s
    uid: 0
key_managers:
  - executable: %[1]s
    uid: 0
package_managers:
  - executable: %[1]s
    uid: 0
rules:
  - name: signer
    mode: enforce
    match:
      executables: [/tmp/kg/victim-enforce]
    allow:
      - executable: /tmp/kg/debugger
        uid: 0
  - name: signer-audit
    mode: audit
    match:
      executables: [/tmp/kg/victim-audit]
  - name: keyholder
    mode: enforce
    match:
      key_files: ["/tmp/kg/keys/*.pem"]
    openers: any
  - name: container
    mode: enforce
    match:
      cgroups: [/kg-signer]
  - name: redactor
    mode: enforce
    dumps: redact
    match:
      executables: [/tmp/kg/victim-redact]
      key_files: ["/tmp/kg/hkeys/*.pem"]
    public_keys: ["/tmp/kg/testpub/*.pem"]
`

var agent *exec.Cmd
var early *victim // started before the agent: found by the procfs scan

func TestMain(m *testing.M) {
	if os.Getenv("KEYGUARD_VM") != "1" {
		fmt.Println("skipping guard VM tests: they run inside testvm (make vmtest)")
		os.Exit(0)
	}
	if err := setup(); err != nil {
		fmt.Println("setup failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	stopAgent()
	early.kill()
	os.Exit(code)
}

func setup() error {
	// Yama must not decide before keyguard does (scope 1 would deny unprivileged attaches first).
	if err := os.WriteFile("/proc/sys/kernel/yama/ptrace_scope", []byte("0"), 0); err != nil {
		return err
	}
	if err := os.MkdirAll(dir+"/keys", 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(dir+"/cwd", 0o777); err != nil {
		return err
	}
	os.Chmod(dir, 0o755)
	for _, p := range []string{victimEnforce, victimCopy, victimAudit, victimPlain, victimRedact, debugger, bpfTool, racerExe} {
		if err := copyFile(procBin, p); err != nil {
			return err
		}
	}
	if err := os.Link(victimEnforce, victimLink); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, []byte("-----BEGIN PRIVATE KEY-----\ntest\n-----END PRIVATE KEY-----\n"), 0o644); err != nil {
		return err
	}
	if err := writeKeyFiles(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.WriteFile(dir+"/policy.yaml", []byte(fmt.Sprintf(policyYAML, self)), 0o644); err != nil {
		return err
	}
	if err := writeOperatorKey(); err != nil {
		return err
	}
	if err := writeTestKeys(); err != nil {
		return err
	}
	early, err = startVictimErr(victimEnforce, 0)
	if err != nil {
		return fmt.Errorf("start early victim: %w", err)
	}
	return startAgent()
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func startAgent(extra ...string) error {
	before := countLines(eventsLog)
	agent = exec.Command(agentBin, append([]string{"run", "-policy", dir + "/policy.yaml", "-events", eventsLog,
		"-state-dir", dir + "/state", "-control-socket", ctlSock, "-operator-key", operatorPub, "-posture-interval", "3s"}, extra...)...)
	agent.Stdout = os.Stdout
	agent.Stderr = os.Stdout
	if err := agent.Start(); err != nil {
		return err
	}
	// Ready once it reported its health (after attaching and scanning).
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range readEvents()[before:] {
			if ev.Kind == "health" && (ev.Health.State == "started" || ev.Health.State == "adopted") {
				return nil
			}
		}
		if agent.ProcessState != nil {
			return fmt.Errorf("agent exited")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("agent not ready after 60s")
}

func stopAgent() {
	if agent != nil && agent.Process != nil {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
	}
}

// --- events -------------------------------------------------------------------------------------

type proc struct {
	PID        uint32
	TID        uint32
	Comm       string
	Executable string
	UID        uint32
	Cgroup     string
}

// health is what the assertions read from an AgentHealth.
type health struct {
	State   string
	Message string
	Posture []finding
	Gap     *gap
}

type gap struct {
	PreviousBootID string
	BootID         string
	LastSeen       time.Time
}

// event is what the assertions read from a keyguard.v1 event in the agent's log (see view): the kind,
// operation, decision and states by their short lower-case names.
type event struct {
	Kind       string
	Operation  string
	Decision   string
	Rule       string
	Reason     string
	Detail     string
	AccessMode uint32
	Accessor   *proc
	Target     *proc
	Health     *health
	Dump       *struct {
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

func countLines(path string) int { return len(readEvents()) }

// readEvents reads the agent's event log (format version 2: a header line, then one protojson
// keyguard.v1.Event per line).
// eventCache holds the events parsed so far from the append-only event log, so that each poll parses
// only what the agent wrote since the last one (late in the suite the log holds tens of thousands of
// events, and parsing all of them on every poll took minutes under TCG).
var eventCache struct {
	sync.Mutex
	ino    uint64
	offset int64
	events []event
}

func readEvents() []event {
	c := &eventCache
	c.Lock()
	defer c.Unlock()
	f, err := os.Open(eventsLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	if ino := st.Sys().(*syscall.Stat_t).Ino; ino != c.ino || st.Size() < c.offset {
		c.ino, c.offset, c.events = ino, 0, nil
	}
	if _, err := f.Seek(c.offset, io.SeekStart); err != nil {
		return nil
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil
	}
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return c.events[:len(c.events):len(c.events)]
	}
	for i, line := range bytes.Split(data[:end], []byte("\n")) {
		if c.offset == 0 && i == 0 {
			if string(line) != `{"keyguard_event_log":2}` {
				return nil
			}
			continue
		}
		ev := &keyguardv1.Event{}
		if protojson.Unmarshal(line, ev) == nil {
			c.events = append(c.events, view(ev))
		}
	}
	c.offset += int64(end + 1)
	return c.events[:len(c.events):len(c.events)]
}

// short is an enum value's name without its prefix, in lower case: DECISION_DENIED -> denied.
func short(v interface{ String() string }, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(v.String(), prefix))
}

func procOf(p *keyguardv1.Process) *proc {
	if p == nil {
		return nil
	}
	return &proc{PID: p.GetPid(), TID: p.GetTid(), Comm: p.GetComm(), Executable: p.GetExePath(), UID: p.GetUid(), Cgroup: p.GetCgroupPath()}
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
func view(ev *keyguardv1.Event) event {
	var e event
	switch k := ev.GetKind().(type) {
	case *keyguardv1.Event_MemoryAccess:
		m := k.MemoryAccess
		e.Kind, e.Operation, e.Decision, e.Rule = "access", short(m.GetOperation(), "ACCESS_OPERATION_"), short(m.GetDecision(), "DECISION_"), m.GetRule()
		e.AccessMode, e.Accessor, e.Target, e.Detail = m.GetAccessMode(), procOf(m.GetAccessor()), procOf(m.GetTarget()), m.GetDetail()
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

func healthView(h *keyguardv1.AgentHealth) *health {
	out := &health{State: short(h.GetState(), "AGENT_STATE_"), Message: h.GetDetail()}
	for _, f := range h.GetFindings() {
		out.Posture = append(out.Posture, finding{Name: f.GetName(), Value: f.GetValue(),
			Severity: short(f.GetSeverity(), "SEVERITY_"), Remediation: f.GetRemediation()})
	}
	if g := h.GetGap(); g != nil {
		out.Gap = &gap{g.GetPreviousBootId(), g.GetBootId(), g.GetLapseStartTime().AsTime()}
	}
	return out
}

// waitEvent waits until an event matching pred is in the log (the agent flushes every 200 ms).
func waitEvent(t *testing.T, what string, pred func(event) bool) event {
	t.Helper()
	return waitEventAfter(t, 0, what, pred)
}

// waitEventAfter is waitEvent for events after the first skip ones.
func waitEventAfter(t *testing.T, skip int, what string, pred func(event) bool) event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		evs := readEvents()
		if skip > len(evs) {
			skip = len(evs)
		}
		for _, ev := range evs[skip:] {
			if pred(ev) {
				return ev
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Show what did arrive, to tell a missing event from a different one.
	raw, _ := os.ReadFile(eventsLog)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) > 4 {
		lines = lines[len(lines)-4:]
	}
	t.Fatalf("no event: %s (log has %d parsed events, last lines:\n%s)", what, len(readEvents()), strings.Join(lines, "\n"))
	return event{}
}

// --- victims and attackers ----------------------------------------------------------------------

type victim struct {
	cmd   *exec.Cmd
	pid   int
	tids  []int
	addr  string
	child int
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startVictim(t *testing.T, exe string, uid int, args ...string) *victim {
	t.Helper()
	v, err := startVictimErr(exe, uid, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.kill)
	return v
}

func startVictimErr(exe string, uid int, args ...string) (*victim, error) {
	cmd := exec.Command(exe, append([]string{"hold"}, args...)...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	stdout, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe()
	cmd.Stderr = os.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	v := &victim{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	if err := v.readLine(); err != nil {
		v.kill()
		return nil, err
	}
	return v, nil
}

// readLine parses "READY|WAITING pid=.. tids=.. addr=.. len=.. child=..".
func (v *victim) readLine() error {
	line, err := v.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("victim: %w (got %q)", err, line)
	}
	f := strings.Fields(line)
	if len(f) < 6 || (f[0] != "READY" && f[0] != "WAITING") {
		return fmt.Errorf("victim said %q", line)
	}
	for _, kv := range f[1:] {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "pid":
			v.pid, _ = strconv.Atoi(val)
		case "tids":
			v.tids = nil
			for _, s := range strings.Split(val, ",") {
				n, _ := strconv.Atoi(s)
				v.tids = append(v.tids, n)
			}
		case "addr":
			v.addr = val
		case "child":
			v.child, _ = strconv.Atoi(val)
		}
	}
	return nil
}

func (v *victim) kill() {
	if v.child != 0 {
		syscall.Kill(v.child, syscall.SIGKILL)
	}
	v.cmd.Process.Kill()
	v.cmd.Wait()
}

// attack runs "exe attack op pid tid addr" as uid and returns its pid and result ("OK n" or "ERR EPERM").
func attack(t *testing.T, exe string, uid int, op string, pid, tid int, addr string) (int, string) {
	t.Helper()
	cmd := exec.Command(exe, "attack", op, strconv.Itoa(pid), strconv.Itoa(tid), addr)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("attack %s: %v: %s", op, err, out.String())
	}
	return cmd.Process.Pid, strings.TrimSpace(out.String())
}

// --- the tests ----------------------------------------------------------------------------------

type readPath struct {
	op       string // testproc attack op
	thread   bool   // aims at a non-leader thread
	denied   string // result in enforce mode
	eventOp  string
	byThread bool // the kernel sees the thread (not the leader) as the target
}

var readPaths = []readPath{
	{"attach", false, "ERR EPERM", "ptrace_attach", false},
	{"attach", true, "ERR EPERM", "ptrace_attach", true},
	{"seize", false, "ERR EPERM", "ptrace_seize", false},
	{"seize", true, "ERR EPERM", "ptrace_seize", true},
	{"mem", false, "ERR EACCES", "proc_open", false},
	{"taskmem", true, "ERR EACCES", "proc_open", true},
	{"vmreadv", false, "ERR EPERM", "process_vm_readv", false},
	{"vmreadv", true, "ERR EPERM", "process_vm_readv", true},
	{"environ", false, "ERR EACCES", "proc_open", false},
	{"taskenviron", true, "ERR EACCES", "proc_open", true},
	{"pidfd_getfd", false, "ERR EPERM", "pidfd_getfd", false},
}

func TestReadPaths(t *testing.T) {
	for _, mode := range []struct {
		name, exe, rule, decision string
	}{
		{"enforce", victimEnforce, "signer", "denied"},
		{"audit", victimAudit, "signer-audit", "allowed_audit"},
	} {
		for _, uid := range []int{0, user} {
			t.Run(fmt.Sprintf("%s/uid%d", mode.name, uid), func(t *testing.T) {
				v := startVictim(t, mode.exe, uid, "-threads", "2")
				for _, p := range readPaths {
					tid := v.tids[0]
					if p.thread {
						tid = v.tids[1]
					}
					name := p.op
					if p.thread {
						name += "/thread"
					}
					t.Run(name, func(t *testing.T) {
						apid, res := attack(t, procBin, uid, p.op, v.pid, tid, v.addr)
						if mode.name == "enforce" && res != p.denied {
							t.Fatalf("enforce: %s on protected pid %d tid %d by uid %d: got %q, want %q", p.op, v.pid, tid, uid, res, p.denied)
						}
						if mode.name == "audit" && !strings.HasPrefix(res, "OK") {
							t.Fatalf("audit: %s must succeed, got %q", p.op, res)
						}
						wantTid := uint32(v.pid)
						if p.byThread {
							wantTid = uint32(tid)
						}
						ev := waitEvent(t, fmt.Sprintf("%s %s by pid %d", mode.decision, p.eventOp, apid), func(e event) bool {
							return e.Kind == "access" && e.Accessor != nil && e.Accessor.PID == uint32(apid) &&
								e.Target != nil && e.Target.PID == uint32(v.pid) && e.Operation == p.eventOp
						})
						if ev.Decision != mode.decision || ev.Rule != mode.rule {
							t.Errorf("event decision %q rule %q, want %q %q", ev.Decision, ev.Rule, mode.decision, mode.rule)
						}
						if ev.Accessor.UID != uint32(uid) || ev.Target.UID != uint32(uid) {
							t.Errorf("event uids accessor %d target %d, want %d", ev.Accessor.UID, ev.Target.UID, uid)
						}
						if ev.Target.TID != wantTid {
							t.Errorf("event target tid %d, want %d", ev.Target.TID, wantTid)
						}
						if ev.Accessor.Executable != procBin || ev.Target.Executable != mode.exe {
							t.Errorf("event executables accessor %q target %q, want %q %q", ev.Accessor.Executable, ev.Target.Executable, procBin, mode.exe)
						}
						if ev.Accessor.Comm != "testproc" || ev.AccessMode == 0 {
							t.Errorf("event accessor comm %q access mode %#x", ev.Accessor.Comm, ev.AccessMode)
						}
					})
				}
			})
		}
	}
}

// The process itself and its threads keep working; an unprotected neighbour stays readable.
func TestUnprotectedNeighbour(t *testing.T) {
	v := startVictim(t, victimPlain, 0, "-threads", "2")
	c := startVictim(t, victimCopy, 0) // a copy of the protected executable is another file
	for _, target := range []*victim{v, c} {
		for _, p := range readPaths {
			tid := target.tids[0]
			if p.thread && len(target.tids) > 1 {
				tid = target.tids[1]
			}
			_, res := attack(t, procBin, 0, p.op, target.pid, tid, target.addr)
			if !strings.HasPrefix(res, "OK") {
				t.Errorf("%s on unprotected pid %d: %q, want OK", p.op, target.pid, res)
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	for _, ev := range readEvents() {
		if ev.Kind == "access" && ev.Target != nil && (ev.Target.PID == uint32(v.pid) || ev.Target.PID == uint32(c.pid)) {
			t.Errorf("event for an unprotected process: %+v", ev)
		}
	}
}

func TestHardLinkIsProtected(t *testing.T) {
	v := startVictim(t, victimLink, 0)
	if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
		t.Fatalf("mem of a process run through a hard link of the protected executable: %q", res)
	}
}

func TestRunningBeforeAgentIsProtected(t *testing.T) {
	if _, res := attack(t, procBin, 0, "mem", early.pid, early.pid, early.addr); res != "ERR EACCES" {
		t.Fatalf("process started before the agent: %q, want ERR EACCES", res)
	}
	waitEvent(t, "protect event from the procfs scan", func(e event) bool {
		return e.Kind == "protect" && e.Target != nil && e.Target.PID == uint32(early.pid) && e.Reason == "procfs_scan"
	})
}

func TestAllowedAccessor(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	apid, res := attack(t, debugger, 0, "mem", v.pid, v.pid, v.addr)
	if !strings.HasPrefix(res, "OK") {
		t.Fatalf("allowed debugger (uid 0): %q, want OK", res)
	}
	waitEvent(t, "allowed_policy event", func(e event) bool {
		return e.Kind == "access" && e.Accessor != nil && e.Accessor.PID == uint32(apid) && e.Decision == "allowed_policy"
	})
	// The same executable under another uid is not allowed.
	w := startVictim(t, victimEnforce, user)
	if _, res := attack(t, debugger, user, "mem", w.pid, w.pid, w.addr); res != "ERR EACCES" {
		t.Fatalf("debugger as uid %d: %q, want ERR EACCES", user, res)
	}
}

func TestNoWindowAfterExec(t *testing.T) {
	for i := 0; i < 20; i++ {
		c := exec.Command(procBin, "exec-attack", victimEnforce)
		c.Stderr = os.Stdout
		out, err := c.Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != "ERR EACCES" {
			t.Fatalf("attack right after exec (round %d): %q, want ERR EACCES", i, got)
		}
	}
}

func TestForkChildInherits(t *testing.T) {
	v := startVictim(t, victimEnforce, 0, "-spawn", victimPlain)
	if v.child == 0 {
		t.Fatal("no child")
	}
	if _, res := attack(t, procBin, 0, "mem", v.child, v.child, ""); res != "ERR EACCES" {
		t.Fatalf("child of a protected process (unprotected executable): %q, want ERR EACCES", res)
	}
	ev := waitEvent(t, "denial for the child", func(e event) bool {
		return e.Kind == "access" && e.Target != nil && e.Target.PID == uint32(v.child)
	})
	if ev.Reason != "inherited" || ev.Rule != "signer" {
		t.Errorf("child's protection: reason %q rule %q, want inherited signer", ev.Reason, ev.Rule)
	}
}

func TestKeyFileOpenProtects(t *testing.T) {
	for _, thread := range []bool{false, true} {
		t.Run(fmt.Sprintf("thread=%v", thread), func(t *testing.T) {
			args := []string{"-keyfile", keyFile}
			if thread {
				args = append(args, "-keyfile-thread")
			}
			v := startVictim(t, victimPlain, 0, args...)
			if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
				t.Fatalf("right after opening a key file: %q, want ERR EACCES", res)
			}
			waitEvent(t, "protect event for the key file", func(e event) bool {
				return e.Kind == "protect" && e.Target != nil && e.Target.PID == uint32(v.pid) &&
					e.Reason == "key_file" && e.Rule == "keyholder" && e.Detail == "signing.pem"
			})
		})
	}
}

// A /proc/PID/mem opened before the process loaded its key must stop reading when it does.
func TestFileOpenedBeforeProtection(t *testing.T) {
	v := startVictim(t, victimPlain, 0, "-keyfile", keyFile, "-wait-stdin")
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", v.pid))
	if err != nil {
		t.Fatalf("open mem of the still unprotected process: %v", err)
	}
	defer f.Close()
	addr, _ := strconv.ParseUint(strings.TrimPrefix(v.addr, "0x"), 16, 64)
	buf := make([]byte, 16)
	if _, err := f.ReadAt(buf, int64(addr)); err != nil {
		t.Fatalf("read before protection: %v", err)
	}
	fmt.Fprintln(v.stdin, "go")
	if err := v.readLine(); err != nil {
		t.Fatal(err)
	}
	if n, err := f.ReadAt(buf, int64(addr)); err == nil {
		t.Fatalf("read through an fd opened before protection succeeded (%d bytes: %q)", n, buf[:n])
	}
	waitEvent(t, "proc_read denial", func(e event) bool {
		return e.Kind == "access" && e.Operation == "proc_read" && e.Target != nil && e.Target.PID == uint32(v.pid) && e.Decision == "denied"
	})
}

// A traced process may not exec a protected executable (the tracer would read it afterwards).
func TestTracedExecRefused(t *testing.T) {
	cmd := exec.Command(victimEnforce, "hold")
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	err := cmd.Start()
	if err == nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("exec of a protected executable under ptrace succeeded")
	}
	waitEvent(t, "exec_traced denial", func(e event) bool {
		return e.Kind == "access" && e.Operation == "exec_traced" && e.Decision == "denied"
	})
}

func TestBreakGlass(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	tool := dir + "/breakglass-tool"
	if err := copyFile(procBin, tool); err != nil {
		t.Fatal(err)
	}
	if _, res := attack(t, tool, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
		t.Fatalf("before the grant: %q", res)
	}
	uid := int64(0)
	grant := optoken.Claims{Action: optoken.ActionBreakGlass, Host: hostname(t), Operator: "alice",
		Reason: "incident 42: inspect a hung signer", Rule: "signer", Executable: tool, UID: &uid, Duration: "3s"}
	tok := signToken(t, operatorKey, grant)
	out, err := breakGlass(tok)
	if err != nil {
		t.Fatalf("break-glass: %v: %s", err, out)
	}
	waitEvent(t, "break-glass granted event", func(e event) bool {
		return e.Kind == "break_glass" && e.BreakGlass != nil && e.BreakGlass.Action == "granted" &&
			e.BreakGlass.Reason == "incident 42: inspect a hung signer"
	})
	apid, res := attack(t, tool, 0, "mem", v.pid, v.pid, v.addr)
	if !strings.HasPrefix(res, "OK") {
		t.Fatalf("during the grant: %q, want OK", res)
	}
	waitEvent(t, "allowed_break_glass event", func(e event) bool {
		return e.Kind == "access" && e.Accessor != nil && e.Accessor.PID == uint32(apid) && e.Decision == "allowed_break_glass"
	})
	time.Sleep(3500 * time.Millisecond)
	if _, res := attack(t, tool, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
		t.Fatalf("after the grant expired: %q", res)
	}
	waitEvent(t, "break-glass expired event", func(e event) bool {
		return e.Kind == "break_glass" && e.BreakGlass != nil && e.BreakGlass.Action == "expired"
	})
	// Refused: the same token again, a token for another host, one signed by another key, none at all.
	grant.Host = "another-host"
	for name, tok := range map[string]string{"reused": tok, "other host": signToken(t, operatorKey, grant), "other key": signToken(t, strangerKey, grant)} {
		before := len(readEvents())
		if out, err := breakGlass(tok); err == nil {
			t.Fatalf("break-glass with a %s token was accepted: %s", name, out)
		}
		waitEventAfter(t, before, "break_glass_refused event", func(e event) bool {
			return e.Kind == "side_door" && e.Operation == "break_glass_refused" && e.Decision == "denied"
		})
	}
	if out, err := exec.Command(cliBin, "break-glass", "-socket", ctlSock).CombinedOutput(); err == nil {
		t.Fatalf("break-glass without a token was accepted: %s", out)
	}
	if _, res := attack(t, tool, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
		t.Fatalf("after refused grants: %q", res)
	}
}

func TestStatus(t *testing.T) {
	out, err := exec.Command(cliBin, "status", "-socket", ctlSock, "-json").Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st struct {
		Rules    []string          `json:"rules"`
		Counters map[string]uint64 `json:"counters"`
		PIDs     []int             `json:"protected_pids"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v: %s", err, out)
	}
	if len(st.Rules) != 5 || st.Counters["denied"] == 0 {
		t.Errorf("status: rules %v counters %v", st.Rules, st.Counters)
	}
	found := false
	for _, p := range st.PIDs {
		found = found || p == early.pid
	}
	if !found {
		t.Errorf("status does not list protected pid %d: %v", early.pid, st.PIDs)
	}
}

// Enforcement holds while the agent is SIGKILLed and until it is restarted and adopts the pins.
func TestAgentKilledEnforcementHolds(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	loop := exec.Command(procBin, "loop-attack", strconv.Itoa(v.pid), v.addr, "6")
	var out strings.Builder
	loop.Stdout = &out
	if err := loop.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	agent.Process.Kill()
	agent.Wait()
	// While no agent runs, new protected processes are still marked by the kernel.
	w := startVictim(t, victimEnforce, 0)
	if _, res := attack(t, procBin, 0, "mem", w.pid, w.pid, w.addr); res != "ERR EACCES" {
		t.Errorf("new protected process while the agent is down: %q", res)
	}
	time.Sleep(time.Second)
	if err := startAgent(); err != nil {
		t.Fatal(err)
	}
	if err := loop.Wait(); err != nil {
		t.Fatal(err)
	}
	var ok, fail int
	fmt.Sscanf(out.String(), "SUCCESSES %d FAILURES %d", &ok, &fail)
	if ok != 0 || fail == 0 {
		t.Fatalf("attack loop across the agent restart: %d successes, %d failures", ok, fail)
	}
	t.Logf("attack loop across SIGKILL and restart: %d attempts, all denied", fail)
	waitEvent(t, "adopted health event", func(e event) bool {
		return e.Kind == "health" && e.Health != nil && e.Health.State == "adopted"
	})
	// The denials made while the agent was down were kept in the pinned ring buffer and read now.
	waitEvent(t, "denial of the process started while the agent was down", func(e event) bool {
		return e.Kind == "access" && e.Target != nil && e.Target.PID == uint32(w.pid) && e.Decision == "denied"
	})
}

func TestBadPolicyRefused(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "version: 1\nrules:\n  - name: x\n    mood: enforce\n    match:\n      executables: [/bin/testproc]\n", "bad.yaml:4"},
		{"missing executable", "version: 1\nrules:\n  - name: x\n    match:\n      executables: [/nonexistent/signer]\n", "/nonexistent/signer"},
		{"bad mode", "version: 1\nrules:\n  - name: x\n    mode: block-everything\n    match:\n      executables: [/bin/testproc]\n", "bad.yaml:4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o644)
			cmd := exec.Command(agentBin, "run", "-policy", p, "-events", dir+"/bad-events.jsonl", "-pin-path", "/sys/fs/bpf/kg-bad", "-control-socket", "")
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("agent started with a bad policy: %s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("error does not name %q:\n%s", tc.want, out)
			}
			if _, err := os.Stat("/sys/fs/bpf/kg-bad"); err == nil {
				t.Fatal("agent pinned programs despite a bad policy")
			}
		})
	}
}

// A protected process keeps full access to itself, from any of its threads.
func TestProtectedProcessReadsItself(t *testing.T) {
	out, err := exec.Command(victimEnforce, "selfread").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		t.Fatalf("protected process reading its own memory: %v: %s", err, out)
	}
}
