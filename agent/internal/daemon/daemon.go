// Package daemon wires the keyguard agent together: Run is the list of start-up steps (policy, kernel
// probe, event log, BPF programs, install check, export, metrics, registration, core-dump handler,
// rules), then the supervised work (event reader, procfs scan, posture, alive file, control socket,
// grant expiry, policy watcher) until the context ends. The domain lives in the packages it calls:
// operator (install check, tokens, break-glass, uninstall), control (the socket server and protocol),
// procfs (every read of /proc), supervise (steps and periodic work), bootgap (the reboot gap), loader,
// events, export, posture.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyguard/keyguard/agent/internal/bootgap"
	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/fppublish"
	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/metrics"
	"github.com/keyguard/keyguard/agent/internal/operator"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/agent/internal/posture"
	"github.com/keyguard/keyguard/agent/internal/procfs"
	"github.com/keyguard/keyguard/agent/internal/supervise"
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
	// AggregateWindow is how long the kernel counts repeated access attempts before the agent reports
	// them as one aggregate event (0: events.DefaultAggregateWindow).
	AggregateWindow time.Duration
	// OperatorKeyPath is the operator's Ed25519 public key (PEM). It is pinned on the first start after
	// boot; uninstall, break-glass and policy changes need tokens signed by it.
	OperatorKeyPath string
	// PolicyTokenPath holds the token approving a changed policy (default PolicyPath + ".token").
	PolicyTokenPath string
	// Hostname is the name operator tokens must carry (default os.Hostname()).
	Hostname string
	// Metrics serves Prometheus metrics (see metrics.go; zero: off).
	Metrics MetricsConfig
	// FingerprintDeploymentKey is the deployment's fingerprint key file: when set (and Export is),
	// the fingerprints of the protected key files are published to the collector at start and
	// whenever the policy's key files change (fingerprints.go).
	FingerprintDeploymentKey string
}

// Agent is a running agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	proc  procfs.FS
	probe loader.ProbeResult
	guard *loader.Guard
	pol   *policy.Policy
	// sevPol: what the policy says about severities; emit stamps every event with it. One atomic
	// value, not under mu (emit may be called with mu held), so an event never sees half a policy.
	sevPol  atomic.Pointer[severityPolicy]
	out     *events.JSONLines
	exp     *export.Pipeline
	op      *operator.Operator
	watcher *policy.Watcher
	fpPub   *fppublish.Publisher // nil unless key fingerprints are published (fingerprints.go)
	gap     *bootgap.Gap
	met     *metrics.Agent // nil unless Config.Metrics.Listen is set
	closers []func()       // run in reverse order when Run returns

	installEvents []*keyguardv1.Event // what the install check reports, emitted once the agent runs

	mu    sync.Mutex
	rs    loader.RuleSet
	res   *policy.Resolved
	names map[uint32]string
	stop  context.CancelFunc // ends Run (after uninstall)
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
	a := &Agent{log: log}
	defer a.close()
	err := supervise.Steps(log,
		supervise.Step{Name: "configuration", Run: func() error { return a.configure(cfg) }},
		supervise.Step{Name: "policy", Run: a.loadPolicy},
		supervise.Step{Name: "kernel probe", Run: a.probeKernel},
		supervise.Step{Name: "event log", Run: a.openEventLog},
		supervise.Step{Name: "BPF programs", Run: a.loadGuard},
		supervise.Step{Name: "reboot gap", Run: a.detectGap},
		supervise.Step{Name: "install check", Run: a.checkInstall},
		supervise.Step{Name: "event export", Run: a.newExport},
		supervise.Step{Name: "key fingerprints", Run: a.newFingerprintPublisher},
		supervise.Step{Name: "metrics", Run: a.startMetrics},
		supervise.Step{Name: "self registration", Run: a.register},
		supervise.Step{Name: "core-dump handler", Run: a.installDumpHandler},
		supervise.Step{Name: "policy rules", Run: a.resolvePolicy},
		supervise.Step{Name: "export", Run: a.runExport},
	)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

// onClose registers f to run when Run returns (last registered, first run).
func (a *Agent) onClose(f func()) { a.closers = append(a.closers, f) }

func (a *Agent) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
}

func (a *Agent) configure(cfg Config) error {
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
	a.cfg = cfg
	return nil
}

