// Command keyguard-collector receives keyguard events from agents over mTLS gRPC and stores them in
// SQLite or PostgreSQL.
//
//	keyguard-collector [serve] [flags]        run the collector (flags override -config YAML)
//	keyguard-collector certs <init|host|operator|revoke> [flags]
//	keyguard-collector verify -db DSN [-host H]... [-chain-key-file F]
//	keyguard-collector console user add -users FILE -name NAME -role admin|viewer   (password on stdin)
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			return serve(ctx, args[1:], stderr, log)
		case "certs":
			return certs(args[1:], stdout, stderr)
		case "verify":
			return verify(ctx, args[1:], stdout, stderr, log)
		case "enroll":
			return enrollCmd(args[1:], stdout, stderr)
		case "console":
			return consoleCmd(args[1:], os.Stdin, stdout, stderr)
		case "help", "-h", "--help":
			usage(stdout)
			return 0
		}
		if args[0] != "" && args[0][0] != '-' {
			fmt.Fprintf(stderr, "keyguard-collector: unknown command %q\n\n", args[0])
			usage(stderr)
			return 2
		}
	}
	return serve(ctx, args, stderr, log)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  keyguard-collector [serve] [flags]      run the collector ('serve -h' lists flags)
  keyguard-collector certs init|host|operator|revoke [flags]
                                          demo PKI: CA, collector, host and operator certificates, revocation
  keyguard-collector enroll token-key|token [flags]
                                          agent enrollment: bootstrap-token secret, single-use tokens (serve -enroll-listen)
  keyguard-collector verify -db DSN       verify the hash chains directly in a database
  keyguard-collector console user add -users FILE -name NAME -role admin|viewer
                                          add or replace a web console user (password on stdin)
`)
}
