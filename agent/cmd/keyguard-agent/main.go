// Command keyguard-agent is keyguard's per-host daemon: it loads the BPF LSM programs that keep every
// other process out of key-holding processes' memory, and reports every decision.
//
//	keyguard-agent run -policy /etc/keyguard/policy.yaml [flags]
//	keyguard-agent probe
//	keyguard-agent uninstall [-pin-path DIR]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/daemon"
	"github.com/keyguard/keyguard/agent/internal/dumphandler"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/posture"
	"github.com/keyguard/keyguard/collector/metricsserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: keyguard-agent run|probe|uninstall [flags]  (-h for flags)")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	switch args[0] {
	case "run":
		return runAgent(args[1:], log, stderr)
	case "probe":
		return probe(args[1:], stdout, stderr)
	case "uninstall":
		return uninstall(args[1:], stdout, stderr)
	case "dump-handler":
		return dumpHandler(args[1:])
	case "version":
		fmt.Fprintln(stdout, version)
		return 0
	}
	fmt.Fprintf(stderr, "keyguard-agent: unknown command %q (want run, probe, uninstall or version)\n", args[0])
	return 2
}

func runAgent(args []string, log *slog.Logger, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := daemon.Config{Loader: loader.DefaultConfig(), Version: version}
	fs.StringVar(&cfg.PolicyPath, "policy", "/etc/keyguard/policy.yaml", "protection policy file")
	fs.StringVar(&cfg.Loader.PinPath, "pin-path", loader.DefaultPinPath, "bpffs folder for keyguard's pinned programs and maps")
	fs.StringVar(&cfg.EventLog, "events", "/var/log/keyguard/events.jsonl", `event log: a version header, then one protojson keyguard.v1.Event per line ("-" for standard output)`)
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/keyguard", "folder for state kept across restarts")
	fs.StringVar(&cfg.ControlSocket, "control-socket", "/run/keyguard/agent.sock", `unix socket for the keyguard CLI ("" disables)`)
	fs.BoolVar(&cfg.Loader.ReportNoAudit, "report-noaudit", false, "also report PTRACE_MODE_NOAUDIT checks (ps/top reading /proc/PID/stat); they are enforced either way")
	fs.BoolVar(&cfg.DumpKeepStacks, "dump-keep-stacks", false, "keep thread stacks in redacted core dumps (backtraces need them)")
	fs.BoolVar(&cfg.Loader.DenyTraced, "deny-traced", true, "refuse exec of a protected executable and key-file opens by a process under a tracer")
	fs.DurationVar(&cfg.PostureInterval, "posture-interval", time.Minute, "how often host posture is checked again; a change is reported as a health event")
	fs.StringVar(&cfg.OperatorKeyPath, "operator-key", "/etc/keyguard/operator.pub", "the operator's Ed25519 public key (keyguard token keygen); pinned at the first start after boot, it signs uninstall, break-glass and policy tokens")
	fs.StringVar(&cfg.PolicyTokenPath, "policy-token", "", "token approving a changed policy (default: the policy path + .token)")
	fs.StringVar(&cfg.Hostname, "host-name", "", "this host's name in operator tokens (default: the host name)")
	fs.StringVar(&cfg.Metrics.Listen, "metrics-listen", "", "serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9464 (empty: off)")
	fs.BoolVar(&cfg.Metrics.AllowRemote, "metrics-allow-remote", false, "allow a non-loopback -metrics-listen address (plain HTTP, no authentication)")
	var exp export.Config
	fs.StringVar(&exp.Collector, "collector", "", "collector ingest address host:port (empty: local event log only)")
	fs.StringVar(&exp.CAFile, "collector-ca", "/etc/keyguard/collector-ca.pem", "CA bundle that signs the collector's certificate")
	fs.StringVar(&exp.CertFile, "cert", "/etc/keyguard/agent.pem", "this host's client certificate (one per host)")
	fs.StringVar(&exp.KeyFile, "key", "/etc/keyguard/agent-key.pem", "this host's client key")
	fs.StringVar(&exp.SpoolDir, "spool-dir", "/var/lib/keyguard/spool", "durable spool of events not yet acknowledged by the collector")
	fs.Int64Var(&exp.SpoolMaxBytes, "spool-max-bytes", 256<<20, "spool size cap; when full, low-value events are dropped first and the drop is reported")
	fs.StringVar(&exp.PlaintextHost, "insecure-plaintext-host", "", "DEMO ONLY: send without TLS to a loopback collector, claiming this host name")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.Metrics.Listen != "" {
		if err := metricsserver.Check(cfg.Metrics.Listen, cfg.Metrics.AllowRemote, metricsserver.Flags()); err != nil {
			fmt.Fprintln(stderr, "keyguard-agent:", err)
			return 2
		}
	}
	if exp.Collector != "" {
		if exp.PlaintextHost != "" {
			exp.Plaintext = true
			exp.CAFile, exp.CertFile, exp.KeyFile = "", "", ""
		}
		cfg.Export = &exp
	}
	if cfg.EventLog != "-" {
		if err := os.MkdirAll(filepath.Dir(cfg.EventLog), 0o750); err != nil {
			log.Error("create event log folder", "error", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg, log); err != nil {
		fmt.Fprintln(stderr, "keyguard-agent:", err)
		return 1
	}
	return 0
}

func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pin := fs.String("pin-path", loader.DefaultPinPath, "bpffs folder for keyguard's pins")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	r := loader.Probe(filepath.Dir(*pin))
	// keyguard's handler is expected as core_pattern while the agent has it installed.
	var checker posture.Checker
	if st, err := corepattern.Load(corepattern.RunDir); err == nil {
		checker.HandlerPattern = st.Installed
	}
	findings := posture.Worst(checker.Host())
	builds, _ := loader.Pinned(*pin)
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(map[string]any{"kernel": r.Kernel, "lsms": r.LSMs, "missing": r.Missing, "posture": findings, "pinned_builds": builds})
	} else {
		fmt.Fprintf(stdout, "kernel %s, active LSMs: %v\n", r.Kernel, r.LSMs)
		if len(builds) > 0 {
			fmt.Fprintf(stdout, "enforcement pinned in %s (build %v)\n", *pin, builds)
		} else {
			fmt.Fprintf(stdout, "nothing pinned in %s\n", *pin)
		}
		fmt.Fprintln(stdout, "host posture (worst first):")
		posture.Print(stdout, findings)
	}
	if err := r.Err(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

func uninstall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", control.DefaultSocket, "the running agent's control socket")
	tokenFile := fs.String("token-file", "", `uninstall token signed by the operator key ("-" for standard input; required)`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *tokenFile == "" {
		fmt.Fprintln(stderr, "keyguard-agent uninstall: -token-file is required: an operator signs one with\n"+
			"  keyguard token sign -key operator.key -action uninstall -host HOST -operator NAME -reason TEXT")
		return 2
	}
	tok, err := readToken(*tokenFile)
	if err != nil {
		fmt.Fprintln(stderr, "keyguard-agent uninstall:", err)
		return 2
	}
	// Only the agent may remove keyguard's pins (the kernel refuses everyone else); it checks the token
	// and records the uninstall before it removes anything.
	if _, err := control.Call(*socket, control.Request{Op: "uninstall", Token: tok}); err != nil {
		fmt.Fprintln(stderr, "keyguard-agent uninstall:", err)
		fmt.Fprintln(stderr, "(uninstall goes through the running agent; if it cannot run, a reboot without keyguard also removes everything)")
		return 1
	}
	fmt.Fprintln(stdout, "keyguard uninstalled: core_pattern restored, programs and pins removed, the agent stopped")
	return 0
}

// dumpHandler is what the kernel runs through core_pattern for every core dump.
func dumpHandler(args []string) int {
	h := &dumphandler.Handler{RunDir: corepattern.RunDir, Stdin: os.Stdin, Redactor: redactor()}
	if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		h.Kmsg = k
		defer k.Close()
	}
	if err := h.Run(context.Background(), args); err != nil {
		if h.Kmsg != nil {
			fmt.Fprintln(h.Kmsg, "keyguard-dump-handler:", err)
		}
		return 1
	}
	return 0
}

// readToken reads an operator token from a file or standard input ("-").
func readToken(path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("read the token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