func (a *Agent) loadPolicy() (err error) {
	if a.pol, err = policy.Load(a.cfg.PolicyPath); err != nil {
		return fmt.Errorf("the policy is invalid, the agent did not start:\n%w", err)
	}
	return nil
}

func (a *Agent) probeKernel() error {
	a.probe = loader.Probe(filepath.Dir(a.cfg.Loader.PinPath))
	return a.probe.Err()
}

func (a *Agent) openEventLog() (err error) {
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state folder: %w", err)
	}
	if a.out, err = events.OpenJSONLines(a.cfg.EventLog, 0); err != nil {
		return err
	}
	a.onClose(func() { a.out.Close() })
	return nil
}

func (a *Agent) loadGuard() (err error) {
	if a.guard, err = loader.Load(a.cfg.Loader, a.log); err != nil {
		return err
	}
	a.onClose(func() { a.guard.Close() })
	return nil
}

func (a *Agent) detectGap() error {
	gap, err := bootgap.Detect(a.cfg.StateDir, a.proc.File(), time.Now())
	if err != nil {
		a.log.Warn("could not tell whether the host rebooted since the agent last ran", "error", err)
	}
	a.gap = gap
	return nil
}

// checkInstall makes sure the operator approved what this agent enforces (package operator); a
// refusal is reported as a "refused" health event.
func (a *Agent) checkInstall() error {
	a.op = operator.New(operator.Config{KeyPath: a.cfg.OperatorKeyPath, PolicyPath: a.cfg.PolicyPath,
		PolicyTokenPath: a.cfg.PolicyTokenPath, Hostname: a.cfg.Hostname, Version: a.cfg.Version, Loader: a.cfg.Loader},
		operator.Deps{Guard: a.guard, Policy: a.pol, Emit: a.emit, Flush: a.out.Flush, Log: a.log,
			Drain: func() { a.waitDelivered(10 * time.Second) }})
	evs, err := a.op.CheckInstall(a.pol.SHA256)
	if err != nil {
		a.emit(events.Health(&keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_REFUSED, AgentVersion: a.cfg.Version, Detail: err.Error()}))
		_ = a.out.Flush()
		return err
	}
	a.installEvents = evs
	return nil
}

func (a *Agent) newExport() (err error) {
	if a.cfg.Export == nil {
		return nil
	}
	ec := *a.cfg.Export
	ec.AgentVersion = a.cfg.Version
	if a.exp, err = export.New(ec, a.log); err != nil {
		return fmt.Errorf("event export: %w", err)
	}
	a.onClose(func() { a.exp.Close() })
	return nil
}

// runExport starts the export pipeline on its own context, so that the final "stopping" event is
// still sent; when Run returns it gives the collector a moment to acknowledge what is queued (the
// spool keeps the rest).
func (a *Agent) runExport() error {
	if a.exp == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.exp.Run(ctx); err != nil {
			a.log.Error("event export stopped", "error", err)
		}
	}()
	a.onClose(func() {
		time.Sleep(500 * time.Millisecond)
		cancel()
		<-done
	})
	return nil
}

// register tells the kernel which process and objects are keyguard's own, and where core dumps of
// protected processes may go.
func (a *Agent) register() error {
	if err := a.guard.RegisterAgent(os.Getpid(), a.cfg.Loader.PinPath); err != nil {
		return err
	}
	if err := a.guard.RegisterOwn(a.cfg.Loader.PinPath); err != nil {
		return fmt.Errorf("register keyguard's own objects: %w", err)
	}
	return a.guard.SetHandler("/proc/self/exe")
}

// resolvePolicy resolves the policy's selectors and writes the rules into the kernel.
func (a *Agent) resolvePolicy() (err error) {
	root, err := policy.CgroupRoot()
	if err != nil {
		a.log.Warn("no cgroup2 mount: cgroup selectors stay pending", "error", err)
	}
	if a.watcher, err = policy.NewWatcher(a.pol, policy.WatchOptions{CgroupRoot: root, Logger: a.log}); err != nil {
		return err
	}
	if err := a.applyPolicy(a.watcher.Resolved()); err != nil {
		a.watcher.Close()
		return err
	}
	a.publishFingerprints(a.watcher.Resolved())
	return nil
}

