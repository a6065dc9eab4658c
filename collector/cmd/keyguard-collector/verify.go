package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/keyguard/keyguard/collector/internal/store"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func verify(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("db", "keyguard-events.db", "storage: SQLite file path or postgres:// URL")
	keyFile := fs.String("chain-key-file", "", "chain key file, if the collector uses one")
	var hosts multi
	fs.Var(&hosts, "host", "verify only this host (repeatable)")
	witness := fs.String("checkpoints", "", "also check the database against this witness file of earlier checkpoints and tombstones\n(finds chains cut at either end and deleted hosts)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var key []byte
	if *keyFile != "" {
		k, err := os.ReadFile(*keyFile)
		if err != nil {
			fmt.Fprintln(stderr, "verify:", err)
			return 1
		}
		key = []byte(strings.TrimSpace(string(k)))
	}
	st, err := store.Open(ctx, store.Options{DSN: *dsn, ChainKey: key, Logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "verify:", err)
		return 1
	}
	defer st.Close()
	reps, err := st.Verify(ctx, hosts)
	if err != nil {
		fmt.Fprintln(stderr, "verify:", err)
		return 1
	}
	bad := 0
	for _, r := range reps {
		if r.GetOk() {
			fmt.Fprintf(stdout, "OK    %s: %d events, chain intact\n", r.GetHost(), r.GetEventsChecked())
			continue
		}
		bad++
		fmt.Fprintf(stdout, "FAIL  %s: %d events checked, %d problem(s)\n", r.GetHost(), r.GetEventsChecked(), len(r.GetProblems()))
		for _, p := range r.GetProblems() {
			fmt.Fprintf(stdout, "      %s at position %d: %s\n", strings.TrimPrefix(p.GetKind().String(), "CHAIN_PROBLEM_KIND_"), p.GetChainPosition(), p.GetDetail())
		}
	}
	if *witness != "" {
		n, err := checkWitness(ctx, st, *witness, stdout)
		if err != nil {
			fmt.Fprintln(stderr, "verify:", err)
			return 1
		}
		bad += n
	}
	if bad > 0 {
		return 1
	}
	return 0
}

// checkWitness prints the disagreements between the database and a witness file and returns their
// number.
func checkWitness(ctx context.Context, st *store.Store, path string, stdout io.Writer) (int, error) {
	recs, err := store.ReadWitness(path)
	if err != nil {
		return 0, err
	}
	probs, err := st.CheckWitness(ctx, recs)
	if err != nil {
		return 0, err
	}
	for _, p := range probs {
		fmt.Fprintf(stdout, "FAIL  %s: %s\n", p.Host, p.Detail)
	}
	if len(probs) == 0 {
		fmt.Fprintf(stdout, "OK    %d witness record(s) in %s agree with the database\n", len(recs), path)
	}
	return len(probs), nil
}

// checkpoint appends every host's current chain state to a witness file.
func checkpoint(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) int {
	fs := flag.NewFlagSet("checkpoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("db", "keyguard-events.db", "storage: SQLite file path or postgres:// URL")
	witness := fs.String("witness", "", "witness file to append to (keep it where the collector's administrator cannot rewrite it)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *witness == "" {
		fmt.Fprintln(stderr, "checkpoint: -witness FILE is required")
		return 2
	}
	st, err := store.Open(ctx, store.Options{DSN: *dsn, Logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "checkpoint:", err)
		return 1
	}
	defer st.Close()
	cps, err := st.Checkpoints(ctx, time.Now().UTC())
	if err != nil {
		fmt.Fprintln(stderr, "checkpoint:", err)
		return 1
	}
	if err := store.AppendWitness(*witness, cps); err != nil {
		fmt.Fprintln(stderr, "checkpoint:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%d host checkpoint(s) appended to %s\n", len(cps), *witness)
	return 0
}
