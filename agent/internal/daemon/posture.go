package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
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
	return a.postureChecker().Check(in), len(in.Processes)
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
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		m, ok, err := a.guard.MarkOf(pid)
		if err != nil || !ok {
			continue
		}
		rule := a.RuleName(m.RuleId)
		in.Processes = append(in.Processes, posture.Target{PID: pid, Rule: rule, Dumps: policy.DumpMode(rs.Rules[m.RuleId].Dumps).String()})
		if euid, ok := procEUID(pid); ok && !slices.Contains(users[rule], euid) {
			users[rule] = append(users[rule], euid)
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

func procEUID(pid int) (uint32, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			if f := strings.Fields(v); len(f) >= 2 {
				n, err := strconv.ParseUint(f[1], 10, 32)
				return uint32(n), err == nil
			}
		}
	}
	return 0, false
}

// watchPosture checks the posture every interval and reports a change (a finding that appeared, went
// away, or changed value or severity; see posture.Changes) as a "running" health event carrying the
// current findings. start is what the start event reported.
func (a *Agent) watchPosture(ctx context.Context, start []posture.Finding, interval time.Duration, h *keyguardv1.AgentHealth) {
	if interval <= 0 {
		interval = time.Minute
	}
	last := start
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, protected := a.posture()
		appeared, gone, changed := posture.Changes(last, cur)
		if len(appeared)+len(gone)+len(changed) == 0 {
			continue
		}
		last = cur
		msg := postureChange(appeared, gone, changed)
		a.log.Info("host posture changed", "change", msg)
		ev := proto.CloneOf(h)
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
