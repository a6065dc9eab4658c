package main

import (
	"time"

	"github.com/keyguard/keyguard/agent/internal/daemon"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/loader"
)

// defaultConfigPath is the agent's configuration file; flags given on the command line override it.
const defaultConfigPath = "/etc/keyguard/agent.yaml"

// config is the agent's configuration file (YAML keys) and its `run` flags, bound by cmdline.Config.
type config struct {
	Policy          string        `yaml:"policy" flag:"policy" help:"protection policy file"`
	PinPath         string        `yaml:"pin_path" flag:"pin-path" help:"bpffs folder for keyguard's pinned programs and maps"`
	Events          string        `yaml:"events" flag:"events" help:"event log: a version header, then one protojson keyguard.v1.Event per line (\"-\" for standard output)"`
	StateDir        string        `yaml:"state_dir" flag:"state-dir" help:"folder for state kept across restarts"`
	ControlSocket   string        `yaml:"control_socket" flag:"control-socket" help:"unix socket for the keyguard CLI (\"\" disables)"`
	ReportNoAudit   bool          `yaml:"report_noaudit" flag:"report-noaudit" help:"also report PTRACE_MODE_NOAUDIT checks (ps/top reading /proc/PID/stat); they are enforced either way"`
	DumpKeepStacks  bool          `yaml:"dump_keep_stacks" flag:"dump-keep-stacks" help:"keep thread stacks in redacted core dumps (backtraces need them)"`
	DenyTraced      bool          `yaml:"deny_traced" flag:"deny-traced" help:"refuse exec of a protected executable and key-file opens by a process under a tracer"`
	NoDumpGuard     bool          `yaml:"no_dump_guard" flag:"no-dump-guard" help:"leave the dump_emit guard out as on a kernel that lacks it: dumps: redact is then enforced as block (for tests)"`
	NoInflightWait  bool          `yaml:"-" flag:"test-no-inflight-wait" help:"TEST ONLY: let key-file opens ignore memory reads in flight (reopens the key-open race; the race test's control run)"`
	NoForkRecheck   bool          `yaml:"-" flag:"test-no-fork-recheck" help:"TEST ONLY: no second look at a forking parent's mark after the child's memory is copied (reopens the fork/key-open race; the fork race test's control run)"`
	PostureInterval time.Duration `yaml:"posture_interval" flag:"posture-interval" help:"how often host posture is checked again; a change is reported as a health event"`
	DenyMetadata    bool          `yaml:"deny_metadata" flag:"deny-metadata" help:"deny metadata reads of protected processes (readlink/stat of /proc/PID/exe, cwd, root, attr) like memory reads; by default they are allowed and reported at info"`
	AggregateWindow time.Duration `yaml:"aggregate_window" flag:"aggregate-window" help:"repeated access attempts (same accessor executable and uid, whichever process, target, operation, decision) are counted in the kernel for this long and reported as one event with a count"`
	OperatorKey     string        `yaml:"operator_key" flag:"operator-key" help:"the operator's Ed25519 public key (keyguard token keygen); pinned at the first start after boot, it signs uninstall, break-glass and policy tokens"`
	PolicyToken     string        `yaml:"policy_token" flag:"policy-token" help:"token approving a changed policy (default: the policy path + .token)"`
	HostName        string        `yaml:"host_name" flag:"host-name" help:"this host's name in operator tokens (default: the host name)"`
	FingerprintKey  string        `yaml:"fingerprint_deployment_key" flag:"fingerprint-deployment-key" help:"the deployment's fingerprint key (keyguard fingerprint -deployment-key): publish the protected key files' fingerprints to the collector at start and on every key-file change (empty: off)"`
	Metrics         struct {
		Listen      string `yaml:"listen" flag:"metrics-listen" help:"serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9464 (empty: off)"`
		AllowRemote bool   `yaml:"allow_remote" flag:"metrics-allow-remote" help:"allow a non-loopback -metrics-listen address (plain HTTP, no authentication)"`
	} `yaml:"metrics"`
	Collector struct {
		Address               string `yaml:"address" flag:"collector" help:"collector ingest address host:port (empty: local event log only)"`
		CA                    string `yaml:"ca" flag:"collector-ca" help:"CA bundle that signs the collector's certificate"`
		Cert                  string `yaml:"cert" flag:"cert" help:"this host's client certificate (one per host)"`
		Key                   string `yaml:"key" flag:"key" help:"this host's client key"`
		SpoolDir              string `yaml:"spool_dir" flag:"spool-dir" help:"durable spool of events not yet acknowledged by the collector"`
		SpoolMaxBytes         int64  `yaml:"spool_max_bytes" flag:"spool-max-bytes" help:"spool size cap; when full, low-value events are dropped first and the drop is reported"`
		InsecurePlaintextHost string `yaml:"insecure_plaintext_host" flag:"insecure-plaintext-host" help:"DEMO ONLY: send without TLS to a loopback collector, claiming this host name"`
	} `yaml:"collector"`
	Enroll enrollConfig `yaml:"enroll"`
}