// run reads events, protects what already runs, reports the start and serves until ctx ends.
func (a *Agent) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.stop = cancel
	sup := supervise.New(ctx, a.log)
	// Read events before scanning so that nothing the kernel reports from now on waits.
	rd := &events.Reader{
		Events: a.guard.Maps.Events, Lost: a.guard.Lost, Names: a, Log: a.log,
		LostBaseline:   a.readLostBaseline(),
		OnLostReported: a.writeLostBaseline,
	}
	readErr := make(chan error, 1)
	sup.Go("event reader", func(ctx context.Context) error { readErr <- rd.Run(ctx, a.emit); return nil })
	agg := &events.Aggregates{Agg: a.guard.Maps.Agg, Epoch: a.guard.Maps.AggEpoch, Sync: a.guard.Maps.AggSync, Names: a}
	sup.Go("aggregates", func(ctx context.Context) error { agg.Run(ctx, a.cfg.AggregateWindow, a.log, a.emit); return nil })
	// The agent is a protected process too: nobody reads its memory or takes its fds.
	if err := a.guard.Mark(os.Getpid(), selfRuleID, loader.ReasonScan); err != nil {
		return fmt.Errorf("protect the agent itself: %w", err)
	}
	sup.Every("upgrade trust", time.Second, a.upgradeTruster())
	findings, start := a.reportStart()
	sup.Every("posture", a.postureInterval(), a.postureWatcher(findings, start))
	if err := bootgap.WriteAlive(a.cfg.StateDir, a.proc.File(), time.Now()); err != nil {
		a.log.Warn("could not record that the agent is alive", "error", err)
	}
	sup.Every("alive", bootgap.AliveEvery, a.keepAlive)
	if a.cfg.ControlSocket != "" {
		sup.Go("control socket", func(ctx context.Context) error {
			return control.Serve(ctx, a.cfg.ControlSocket, a.handleControl, a.log)
		})
		sup.Every("break-glass expiry", time.Second, a.op.ExpireGrants)
	}
	sup.Go("policy watcher", a.watchPolicy)

	var err error
	select {
	case <-ctx.Done():
	case err = <-readErr:
		if err != nil {
			a.log.Error("event reader stopped", "error", err)
		}
	}
	cancel()
	if _, err := os.Stat(a.cfg.Loader.PinPath); err == nil {
		a.emit(events.Health(a.health(keyguardv1.AgentState_AGENT_STATE_STOPPING, 0, a.eventPosture())))
	}
	sup.Wait()
	return err
}

// reportStart protects the processes already running and emits the start (or adoption) health
// event, with a reboot gap when there was one. It returns that event's health and posture findings.
func (a *Agent) reportStart() ([]posture.Finding, *keyguardv1.AgentHealth) {
	protected, err := a.scan()
	if err != nil {
		a.log.Warn("procfs scan incomplete", "error", err)
	}
	state := keyguardv1.AgentState_AGENT_STATE_STARTED
	if a.guard.Adopted {
		state = keyguardv1.AgentState_AGENT_STATE_ADOPTED
	}
	for _, ev := range a.installEvents {
		a.emit(ev)
	}
	findings := a.eventPosture()
	hev := a.health(state, protected, findings)
	if gap := a.gap; gap != nil {
		hev.Gap = gap.Proto()
		hev.Detail = fmt.Sprintf("the host rebooted (boot %s → %s): keyguard did not enforce from %s (agent last seen) until %s",
			gap.PreviousBootID, gap.BootID, gap.LastSeen.Format(time.RFC3339), gap.Resumed.Format(time.RFC3339))
		a.log.Warn("protection gap across a reboot", "last_seen", gap.LastSeen, "boot_time", gap.BootTime, "resumed", gap.Resumed)
	}
	a.emit(events.Health(hev))
	a.log.Info("keyguard agent running", "state", state, "rules", len(a.pol.Rules), "protected_at_start", protected)
	return findings, hev
}

