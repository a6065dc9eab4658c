// Package daemon runs the keyguard agent: it loads the policy, probes the kernel, loads or adopts the
// pinned BPF programs, fills their rule maps, protects processes already running, and reports every
// decision the kernel makes.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/metrics"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/agent/internal/posture"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Config is the agent's configuration; main fills it from flags.
type Config struct {
	PolicyPath string
	Loader     loader.Config
	// EventLog is where events are written as JSON lines ("-" for standard output).
	EventLog string
	// StateDir keeps small state across restarts (the kernel loss count already reported).
	StateDir string
	// ControlSocket is the unix socket the keyguard CLI talks to ("" disables it).
	ControlSocket string
	Version       string
	// Export sends every event to a collector as well (nil: local event log only).
	Export *export.Config
	// DumpKeepStacks keeps thread stacks in redacted core dumps (backtraces need them; they can
	// hold key bytes that the detector does not recognise).
	DumpKeepStacks bool
	// PostureInterval is how often host posture is checked again (0: every minute).
	PostureInterval time.Duration
	// OperatorKeyPath is the operator's Ed25519 public key (PEM). It is pinned on the first start after
	// boot; uninstall, break-glass and policy changes need tokens signed by it.
	OperatorKeyPath string
	// PolicyTokenPath holds the token approving a changed policy (default PolicyPath + ".token").
	PolicyTokenPath string
	// Hostname is the name operator tokens must carry (default os.Hostname()).
	Hostname string
	// Metrics serves Prometheus metrics (see metrics.go; zero: off).
	Metrics MetricsConfig
}

// Agent is a running agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	guard *loader.Guard
	pol   *policy.Policy
	out   *events.JSONLines
	exp   *export.Pipeline

	mu     sync.Mutex
	rs     loader.RuleSet
	res    *policy.Resolved
	names  map[uint32]string
	grants map[uint64]grant
	nextID uint64
	opKey  []byte             // the installed operator key (ed25519.PublicKey)
	stop   context.CancelFunc // ends Run (after uninstall)

	met *metrics.Agent // nil unless Config.Metrics.Listen is set
}

// RuleName implements events.Names.
func (a *Agent) RuleName(id uint32) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n, ok := a.names[id]; ok {
		return n
	}
	if id == 0 {
		return ""
	}
	return fmt.Sprintf("removed-rule-%08x", id)
}

