package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/keyguard/keyguard/collector/internal/store"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func verify(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) int {
	fs := cmdline.NewFlagSet("keyguard-collector verify", "-db DSN [-host H]... [-chain-key-file F]",
		"Verifies the hash chains in the database (read-only: a missing SQLite file is an error, nothing is created).\n"+
			"Exit 0 when every chain is intact, 1 when a problem is found or the database cannot be read.")
	dsn := fs.String("db", "keyguard-events.db", "storage: SQLite file path or postgres:// URL (must exist)")
	keyFile := fs.String("chain-key-file", "", "chain key file, if the collector uses one")
	var hosts multi
	fs.Var(&hosts, "host", "verify only this host (repeatable)")
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
	if bad > 0 {
		return 1
	}
	return 0
}
