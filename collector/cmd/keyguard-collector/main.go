// Command keyguard-collector receives keyguard events from agents over mTLS gRPC and stores them in
// SQLite or PostgreSQL.
//
//	keyguard-collector [serve] [flags]        run the collector (flags override -config YAML)
//	keyguard-collector version | help
//	keyguard-collector certs <init|host|operator|revoke> [flags]
//	keyguard-collector verify -db DSN [-host H]... [-chain-key-file F] [-checkpoints FILE]
//	keyguard-collector checkpoint -db DSN -witness FILE
//	keyguard-collector console user add -users FILE -name NAME -role admin|viewer   (password on stdin)
package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyguard/keyguard/deploy/cmdline"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	serveCmd := cmdline.Command{Name: "serve", Summary: "run the collector (the default; flags override -config YAML)",
		Run: func(args []string, stdout, stderr io.Writer) int { return serve(ctx, args, stdout, stderr, log) }}
	p := cmdline.Program{
		Name: "keyguard-collector", Version: version,
		About: "keyguard-collector receives keyguard events from agents over mTLS gRPC and stores them in SQLite or PostgreSQL.",
		Commands: []cmdline.Command{
			serveCmd,
			{Name: "certs", Summary: "demo PKI: CA, collector, host and operator certificates, revocation", Run: certs},
			{Name: "verify", Summary: "verify the hash chains directly in a database (read-only)",
				Run: func(args []string, stdout, stderr io.Writer) int { return verify(ctx, args, stdout, stderr, log) }},
			{Name: "checkpoint", Summary: "append every host's chain state to a witness file (read-only on the database)",
				Run: func(args []string, stdout, stderr io.Writer) int { return checkpoint(ctx, args, stdout, stderr, log) }},
			{Name: "enroll", Summary: "agent enrollment: token-key (bootstrap-token secret) and token (single-use tokens; serve -enroll-listen)", Run: enrollCmd},
			{Name: "console", Summary: "console user add: add or replace a web console user (password on stdin)",
				Run: func(args []string, stdout, stderr io.Writer) int { return consoleCmd(args, os.Stdin, stdout, stderr) }},
		},
		Default: &serveCmd,
		Footer:  "Flags without a command run serve: keyguard-collector -config FILE is keyguard-collector serve -config FILE.",
	}
	return p.Main(args, stdout, stderr)
}