// Run starts the agent and blocks until ctx is done. Enforcement stays pinned after it returns.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if abs, err := filepath.Abs(cfg.PolicyPath); err == nil {
		cfg.PolicyPath = abs
	}
	if cfg.PolicyTokenPath == "" {
		cfg.PolicyTokenPath = cfg.PolicyPath + ".token"
	}
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host name for operator tokens: %w (pass -host-name)", err)
		}
		cfg.Hostname = h
	}
	pol, err := policy.Load(cfg.PolicyPath)
	if err != nil {
		return fmt.Errorf("the policy is invalid, the agent did not start:\n%w", err)
	}
	probe := loader.Probe(filepath.Dir(cfg.Loader.PinPath))
	if err := probe.Err(); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state folder: %w", err)
	}
	out, err := events.OpenJSONLines(cfg.EventLog, 0)
	if err != nil {
		return err
	}
	defer out.Close()

	g, err := loader.Load(cfg.Loader, log)
	if err != nil {
		return err
	}
	defer g.Close()
	a := &Agent{cfg: cfg, log: log, guard: g, pol: pol, out: out, grants: map[uint64]grant{}}
	gap, err := detectGap(cfg.StateDir, "/proc", time.Now())
	if err != nil {
		log.Warn("could not tell whether the host rebooted since the agent last ran", "error", err)
	}
	installEvents, err := a.checkInstall(pol.SHA256)
	if err != nil {
		a.emit(events.Health(&keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_REFUSED, AgentVersion: cfg.Version, Detail: err.Error()}))
		_ = out.Flush()
		return err
	}
	if cfg.Export != nil {
		ec := *cfg.Export
		ec.AgentVersion = cfg.Version
		if a.exp, err = export.New(ec, log); err != nil {
			return fmt.Errorf("event export: %w", err)
		}
		defer a.exp.Close()
	}
	stopMetrics, err := a.startMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	if err := g.RegisterAgent(os.Getpid(), cfg.Loader.PinPath); err != nil {
		return err
	}
	if err := g.RegisterOwn(cfg.Loader.PinPath); err != nil {
		return fmt.Errorf("register keyguard's own objects: %w", err)
	}
	if err := g.SetHandler("/proc/self/exe"); err != nil {
		return err
	}
	if err := a.installDumpHandler(); err != nil {
		return err
	}
	root, err := policy.CgroupRoot()
	if err != nil {
		log.Warn("no cgroup2 mount: cgroup selectors stay pending", "error", err)
	}
	watcher, err := policy.NewWatcher(pol, policy.WatchOptions{CgroupRoot: root, Logger: log})
	if err != nil {
		return err
	}
	if err := a.applyPolicy(watcher.Resolved()); err != nil {
		watcher.Close()
		return err
	}

	// Read events before scanning so that nothing the kernel reports from now on waits.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.stop = cancel
	rd := &events.Reader{
		Events: g.Maps.Events, Lost: g.Lost, Names: a, Log: log,
		LostBaseline:   a.readLostBaseline(),
		OnLostReported: a.writeLostBaseline,
	}
	var wg sync.WaitGroup
	if a.exp != nil {
		// Export runs on its own context so the final "stopping" event is still sent.
		expCtx, expCancel := context.WithCancel(context.Background())
		defer expCancel()
		expDone := make(chan struct{})
		go func() {
			defer close(expDone)
			if err := a.exp.Run(expCtx); err != nil {
				log.Error("event export stopped", "error", err)
			}
		}()
		defer func() {
			// Give the collector a moment to acknowledge what is queued; the spool keeps the rest.
			time.Sleep(500 * time.Millisecond)
			expCancel()
			<-expDone
		}()
	}
	readErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		readErr <- rd.Run(ctx, a.emit)
	}()

	// The agent is a protected process too: nobody reads its memory or takes its fds.
	if err := g.Mark(os.Getpid(), selfRuleID, loader.ReasonScan); err != nil {
		return fmt.Errorf("protect the agent itself: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.trustUpgrades(ctx)
	}()
	protected, err := a.scan()
	if err != nil {
		log.Warn("procfs scan incomplete", "error", err)
	}
	state := keyguardv1.AgentState_AGENT_STATE_STARTED
	if g.Adopted {
		state = keyguardv1.AgentState_AGENT_STATE_ADOPTED
	}
	for _, ev := range installEvents {
		a.emit(ev)
	}
	findings := a.eventPosture()
	hev := a.health(state, protected, probe, findings)
	if gap != nil {
		hev.Gap = gap.proto()
		hev.Detail = fmt.Sprintf("the host rebooted (boot %s → %s): keyguard did not enforce from %s (agent last seen) until %s",
			gap.PreviousBootID, gap.BootID, gap.LastSeen.Format(time.RFC3339), gap.Resumed.Format(time.RFC3339))
		log.Warn("protection gap across a reboot", "last_seen", gap.LastSeen, "boot_time", gap.BootTime, "resumed", gap.Resumed)
	}
	a.emit(events.Health(hev))
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchPosture(ctx, findings, cfg.PostureInterval, hev)
	}()
	if err := writeAlive(cfg.StateDir, "/proc", time.Now()); err != nil {
		log.Warn("could not record that the agent is alive", "error", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.keepAlive(ctx)
	}()
	log.Info("keyguard agent running", "state", state, "rules", len(pol.Rules), "protected_at_start", protected)

	if cfg.ControlSocket != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.serveControl(ctx); err != nil {
				log.Error("control socket stopped", "error", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchPolicy(ctx, watcher)
	}()

	select {
	case <-ctx.Done():
	case err = <-readErr:
		if err != nil {
			log.Error("event reader stopped", "error", err)
		}
	}
	cancel()
	if _, err := os.Stat(cfg.Loader.PinPath); err == nil {
		a.emit(events.Health(a.health(keyguardv1.AgentState_AGENT_STATE_STOPPING, 0, probe, a.eventPosture())))
	}
	wg.Wait()
	return err
}

// emit records an event in the local log and hands it to the export pipeline, which never blocks.
// The event is stamped with the agent's version first; nothing changes it afterwards.
func (a *Agent) emit(ev *keyguardv1.Event) {
	ev.AgentVersion = a.cfg.Version
	if err := a.out.Write(ev); err != nil {
		a.log.Error("event log write failed", "error", err)
	}
	if a.met != nil {
		a.met.Observe(ev)
	}
	if a.exp != nil {
		a.exp.Submit(ev, export.PriorityOf(ev))
	}
}

// health is the AgentHealth of a start, stop or posture change.
func (a *Agent) health(state keyguardv1.AgentState, protected int, probe loader.ProbeResult, fs []posture.Finding) *keyguardv1.AgentHealth {
	h := &keyguardv1.AgentHealth{
		State: state, AgentVersion: a.cfg.Version, KernelRelease: probe.Kernel,
		LsmActive: len(probe.Missing) == 0, ProtectedProcessCount: uint32(protected), Findings: events.Findings(fs),
	}
	builds, _ := loader.Pinned(a.cfg.Loader.PinPath)
	h.EnforcementPinned = len(builds) > 0
	return h
}

// selfRule protects the agent's own process.
const selfRule = "keyguard-agent-self"

var selfRuleID = policy.RuleID(selfRule)

// applyPolicy writes a resolved policy into the rule maps.
func (a *Agent) applyPolicy(res *policy.Resolved) error {
	rs, names := ruleSet(res)
	rs.Rules[selfRuleID] = loader.Rule{Mode: uint32(policy.Enforce), Dumps: uint32(policy.DumpBlock)}
	names[selfRuleID] = selfRule
	for _, w := range res.Warnings {
		a.log.Warn("policy", "warning", w)
	}
	if err := a.guard.Apply(rs); err != nil {
		return fmt.Errorf("write rules into the kernel: %w", err)
	}
	a.mu.Lock()
	a.rs, a.res, a.names = rs, res, names
	a.mu.Unlock()
	return nil
}

// scan protects processes that were running before the agent (or a new rule) and reports them.
func (a *Agent) scan() (int, error) {
	a.mu.Lock()
	rs := a.rs
	a.mu.Unlock()
	procs, err := scanProcs(rs, os.Getpid())
	n := 0
	for _, p := range procs {
		m, had, merr := a.guard.MarkOf(p.PID)
		if merr != nil {
			continue // exited
		}
		if !had {
			if err := a.guard.Mark(p.PID, p.RuleID, loader.ReasonScan); err != nil {
				a.log.Warn("could not protect running process", "pid", p.PID, "error", err)
				continue
			}
			m = loader.Mark{RuleId: p.RuleID, Reason: loader.ReasonScan}
		}
		n++
		detail := "found running (" + p.Why + ")"
		if p.TracerPID != 0 {
			detail = fmt.Sprintf("found running (%s) and ALREADY TRACED by pid %d: keyguard cannot detach an existing tracer; kill pid %d", p.Why, p.TracerPID, p.TracerPID)
			a.log.Error("protected process is already traced", "pid", p.PID, "tracer", p.TracerPID)
		}
		if !had || p.TracerPID != 0 {
			a.emit(events.Protection(&keyguardv1.ProtectionChange{
				Process: procInfo(p.PID), Rule: a.RuleName(m.RuleId), State: keyguardv1.ProtectionState_PROTECTION_STATE_PROTECTED,
				Reason: events.Reason(m.Reason), Detail: detail,
			}))
		}
	}
	return n, err
}

// watchPolicy re-applies the policy when key files, executables or cgroups change on disk, and
// protects running processes the new resolution selects.
func (a *Agent) watchPolicy(ctx context.Context, w *policy.Watcher) {
	err := w.Run(ctx, func(res *policy.Resolved) {
		if err := a.applyPolicy(res); err != nil {
			a.log.Error("re-applying policy after a file change", "error", err)
			return
		}
		if _, err := a.scan(); err != nil {
			a.log.Warn("procfs scan incomplete", "error", err)
		}
	})
	if err != nil {
		a.log.Error("policy watcher stopped; new key files and restarted units are no longer picked up", "error", err)
	}
}

func (a *Agent) statePath(name string) string { return filepath.Join(a.cfg.StateDir, name) }

// The kernel's lost-event counter lives in a pinned map; what was already reported is kept in the
// state folder together with that map's id, so a new map (after uninstall or reboot) starts from 0.
func (a *Agent) lostMapID() uint32 {
	info, err := a.guard.Maps.Lost.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return uint32(id)
}

func (a *Agent) readLostBaseline() uint64 {
	b, err := os.ReadFile(a.statePath("kernel-lost-reported"))
	if err != nil {
		return 0
	}
	var id uint32
	var n uint64
	if _, err := fmt.Sscan(string(b), &id, &n); err != nil || id != a.lostMapID() {
		return 0
	}
	return n
}

func (a *Agent) writeLostBaseline(n uint64) {
	tmp := a.statePath("kernel-lost-reported.tmp")
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%d %d\n", a.lostMapID(), n)), 0o600); err == nil {
		_ = os.Rename(tmp, a.statePath("kernel-lost-reported"))
	}
}

