package daemon

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/events"
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
		if req.Dump == nil || req.Dump.Kind != events.KindDump || req.Dump.Dump == nil {
			err = errors.New("report-dump needs a core_dump event")
			break
		}
		ev := *req.Dump
		if ev.Rule == "" {
			ev.Rule = a.RuleName(ev.RuleID)
		}
		a.emit(ev)
	default:
		err = fmt.Errorf("unknown op %q (want status, break-glass or revoke)", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
		if req.Op == "uninstall" || req.Op == "break-glass" {
			// A refused attempt to switch protection off is itself worth an alarm.
			a.emit(events.Event{Time: time.Now(), Kind: events.KindSideDoor, Operation: strings.ReplaceAll(req.Op, "-", "_") + "_refused",
				Decision: "denied", Detail: err.Error(), Accessor: procInfo(a.proc, peerPID)})
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