// emit records an event in the local log and hands it to the export pipeline, which never blocks.
// The event is stamped with the agent's version first; nothing changes it afterwards.
func (a *Agent) emit(ev *keyguardv1.Event) {
	ev.AgentVersion = a.cfg.Version
	if sp := a.sevPol.Load(); sp != nil {
		keyguardv1.ApplyRoutineRead(ev, sp.routine)
		keyguardv1.ApplyRuleSeverity(ev, sp.rules[keyguardv1.RuleOf(ev)])
	}
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
func (a *Agent) health(state keyguardv1.AgentState, protected int, fs []posture.Finding) *keyguardv1.AgentHealth {
	h := &keyguardv1.AgentHealth{
		State: state, AgentVersion: a.cfg.Version, KernelRelease: a.probe.Kernel,
		LsmActive: len(a.probe.Missing) == 0, ProtectedProcessCount: uint32(protected), Findings: events.Findings(fs),
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
	a.sevPol.Store(newSeverityPolicy(res.Policy))
	a.mu.Unlock()
	return nil
}

// severityPolicy is what a policy says about severities: its rules' own (policy.Rule.Severity) and its
// routine_readers, whose denied /proc opens are reported at LOW (keyguardv1.RoutineRead).
type severityPolicy struct {
	rules   map[string]keyguardv1.Severity
	routine map[string]bool
}

func newSeverityPolicy(p *policy.Policy) *severityPolicy {
	sp := &severityPolicy{rules: map[string]keyguardv1.Severity{}, routine: map[string]bool{}}
	for _, r := range p.Rules {
		if r.Severity != keyguardv1.Severity_SEVERITY_UNSPECIFIED {
			sp.rules[r.Name] = r.Severity
		}
	}
	for _, e := range p.RoutineReaders {
		sp.routine[e] = true
	}
	return sp
}

// scan protects processes that were running before the agent (or a new rule) and reports them.
func (a *Agent) scan() (int, error) {
	a.mu.Lock()
	rs := a.rs
	a.mu.Unlock()
	procs, err := scanProcs(a.proc, rs, os.Getpid())
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
				Process: procInfo(a.proc, p.PID), Rule: a.RuleName(m.RuleId), State: keyguardv1.ProtectionState_PROTECTION_STATE_PROTECTED,
				Reason: events.Reason(m.Reason), Detail: detail,
			}))
		}
	}
	return n, err
}

// watchPolicy re-applies the policy when key files, executables or cgroups change on disk, and
// protects running processes the new resolution selects.
func (a *Agent) watchPolicy(ctx context.Context) error {
	err := a.watcher.Run(ctx, func(res *policy.Resolved) {
		if err := a.applyPolicy(res); err != nil {
			a.log.Error("re-applying policy after a file change", "error", err)
			return
		}
		a.publishFingerprints(res)
		if _, err := a.scan(); err != nil {
			a.log.Warn("procfs scan incomplete", "error", err)
		}
	})
	if err != nil {
		return fmt.Errorf("new key files and restarted units are no longer picked up: %w", err)
	}
	return nil
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
func procInfo(proc procfs.FS, pid int) *keyguardv1.Process {
	p := &keyguardv1.Process{Pid: uint32(pid), Tid: uint32(pid), ExePath: proc.Exe(pid), Comm: proc.Comm(pid), CgroupPath: proc.Cgroup(pid)}
	if id, err := loader.StatFileID(proc.Path(pid, "exe")); err == nil {
		p.ExeDev, p.ExeInode = id.Dev, id.Ino
	}
	if st, err := proc.Status(pid); err == nil {
		p.Uid, p.Euid = st.UID, st.EUID
	}
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

// upgradeTruster watches the agent's own executable path: when a package upgrade puts a new binary
// there while this agent runs, the new file is trusted, so the upgraded agent may take over keyguard's
// pinned programs and maps (nothing else may touch them).
func (a *Agent) upgradeTruster() func(time.Time) {
	exe, err := os.Executable()
	if err != nil {
		return func(time.Time) {}
	}
	cur, _ := loader.StatFileID("/proc/self/exe")
	return func(time.Time) {
		id, err := loader.StatFileID(exe)
		if err != nil || id == cur {
			return
		}
		// The digest is of the file at exe now; if another file took its place meanwhile, try again
		// on the next tick (the kernel refuses the one whose content does not match at exec anyway).
		sum, err := loader.FileSHA256(exe)
		if again, _ := loader.StatFileID(exe); err != nil || again != id {
			return
		}
		if err := a.guard.TrustExe(id, sum); err != nil {
			a.log.Error("could not trust the upgraded agent executable", "path", exe, "error", err)
			return
		}
		a.log.Info("trusting the upgraded agent executable for the next start", "path", exe, "dev", id.Dev, "ino", id.Ino)
		cur = id
	}
}

// keepAlive refreshes the alive file (periodic work, every bootgap.AliveEvery).
func (a *Agent) keepAlive(now time.Time) {
	if err := bootgap.WriteAlive(a.cfg.StateDir, a.proc.File(), now); err != nil {
		a.log.Warn("could not record that the agent is alive; a later reboot gap will be reported less precisely", "error", err)
	}
}
