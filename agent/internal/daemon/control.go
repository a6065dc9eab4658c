package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/optoken"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// MaxBreakGlass is the longest exception a break-glass grant may give.
const MaxBreakGlass = 4 * time.Hour

type grant struct {
	control.Grant
	key loader.AccessorKey
}

func (a *Agent) serveControl(ctx context.Context) error {
	path := a.cfg.ControlSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	_ = os.Remove(path)
	old := unix.Umask(0o077)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go a.expireGrants(ctx)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go a.handleControl(c.(*net.UnixConn))
	}
}

func (a *Agent) handleControl(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	enc := json.NewEncoder(c)
	peer, peerPID, err := peerCred(c)
	if err != nil || peer != 0 {
		_ = enc.Encode(control.Response{Error: "only root may use the keyguard control socket"})
		return
	}
	var req control.Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		_ = enc.Encode(control.Response{Error: "bad request: " + err.Error()})
		return
	}
	var resp control.Response
	switch req.Op {
	case "status":
		resp.Status, err = a.status()
	case "break-glass":
		resp.Grant, err = a.breakGlass(req)
	case "revoke":
		err = a.revoke(req.GrantID, "revoked")
	case "uninstall":
		err = a.uninstall(req)
		if err == nil {
			_ = enc.Encode(resp)
			a.stop() // the agent exits once the answer is out
			return
		}
	case "report-dump":
		var cd *keyguardv1.CoreDump
		if req.Dump != nil {
			cd = req.Dump.GetCoreDump()
		}
		if cd == nil {
			err = errors.New("report-dump needs a core_dump event")
			break
		}
		if cd.Rule == "" {
			cd.Rule = a.RuleName(req.DumpRuleID)
		}
		a.emit(req.Dump.Event)
	default:
		err = fmt.Errorf("unknown op %q (want status, break-glass or revoke)", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
		if req.Op == "uninstall" || req.Op == "break-glass" {
			// A refused attempt to switch protection off is itself worth an alarm.
			a.emit(events.SideDoor(&keyguardv1.SideDoor{Kind: keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER,
				Detail:   strings.ReplaceAll(req.Op, "-", "_") + "_refused " + err.Error(),
				Decision: keyguardv1.Decision_DECISION_DENIED, Accessor: procInfo(int(peerPID))}))
		}
	}
	_ = enc.Encode(resp)
}

func peerCred(c *net.UnixConn) (uid uint32, pid int32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return cred.Uid, cred.Pid, nil
}

func (a *Agent) ruleID(name string) (uint32, bool) {
	for _, r := range a.pol.Rules {
		if r.Name == name {
			return r.ID, true
		}
	}
	return 0, false
}

func (a *Agent) breakGlass(tr control.Request) (*control.Grant, error) {
	if tr.Token == "" {
		return nil, errors.New("a break-glass grant needs a token signed by the operator key: " +
			"keyguard token sign -action break-glass -host HOST -rule RULE -executable PATH -uid N -for 15m -operator NAME -reason TEXT")
	}
	c, err := a.verifyToken(tr.Token, optoken.ActionBreakGlass)
	if err != nil {
		return nil, fmt.Errorf("break-glass token refused: %w", err)
	}
	req := control.Request{Op: "break-glass", Executable: c.Executable, UID: c.UID, Rule: c.Rule, Duration: c.Duration,
		Reason: c.Reason, Operator: c.Operator}
	if len(req.Reason) < 10 {
		return nil, errors.New("a break-glass grant needs a written reason of at least 10 characters (-reason)")
	}
	if req.Operator == "" {
		return nil, errors.New("a break-glass grant needs the operator's name (-operator)")
	}
	d, err := time.ParseDuration(req.Duration)
	if err != nil || d <= 0 || d > MaxBreakGlass {
		return nil, fmt.Errorf("duration %q: give a positive duration of at most %s, e.g. 15m", req.Duration, MaxBreakGlass)
	}
	id, ok := a.ruleID(req.Rule)
	if !ok {
		return nil, fmt.Errorf("no rule named %q in the policy", req.Rule)
	}
	if req.UID == nil || *req.UID < -1 || *req.UID > 0xfffffffe {
		return nil, errors.New("give the accessor's uid (-uid N, or -uid -1 for any uid)")
	}
	if !filepath.IsAbs(req.Executable) {
		return nil, fmt.Errorf("executable %q: give an absolute path", req.Executable)
	}
	fid, err := loader.StatFileID(req.Executable)
	if err != nil {
		return nil, fmt.Errorf("executable: %w", err)
	}
	key := loader.AccessorKey{Dev: fid.Dev, Ino: fid.Ino, RuleId: id, Uid: uint32(*req.UID)}
	if *req.UID == -1 {
		key.Uid = loader.AnyUID
	}
	if err := a.guard.UseToken(c.Nonce, c.ExpiresAt); err != nil {
		return nil, fmt.Errorf("break-glass token refused: %w", err)
	}
	a.mu.Lock()
	a.nextID++
	gid := uint64(time.Now().UnixNano())<<8 | a.nextID&0xff
	a.mu.Unlock()
	g := grant{Grant: control.Grant{ID: gid, Executable: req.Executable, UID: *req.UID, Rule: req.Rule, Reason: req.Reason,
		Operator: req.Operator, Expires: time.Now().Add(d)}, key: key}
	// The event is written before the exception takes effect.
	a.emit(breakGlassEvent("granted", g.Grant))
	if err := a.out.Flush(); err != nil {
		return nil, fmt.Errorf("could not record the grant, so it was not given: %w", err)
	}
	if err := a.guard.Grant(key, g.Expires, gid); err != nil {
		return nil, fmt.Errorf("write grant into the kernel: %w", err)
	}
	a.mu.Lock()
	a.grants[gid] = g
	a.mu.Unlock()
	return &g.Grant, nil
}

