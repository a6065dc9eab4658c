// Command keyguard-agent is keyguard's per-host daemon: it loads the BPF LSM programs that keep every
// other process out of key-holding processes' memory, and reports every decision.
//
//	keyguard-agent run [-config /etc/keyguard/agent.yaml] [flags]
//	keyguard-agent probe [-pin-path DIR] [-json]
//	keyguard-agent policy check FILE [-offline]
//	keyguard-agent uninstall -token-file FILE
//	keyguard-agent version | help
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

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/daemon"
	"github.com/keyguard/keyguard/agent/internal/dumphandler"
	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/posture"
	"github.com/keyguard/keyguard/deploy/cmdline"
	"github.com/keyguard/keyguard/deploy/metricsserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func program() cmdline.Program {
	return cmdline.Program{
		Name: "keyguard-agent", Version: version,
		About: "keyguard-agent keeps signing keys inside the processes that hold them (BPF LSM) and reports every decision.",
		Commands: []cmdline.Command{
			{Name: "run", Summary: "run the agent (flags override " + defaultConfigPath + ")", Run: runAgent},
			{Name: "probe", Summary: "check whether this kernel can run keyguard, and the host's posture", Run: probe},
			{Name: "policy", Summary: "policy check FILE [-offline]: validate a policy (no kernel needed)", Run: policyCmd},
			{Name: "uninstall", Summary: "remove keyguard through the running agent (needs an operator token)", Run: uninstall},
			{Name: "sentinel", Summary: "watch dump folders for key material and report each finding (debug hosts)", Run: withSignals(sentinelCmd)},
			{Name: "publish-fingerprints", Summary: "send the key fingerprints of KEYFILE... to the collector", Run: withSignals(publishFingerprints)},
			// The kernel runs this through core_pattern for every core dump; not for people.
			{Name: "dump-handler", Run: func(args []string, _, _ io.Writer) int { return dumpHandler(args) }},
		},
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	return program().Main(args, stdout, stderr)
}

func runAgent(args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	fs := cmdline.NewFlagSet("keyguard-agent run", "[-config FILE] [flags]",
		"Runs the agent. Settings come from the defaults, then the configuration file, then the flags given.")
	configPath := fs.String("config", defaultConfigPath, "YAML configuration file (a missing default file is ignored; flags given override it)")
	c := defaultConfig()
	bound := cmdline.BindConfig(fs, &c)
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef(fs, stderr, "unexpected arguments %q", fs.Args())
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	if err := bound.Load(*configPath, !explicit); err != nil {
		fmt.Fprintln(stderr, "keyguard-agent:", err)
		return cmdline.ExitUsage
	}
	cfg := c.daemon(version)
	if cfg.Metrics.Listen != "" {
		if err := metricsserver.Check(cfg.Metrics.Listen, cfg.Metrics.AllowRemote, metricsserver.Flags()); err != nil {
			fmt.Fprintln(stderr, "keyguard-agent:", err)
			return cmdline.ExitUsage
		}
	}
	if cfg.EventLog != "-" {
		if err := os.MkdirAll(filepath.Dir(cfg.EventLog), 0o750); err != nil {
			log.Error("create event log folder", "error", err)
			return cmdline.ExitFailure
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := enrollAndRenew(ctx, c.Enroll, cfg.Export, cfg.Hostname, log); err != nil {
		fmt.Fprintln(stderr, "keyguard-agent:", err)
		return 1
	}
	if err := daemon.Run(ctx, cfg, log); err != nil {
		fmt.Fprintln(stderr, "keyguard-agent:", err)
		return cmdline.ExitFailure
	}
	return cmdline.ExitOK
}

func probe(args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-agent probe", "[-pin-path DIR] [-json]",
		"Checks whether this kernel can run keyguard (exit 1 if not) and prints the host's posture. Read-only.")
	pin := fs.String("pin-path", loader.DefaultPinPath, "bpffs folder for keyguard's pins")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
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
		_ = json.NewEncoder(stdout).Encode(map[string]any{"kernel": r.Kernel, "lsms": r.LSMs, "missing": r.Missing, "variants": r.Variants, "posture": findings, "pinned_builds": builds})
	} else {
		fmt.Fprintf(stdout, "kernel %s, active LSMs: %v\n", r.Kernel, r.LSMs)
		fmt.Fprintf(stdout, "program variants: %s\n", r.Variants)
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
	fs := cmdline.NewFlagSet("keyguard-agent uninstall", "-token-file FILE [-socket PATH]",
		"Removes keyguard through the running agent: it checks the operator token, records the uninstall, restores\ncore_pattern and removes every pin, then stops.")
	socket := fs.String("socket", control.DefaultSocket, "the running agent's control socket")
	tokenFile := fs.String("token-file", "", `uninstall token signed by the operator key ("-" for standard input; required)`)
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
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

// withSignals runs a long-running command with a context that SIGINT and SIGTERM cancel and a text
// logger on stderr.
func withSignals(f func(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger, stderr io.Writer) int) func(args []string, stdout, stderr io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return f(ctx, args, stdout, slog.New(slog.NewTextHandler(stderr, nil)), stderr)
	}
}
