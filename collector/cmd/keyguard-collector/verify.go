package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/keyguard/keyguard/collector/internal/store"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func verify(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) int {
	fs := cmdline.NewFlagSet("keyguard-collector verify", "-db DSN [-host H]... [-chain-key-file F] [-checkpoints FILE] [-witness-db DSN]",
		"Verifies the hash chains in the database (read-only: a missing SQLite file is an error, nothing is created),\n"+
			"and recomputes every agent-signed checkpoint (stored, in the witness file, in the witness collector's database).\n"+
			"Exit 0 when every chain is intact, 1 when a problem is found or the database cannot be read.")
	dsn := fs.String("db", "keyguard-events.db", "storage: SQLite file path or postgres:// URL (must exist)")
	keyFile := fs.String("chain-key-file", "", "chain key file, if the collector uses one")
	var hosts multi
	fs.Var(&hosts, "host", "verify only this host (repeatable)")
	witness := fs.String("checkpoints", "", "also check the database against this witness file of earlier checkpoints and tombstones\n(finds chains cut at either end and deleted hosts)")
	witnessDB := fs.String("witness-db", "", "also check the agent checkpoints a second (witness) collector keeps, from its database DSN")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef(fs, stderr, "unexpected arguments %q", fs.Args())
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
	st, err := store.Open(ctx, store.Options{DSN: *dsn, ChainKey: key, Logger: log, MustExist: true})
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
	n, err := checkAgentChains(ctx, st, hosts, *witness, *witnessDB, log, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "verify:", err)
		return 1
	}
	bad += n
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

// checkAgentChains gathers the agent-signed checkpoints and tombstones this database stored for its own
// agents, those in the witness file and those in the witness collector's database, recomputes the agent
// chains from the stored events, prints the disagreements and returns their number.
func checkAgentChains(ctx context.Context, st *store.Store, hosts []string, file, witnessDSN string, log *slog.Logger, stdout io.Writer) (int, error) {
	own, probs, err := st.AgentCheckpoints(ctx, "")
	if err != nil {
		return 0, err
	}
	var entries []store.CheckpointEntry
	for _, e := range own {
		if e.Source == "" {
			entries = append(entries, e)
		}
	}
	if file != "" {
		recs, err := store.ReadWitness(file)
		if err != nil {
			return 0, err
		}
		good, bad := store.AgentEntries(recs)
		entries, probs = append(entries, good...), append(probs, bad...)
	}
	if witnessDSN != "" {
		w, err := store.Open(ctx, store.Options{DSN: witnessDSN, Logger: log, MustExist: true})
		if err != nil {
			return 0, fmt.Errorf("witness collector database: %w", err)
		}
		good, bad, err := w.AgentCheckpoints(ctx, "")
		w.Close()
		if err != nil {
			return 0, fmt.Errorf("witness collector database: %w", err)
		}
		entries, probs = append(entries, good...), append(probs, bad...)
	}
	if len(hosts) > 0 {
		keep := map[string]bool{}
		for _, h := range hosts {
			keep[h] = true
		}
		var sel []store.CheckpointEntry
		for _, e := range entries {
			if keep[e.CP.GetHost()] {
				sel = append(sel, e)
			}
		}
		entries = sel
	}
	more, err := st.CheckAgentChains(ctx, entries)
	if err != nil {
		return 0, err
	}
	probs = append(probs, more...)
	for _, p := range probs {
		fmt.Fprintf(stdout, "FAIL  %s: %s\n", p.Host, p.Detail)
	}
	if len(entries) > 0 && len(probs) == 0 {
		fmt.Fprintf(stdout, "OK    %d agent-signed checkpoint(s) agree with the stored events\n", len(entries))
	}
	return len(probs), nil
}

// checkpoint appends every host's current chain state to a witness file.
func checkpoint(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) int {
	fs := cmdline.NewFlagSet("keyguard-collector checkpoint", "-db DSN -witness FILE",
		"Appends every host's chain state (a checkpoint) to the witness file. Reads the database, never creates it.")
	dsn := fs.String("db", "keyguard-events.db", "storage: SQLite file path or postgres:// URL")
	witness := fs.String("witness", "", "witness file to append to (keep it where the collector's administrator cannot rewrite it)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if *witness == "" {
		return cmdline.Usagef(fs, stderr, "-witness FILE is required")
	}
	st, err := store.Open(ctx, store.Options{DSN: *dsn, Logger: log, MustExist: true})
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