func (a *Agent) revoke(id uint64, action string) error {
	a.mu.Lock()
	g, ok := a.grants[id]
	delete(a.grants, id)
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("no active grant %d", id)
	}
	if err := a.guard.Revoke(g.key); err != nil {
		return err
	}
	a.emit(breakGlassEvent(action, g.Grant))
	return nil
}

// expireGrants removes grants whose time is up (the kernel already ignores them) and reports it.
func (a *Agent) expireGrants(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var due []uint64
			a.mu.Lock()
			for id, g := range a.grants {
				if now.After(g.Expires) {
					due = append(due, id)
				}
			}
			a.mu.Unlock()
			for _, id := range due {
				_ = a.revoke(id, "expired")
			}
		}
	}
}

// grantStates maps what happened to a grant to the API's state.
var grantStates = map[string]keyguardv1.BreakGlassState{
	"granted": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_GRANTED,
	"expired": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_EXPIRED,
	"revoked": keyguardv1.BreakGlassState_BREAK_GLASS_STATE_REVOKED,
}

func breakGlassEvent(action string, g control.Grant) *keyguardv1.Event {
	uid := uint32(g.UID)
	if g.UID < 0 {
		uid = ^uint32(0) // any uid
	}
	return events.BreakGlass(&keyguardv1.BreakGlass{
		Operator: g.Operator, AccessorExePath: g.Executable, AccessorUid: uid, Rule: g.Rule,
		Reason: g.Reason, State: grantStates[action], ExpireTime: timestamppb.New(g.Expires),
	})
}

// counterNames names the kernel's counters, by index (enum kg_counter).
var counterNames = []string{"denied", "allowed_audit", "allowed_policy", "allowed_break_glass", "noaudit_checks",
	"marked_exec", "marked_key_file", "inherited", "agent_reads", "dumps_blocked", "dumps_killed_bad_destination",
	"dumps_to_handler", "dumps_allowed", "tamper_refused", "bpf_loads_refused", "perf_refused"}

func (a *Agent) status() (*control.Status, error) {
	s := &control.Status{Version: a.cfg.Version, Build: a.guard.Build, Adopted: a.guard.Adopted, PinPath: a.cfg.Loader.PinPath,
		EventLog: a.cfg.EventLog, PolicyPath: a.cfg.PolicyPath, Counters: map[string]uint64{}}
	for _, r := range a.pol.Rules {
		s.Rules = append(s.Rules, r.Name)
	}
	cs, err := a.guard.Counters()
	if err != nil {
		return nil, err
	}
	for i, n := range counterNames {
		s.Counters[n] = cs[i]
	}
	if s.KernelLost, err = a.guard.Lost(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	for _, g := range a.grants {
		s.ActiveGrants = append(s.ActiveGrants, g.Grant)
	}
	a.mu.Unlock()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		if _, ok, err := a.guard.MarkOf(pid); err == nil && ok {
			s.ProtectedPIDs = append(s.ProtectedPIDs, pid)
		}
	}
	s.ProtectedNow = len(s.ProtectedPIDs)
	s.Posture, _ = a.posture()
	return s, nil
}

// uninstall removes keyguard on an operator's explicit request: the event is recorded (and given to
// the export pipeline) before anything is removed; then core_pattern is restored and every pin removed.
// Only the agent itself may remove the pins.
func (a *Agent) uninstall(tr control.Request) error {
	if tr.Token == "" {
		return errors.New("uninstall needs a token signed by the operator key: keyguard token sign -action uninstall -host HOST -operator NAME -reason TEXT")
	}
	c, err := a.verifyToken(tr.Token, optoken.ActionUninstall)
	if err != nil {
		return fmt.Errorf("uninstall token refused: %w", err)
	}
	if err := a.guard.UseToken(c.Nonce, c.ExpiresAt); err != nil {
		return fmt.Errorf("uninstall token refused: %w", err)
	}
	req := control.Request{Reason: c.Reason, Operator: c.Operator}
	a.emit(events.Health(&keyguardv1.AgentHealth{
		State: keyguardv1.AgentState_AGENT_STATE_UNINSTALLED, AgentVersion: a.cfg.Version,
		Detail: fmt.Sprintf("uninstalled by %s: %s", req.Operator, req.Reason)}))
	if err := a.out.Flush(); err != nil {
		return fmt.Errorf("could not record the uninstall, so nothing was removed: %w", err)
	}
	a.waitDelivered(10 * time.Second)
	if err := corepattern.Kernel.Restore(corepattern.RunDir); err != nil {
		return fmt.Errorf("restore core_pattern: %w", err)
	}
	if err := a.guard.Close(); err != nil {
		a.log.Warn("closing BPF objects", "error", err)
	}
	if err := loader.Uninstall(a.cfg.Loader.PinPath); err != nil {
		return err
	}
	a.log.Warn("keyguard uninstalled: protection removed", "operator", req.Operator, "reason", req.Reason)
	return nil
}

// waitDelivered waits until the collector acknowledged everything submitted so far, or d passes.
func (a *Agent) waitDelivered(d time.Duration) {
	if a.exp == nil {
		return
	}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		st := a.exp.Stats()
		if st.QueueLen == 0 && st.Spool.NextSeq > 0 && st.AckedSeq+1 >= st.Spool.NextSeq {
			return
		}
	}
	a.log.Warn("uninstall: not every event was acknowledged by the collector in time; they stay in the spool")
}