// enrollConfig: with url set, the agent gets its client certificate from the collector (see
// agent/internal/enroll) instead of a file an operator put there.
type enrollConfig struct {
	URL       string        `yaml:"url" flag:"enroll-url" help:"collector enrollment address https://HOST:PORT: when -cert does not exist, enroll with -enroll-token-file; renew before expiry"`
	TokenFile string        `yaml:"token_file" flag:"enroll-token-file" help:"bootstrap token (keyguard-collector enroll token): deleted once used if single-use, kept if it has a use count (a node pool, e.g. a Kubernetes Secret)"`
	Timeout   time.Duration `yaml:"timeout" flag:"enroll-timeout" help:"give up the first enrollment after this long (systemd restarts the agent)"`
}

func defaultConfig() config {
	var c config
	c.Policy = "/etc/keyguard/policy.yaml"
	c.PinPath = loader.DefaultPinPath
	c.Events = "/var/log/keyguard/events.jsonl"
	c.StateDir = "/var/lib/keyguard"
	c.ControlSocket = "/run/keyguard/agent.sock"
	c.DenyTraced = loader.DefaultConfig().DenyTraced
	c.PostureInterval = time.Minute
	c.AggregateWindow = events.DefaultAggregateWindow
	c.OperatorKey = "/etc/keyguard/operator.pub"
	c.Collector.CA = "/etc/keyguard/collector-ca.pem"
	c.Collector.Cert = "/etc/keyguard/agent.pem"
	c.Collector.Key = "/etc/keyguard/agent-key.pem"
	c.Collector.SpoolDir = "/var/lib/keyguard/spool"
	c.Collector.SpoolMaxBytes = 256 << 20
	c.Enroll.TokenFile = "/etc/keyguard/bootstrap.token"
	c.Enroll.Timeout = 2 * time.Minute
	return c
}

// daemon is the configuration the daemon runs with.
func (c config) daemon(version string) daemon.Config {
	d := daemon.Config{
		PolicyPath: c.Policy, EventLog: c.Events, StateDir: c.StateDir, ControlSocket: c.ControlSocket, Version: version,
		Loader:          loader.Config{PinPath: c.PinPath, ReportNoAudit: c.ReportNoAudit, DenyTraced: c.DenyTraced, NoDumpGuard: c.NoDumpGuard, DenyMetadata: c.DenyMetadata, NoInflightWait: c.NoInflightWait, NoForkRecheck: c.NoForkRecheck},
		DumpKeepStacks:  c.DumpKeepStacks,
		PostureInterval: c.PostureInterval, AggregateWindow: c.AggregateWindow, OperatorKeyPath: c.OperatorKey, PolicyTokenPath: c.PolicyToken, Hostname: c.HostName,
		Metrics:                  daemon.MetricsConfig{Listen: c.Metrics.Listen, AllowRemote: c.Metrics.AllowRemote},
		FingerprintDeploymentKey: c.FingerprintKey,
	}
	if cc := c.Collector; cc.Address != "" {
		exp := export.Config{Collector: cc.Address, CAFile: cc.CA, CertFile: cc.Cert, KeyFile: cc.Key, SpoolDir: cc.SpoolDir,
			SpoolMaxBytes: cc.SpoolMaxBytes, PlaintextHost: cc.InsecurePlaintextHost}
		if exp.PlaintextHost != "" {
			exp.Plaintext = true
			exp.CAFile, exp.CertFile, exp.KeyFile = "", "", ""
		}
		d.Export = &exp
	}
	return d
}
