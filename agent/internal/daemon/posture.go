package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/agent/internal/posture"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// posture checks the host, every protected process and every key file of the policy that exists. It
// also returns how many processes are protected.
func (a *Agent) posture() ([]posture.Finding, int) {
	in := a.postureInput()
	fs := a.postureChecker().Check(in)
	if f, ok := a.exportFinding(); ok {
		fs = append(fs, f)
	}
	return fs, len(in.Processes)
}

// exportFinding is a high finding while events cannot be delivered to the collector, so the problem
// shows in keyguard status and in health events (sent once delivery works again, dating the outage).
func (a *Agent) exportFinding() (posture.Finding, bool) {
	if a.exp == nil {
		return posture.Finding{}, false
	}
	pr := a.exp.Stats().Problem
	if pr == nil {
		return posture.Finding{}, false
	}
	return posture.Finding{Name: "export", Value: "not delivering: " + pr.Reason, Severity: posture.High,
		Remediation: pr.Advice + " (since " + pr.Since.UTC().Format(time.RFC3339) + ": " + pr.Error + ")"}, true
}

// eventProcesses bounds the per-process findings a health event carries (see posture.Summarize).
const eventProcesses = 16

// eventPosture is the posture a health event carries.
func (a *Agent) eventPosture() []posture.Finding {
	fs, _ := a.posture()
	return posture.Summarize(fs, eventProcesses)
}

// postureChecker expects keyguard's handler as core_pattern when a rule redacts dumps.
func (a *Agent) postureChecker() posture.Checker {
	c := posture.Checker{KernelMemoryGuarded: a.pol.SideDoors == policy.Enforce, ModulesGuarded: a.pol.Modules == policy.ModulesDeny}
	if a.guard != nil {
		c.ExecDigest, c.FSVerityKfunc = a.guard.Variants.Digest, a.guard.Variants.FSVerityKfunc
	}
	for _, r := range a.pol.Rules {
		if r.Strict {
			c.StrictRules = append(c.StrictRules, r.Name)
		}
	}
	for _, r := range a.pol.Rules {
		if r.Dumps != policy.DumpRedact {
			continue
		}
		if exe, err := os.Executable(); err == nil {
			if exe, err = filepath.EvalSymlinks(exe); err == nil {
				c.HandlerPattern = corepattern.Pattern(exe)
			}
		}
		break
	}
	return c
}

// postureInput lists the protected processes (the kernel's marks) and the policy's key files; a key
// file's service users are the users of its rule's protected processes.
func (a *Agent) postureInput() posture.Input {
	a.mu.Lock()
	rs, res := a.rs, a.res
	a.mu.Unlock()
	var in posture.Input
	users := map[string][]uint32{}
	pids, _ := a.proc.PIDs()
	for _, pid := range pids {
		m, ok, err := a.guard.MarkOf(pid)
		if err != nil || !ok {
			continue
		}
		rule := a.RuleName(m.RuleId)
		in.Processes = append(in.Processes, posture.Target{PID: pid, Rule: rule, Dumps: policy.DumpMode(rs.Rules[m.RuleId].Dumps).String()})
		if st, err := a.proc.Status(pid); err == nil && !slices.Contains(users[rule], st.EUID) {
			users[rule] = append(users[rule], st.EUID)
		}
	}
	if res != nil {
		for id, set := range res.KeyFiles {
			rule := a.RuleName(id)
			anyOpener := false
			if r := res.Policy.Rule(id); r != nil {
				anyOpener = r.AnyOpener
			}
			for _, path := range set {
				in.KeyFiles = append(in.KeyFiles, posture.KeyFile{Path: path, Rule: rule, ServiceUIDs: users[rule], AnyOpener: anyOpener})
			}
		}
	}
	sort.Slice(in.KeyFiles, func(i, j int) bool { return in.KeyFiles[i].Path < in.KeyFiles[j].Path })
	return in
}

func (a *Agent) postureInterval() time.Duration {
	if a.cfg.PostureInterval <= 0 {
		return time.Minute
	}
	return a.cfg.PostureInterval
}

// postureWatcher returns the periodic posture check: a change (a finding that appeared, went away, or
// changed value or severity; see posture.Changes) is reported as a "running" health event carrying the
// current findings. start is what the start event reported.
func (a *Agent) postureWatcher(findings []posture.Finding, start *keyguardv1.AgentHealth) func(time.Time) {
	last := findings
	return func(time.Time) {
		cur, protected := a.posture()
		appeared, gone, changed := posture.Changes(last, cur)
		if len(appeared)+len(gone)+len(changed) == 0 {
			return
		}
		last = cur
		msg := postureChange(appeared, gone, changed)
		a.log.Info("host posture changed", "change", msg)
		ev := proto.CloneOf(start)
		ev.State, ev.ProtectedProcessCount, ev.Detail = keyguardv1.AgentState_AGENT_STATE_RUNNING, uint32(protected), msg
		ev.Findings = events.Findings(posture.Summarize(cur, eventProcesses))
		a.emit(events.Health(ev))
	}
}

// postureChange describes a change, e.g. "posture changed: new kdump=... (critical); gone swap:/dev/sda2;
// changed kernel.perf_event_paranoid=-1 (medium)".
func postureChange(appeared, gone, changed []posture.Finding) string {
	var parts []string
	list := func(what string, fs []posture.Finding, withValue bool) {
		if len(fs) == 0 {
			return
		}
		var s []string
		for _, f := range posture.Worst(fs) {
			if withValue {
				s = append(s, fmt.Sprintf("%s=%s (%s)", f.Name, f.Value, f.Severity))
			} else {
				s = append(s, f.Name)
			}
		}
		parts = append(parts, what+" "+strings.Join(s, ", "))
	}
	list("new", appeared, true)
	list("changed", changed, true)
	list("gone", gone, false)
	return "posture changed: " + strings.Join(parts, "; ")
}
