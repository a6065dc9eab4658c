// Command keyguard-loadgen pushes synthetic events through the agent's real export pipeline
// (queue, durable spool, mTLS gRPC stream) to a collector. It exists for delivery tests and
// benchmarks: tests SIGKILL and restart it mid-stream.
//
// Each run numbers its events n=1,2,... in the detail field ("loadgen run=<id> n=<k>"), stops
// submitting once the spool has assigned -target sequence numbers in total (across restarts on the
// same spool), waits until the collector acknowledged everything, prints a JSON summary and exits.
//
// With -events FILE it submits the events in FILE instead (one protojson keyguard.v1.Event per line;
// "-" is stdin), in order, with the priority the agent would give them; other end-to-end tests (the
// collector's web console) use it to feed chosen events through the real pipeline.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/deploy/cmdline"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(mainArgs(os.Args[1:], os.Stdout, os.Stderr)) }

func mainArgs(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && cmdline.IsVersion(args[0]) {
		fmt.Fprint(stdout, cmdline.VersionText("keyguard-loadgen", version))
		return cmdline.ExitOK
	}
	flag := cmdline.NewFlagSet("keyguard-loadgen", "[flags]",
		"Pushes synthetic (or -events) events through the agent's real export pipeline to a collector, for delivery\n"+
			"tests and benchmarks; prints a JSON summary. Also: keyguard-loadgen version.")
	var cfg export.Config
	flag.StringVar(&cfg.Collector, "collector", "127.0.0.1:7443", "collector ingest address host:port")
	flag.StringVar(&cfg.CAFile, "ca", "", "CA bundle for the collector's certificate")
	flag.StringVar(&cfg.CertFile, "cert", "", "this host's client certificate")
	flag.StringVar(&cfg.KeyFile, "key", "", "this host's client key")
	flag.StringVar(&cfg.ServerName, "server-name", "", "name in the collector's certificate (default: host of -collector)")
	flag.BoolVar(&cfg.Plaintext, "plaintext", false, "no TLS (loopback demo collector only)")
	flag.StringVar(&cfg.PlaintextHost, "plaintext-host", "", "host identity to claim in plaintext mode")
	flag.StringVar(&cfg.SpoolDir, "spool", "", "spool directory")
	flag.Int64Var(&cfg.SpoolMaxBytes, "spool-max-bytes", 0, "spool size cap (default 256 MiB)")
	flag.IntVar(&cfg.QueueSize, "queue", 0, "queue size (default 16384)")
	flag.DurationVar(&cfg.BackoffMax, "backoff-max", 2*time.Second, "longest reconnect delay")
	target := flag.Uint64("target", 100000, "stop submitting when the spool has assigned this many sequence numbers")
	rate := flag.Int("rate", 0, "events per second (0: as fast as the queue takes them without loss)")
	runID := flag.String("run-id", "", "label of this run in event details (default: pid)")
	verbose := flag.Bool("v", false, "log pipeline messages to stderr")
	eventsFile := flag.String("events", "", "submit these events (protojson, one per line; - for stdin) instead of generated ones")
	if code, done := cmdline.Parse(flag, args, stdout, stderr); done {
		return code
	}
	if flag.NArg() > 0 {
		return cmdline.Usagef(flag, stderr, "unexpected arguments %q", flag.Args())
	}
	if *runID == "" {
		*runID = fmt.Sprint(os.Getpid())
	}
	cfg.AgentVersion = "loadgen"

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var fileEvents []*keyguardv1.Event
	if *eventsFile != "" {
		var err error
		if fileEvents, err = readEvents(*eventsFile); err != nil {
			fmt.Fprintln(stderr, "keyguard-loadgen:", err)
			return cmdline.ExitFailure
		}
	}
	if err := run(ctx, cfg, log, *target, *rate, *runID, fileEvents); err != nil {
		fmt.Fprintln(stderr, "keyguard-loadgen:", err)
		return cmdline.ExitFailure
	}
	return cmdline.ExitOK
}

// Summary is printed as JSON on exit.
type Summary struct {
	RunID     string  `json:"run_id"`
	Submitted uint64  `json:"submitted"`
	Refused   uint64  `json:"refused"`
	NextSeq   uint64  `json:"next_seq"`
	AckedSeq  uint64  `json:"acked_seq"`
	Seconds   float64 `json:"seconds"`
	Resent    uint64  `json:"resent"`
	Reconnect uint64  `json:"reconnects"`
}