// procInfo describes a running process from procfs.
func procInfo(pid int) *keyguardv1.Process {
	p := &keyguardv1.Process{Pid: uint32(pid), Tid: uint32(pid)}
	p.ExePath, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if id, err := loader.StatFileID(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		p.ExeDev, p.ExeInode = id.Dev, id.Ino
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		p.Comm = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				f := strings.Fields(v)
				if len(f) >= 2 {
					u, _ := strconv.Atoi(f[0])
					e, _ := strconv.Atoi(f[1])
					p.Uid, p.Euid = uint32(u), uint32(e)
				}
			}
		}
	}
	p.CgroupPath = events.CgroupPath(uint32(pid))
	return p
}

// installDumpHandler makes keyguard's handler the core_pattern when a rule redacts dumps, so those
// dumps reach it (the kernel kills any other destination for them).
func (a *Agent) installDumpHandler() error {
	redact := false
	for _, r := range a.pol.Rules {
		redact = redact || r.Dumps == policy.DumpRedact
	}
	if !redact {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locate the agent executable for core_pattern: %w", err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return fmt.Errorf("locate the agent executable for core_pattern: %w", err)
	}
	st := corepattern.State{PinPath: a.cfg.Loader.PinPath, ControlSocket: a.cfg.ControlSocket, EventLog: a.cfg.EventLog,
		SpoolDir: filepath.Join(a.cfg.StateDir, "dumps"), KeepStacks: a.cfg.DumpKeepStacks, PolicyPath: a.cfg.PolicyPath}
	if err := corepattern.Kernel.Install(corepattern.RunDir, exe, st); err != nil {
		return fmt.Errorf("install the core-dump handler: %w", err)
	}
	a.log.Info("core-dump handler installed", "core_pattern", corepattern.Pattern(exe))
	return nil
}

// trustUpgrades watches the agent's own executable path: when a package upgrade puts a new binary
// there while this agent runs, the new file is trusted, so the upgraded agent may take over keyguard's
// pinned programs and maps (nothing else may touch them).
func (a *Agent) trustUpgrades(ctx context.Context) {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	cur, _ := loader.StatFileID("/proc/self/exe")
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id, err := loader.StatFileID(exe)
		if err != nil || id == cur {
			continue
		}
		if err := a.guard.TrustExe(id); err != nil {
			a.log.Error("could not trust the upgraded agent executable", "path", exe, "error", err)
			continue
		}
		a.log.Info("trusting the upgraded agent executable for the next start", "path", exe, "dev", id.Dev, "ino", id.Ino)
		cur = id
	}
}
