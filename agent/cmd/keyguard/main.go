// Command keyguard is the operator's CLI: status, scan, break-glass, events, verify.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyguard/keyguard/deploy/cmdline"
)

// command is one subcommand of the CLI. run returns the process exit code.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands is filled by the register calls in this package's files, one file per subcommand.
var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) int) {
	if _, dup := commands[name]; dup {
		panic("keyguard: command registered twice: " + name)
	}
	commands[name] = command{summary: summary, run: run}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func program(ctx context.Context) cmdline.Program {
	p := cmdline.Program{Name: "keyguard", Version: version,
		About: "keyguard is the operator's CLI: the local agent (status, break-glass, scan, tokens) and the collector (events, hosts, verify)."}
	for name, c := range commands {
		run := c.run
		p.Commands = append(p.Commands, cmdline.Command{Name: name, Summary: c.summary,
			Run: func(args []string, stdout, stderr io.Writer) int { return run(ctx, args, stdout, stderr) }})
	}
	return p
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := program(ctx).Main(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
