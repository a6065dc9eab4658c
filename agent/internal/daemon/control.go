package daemon

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/events"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// handleControl answers one request on the control socket (control.Serve checked that the peer is root).
func (a *Agent) handleControl(req control.Request, peerPID int) (control.Response, func()) {
	var resp control.Response
	var err error
	switch req.Op {
	case "status":
		resp.Status, err = a.status()
	case "break-glass":
		resp.Grant, err = a.op.BreakGlass(req.Token)
	case "revoke":
		err = a.op.Revoke(req.GrantID, "revoked")
	case "uninstall":
		if err = a.op.Uninstall(req.Token); err == nil {
			return resp, a.stop // the agent exits once the answer is out
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
				Decision: keyguardv1.Decision_DECISION_DENIED, Accessor: procInfo(a.proc, peerPID)}))
		}
	}
	return resp, nil
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
	s.ActiveGrants = a.op.Grants()
	s.ProtectedPIDs, _ = a.protectedPIDs()
	s.ProtectedNow = len(s.ProtectedPIDs)
	if a.exp != nil {
		st := a.exp.Stats()
		s.Export = &control.Export{Collector: a.cfg.Export.Collector, Connected: st.Connected, LastAck: st.LastAck, Failures: st.Failures}
		if pr := st.Problem; pr != nil {
			s.Export.Problem, s.Export.Advice, s.Export.Since = pr.Reason+": "+pr.Error, pr.Advice, pr.Since
		}
	}
	s.Posture, _ = a.posture()
	return s, nil
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
	a.log.Warn("not every event was acknowledged by the collector in time; they stay in the spool")
}