func run(ctx context.Context, cfg export.Config, log *slog.Logger, target uint64, rate int, runID string, fileEvents []*keyguardv1.Event) error {
	p, err := export.New(cfg, log)
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(runCtx) }()

	start := time.Now()
	sum := Summary{RunID: runID}
	next := p.Stats().Spool.NextSeq
	toSend := uint64(0)
	if next <= target {
		toSend = target - next + 1
	}
	if fileEvents != nil {
		toSend = uint64(len(fileEvents)) // every run submits the whole file
	}
	var interval time.Duration
	if rate > 0 {
		interval = time.Second / time.Duration(rate)
	}
	deadline := start
	for k := uint64(1); k <= toSend && ctx.Err() == nil; k++ {
		if interval > 0 {
			deadline = deadline.Add(interval)
			if d := time.Until(deadline); d > 0 {
				time.Sleep(d)
			}
		} else {
			// Never overflow the queue: a generator, unlike the kernel, can wait.
			for st := p.Stats(); st.QueueLen > st.QueueCap/2; st = p.Stats() {
				time.Sleep(200 * time.Microsecond)
			}
		}
		ev, prio := event(runID, k), export.PriorityOf(sample)
		if fileEvents != nil {
			ev = fileEvents[k-1]
			prio = export.PriorityOf(ev)
		}
		if p.Submit(ev, prio) {
			sum.Submitted++
		} else {
			sum.Refused++
		}
	}
	// Wait until everything spooled is acknowledged, and at least this run's events were sent: after
	// a wiped spool the collector's first acknowledgement already covers the numbers the spool starts
	// with, until the spool renumbers them after it.
	for ctx.Err() == nil {
		st := p.Stats()
		if st.QueueLen == 0 && st.Spool.DurableSeq == st.Spool.NextSeq-1 && st.AckedSeq >= st.Spool.DurableSeq &&
			st.Sent >= sum.Submitted {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopRun()
	if err := <-runErr; err != nil {
		return err
	}
	st := p.Stats()
	if err := p.Close(); err != nil {
		return err
	}
	sum.NextSeq, sum.AckedSeq = st.Spool.NextSeq, st.AckedSeq
	sum.Seconds = time.Since(start).Seconds()
	sum.Resent, sum.Reconnect = st.Resent, st.Reconnects
	return json.NewEncoder(os.Stdout).Encode(sum)
}

var sample = event("", 0)

// event builds a realistic denied memory access (about 300 bytes marshalled).
func event(runID string, k uint64) *keyguardv1.Event {
	return &keyguardv1.Event{
		Kind: &keyguardv1.Event_MemoryAccess{MemoryAccess: &keyguardv1.MemoryAccess{
			Accessor: &keyguardv1.Process{
				Pid: 4242, Tid: 4242, Comm: "gdb", ExePath: "/usr/bin/gdb", ExeDev: 0x801, ExeInode: 123456,
				Uid: 1000, Euid: 1000, CgroupPath: "/user.slice/user-1000.slice/session-3.scope", CgroupId: 9876,
			},
			Target: &keyguardv1.Process{
				Pid: 1717, Tid: 1717, Comm: "signer", ExePath: "/opt/signer/bin/signer", ExeDev: 0x801, ExeInode: 654321,
				Uid: 998, Euid: 998, CgroupPath: "/system.slice/signer.service", CgroupId: 4321,
			},
			Operation:       keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH,
			AccessMode:      0x12,
			AccessModeNames: []string{"PTRACE_MODE_ATTACH", "PTRACE_MODE_REALCREDS"},
			Rule:            "signing-keys",
			PolicyMode:      keyguardv1.PolicyMode_POLICY_MODE_ENFORCE,
			Decision:        keyguardv1.Decision_DECISION_DENIED,
			Detail:          fmt.Sprintf("loadgen run=%s n=%d", runID, k),
		}},
	}
}

// readEvents reads protojson events, one per line (blank lines skipped).
func readEvents(path string) ([]*keyguardv1.Event, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read -events: %w", err)
	}
	var evs []*keyguardv1.Event
	for i, line := range bytes.Split(data, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		ev := &keyguardv1.Event{}
		if err := protojson.Unmarshal(line, ev); err != nil {
			return nil, fmt.Errorf("-events %s line %d: %w", path, i+1, err)
		}
		evs = append(evs, ev)
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("-events %s holds no events", path)
	}
	return evs, nil
}
