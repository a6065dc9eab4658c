// Package cmdline holds the conventions every keyguard command follows, so that the deploy files
// (systemd units, .deb conffiles, Helm and Kubernetes manifests) and operators see one interface:
//
//   - `-h`, `--help` and `help` print the usage on standard output and exit 0, for every binary and
//     every subcommand;
//   - `version` and `--version` print the version, commit, Go version and the SHA-256 of the BPF
//     object the agent embeds;
//   - exit codes: 0 success, 1 failure (or, for checks, a problem found), 2 usage error;
//   - configuration files are YAML; flags given on the command line override them, through one
//     mechanism (Config), and an unknown key is an error naming file:line:column.
//
// It lives in deploy/ because it is the interface those files are written against, and it belongs to
// no single binary: the agent and the collector both use it.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// IsHelp reports whether arg asks for help.
func IsHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help" || arg == "help"
}

// IsVersion reports whether arg asks for the version.
func IsVersion(arg string) bool { return arg == "version" || arg == "--version" || arg == "-version" }

// Command is one subcommand of a program.
type Command struct {
	Name    string
	Summary string
	// Run runs the command with the arguments after its name and returns the exit code.
	Run func(args []string, stdout, stderr io.Writer) int
}

// Program is a binary with subcommands.
type Program struct {
	Name    string
	Version string
	// Usage is printed above the command list (e.g. what the program is).
	About    string
	Commands []Command
	// Default runs when the first argument is a flag or missing (nil: usage error). The collector's
	// bare flags mean `serve`.
	Default *Command
	// Footer is printed below the command list.
	Footer string
}

// Main dispatches args (without the program name) and returns the exit code.
func (p Program) Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 && p.Default == nil {
		p.Usage(stderr)
		return ExitUsage
	}
	if len(args) > 0 {
		switch {
		case IsHelp(args[0]):
			if len(args) > 1 {
				if c, ok := p.find(args[1]); ok {
					return c.Run([]string{"-h"}, stdout, stderr)
				}
			}
			p.Usage(stdout)
			return ExitOK
		case IsVersion(args[0]):
			fmt.Fprint(stdout, VersionText(p.Name, p.Version))
			return ExitOK
		}
		if c, ok := p.find(args[0]); ok {
			return c.Run(args[1:], stdout, stderr)
		}
		if p.Default == nil || !strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "%s: unknown command %q\n\n", p.Name, args[0])
			p.Usage(stderr)
			return ExitUsage
		}
	}
	return p.Default.Run(args, stdout, stderr)
}

func (p Program) find(name string) (Command, bool) {
	for _, c := range p.Commands {
		if c.Name == name {
			return c, true
		}
	}
	return Command{}, false
}

// Usage prints the program's usage: what it is, its commands, and how to get more.
func (p Program) Usage(w io.Writer) {
	if p.About != "" {
		fmt.Fprintln(w, strings.TrimRight(p.About, "\n"))
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "usage: %s <command> [flags]\n\ncommands:\n", p.Name)
	cs := append([]Command(nil), p.Commands...)
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	for _, c := range cs {
		if c.Summary != "" {
			fmt.Fprintf(w, "  %-14s %s\n", c.Name, c.Summary)
		}
	}
	fmt.Fprintf(w, "  %-14s %s\n", "version", "print version, commit, Go version and BPF object hash")
	fmt.Fprintf(w, "  %-14s %s\n", "help", "print this help; 'help COMMAND' for a command's flags")
	if p.Footer != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.TrimRight(p.Footer, "\n"))
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND -h' for a command's flags. Exit codes: 0 success, 1 failure, 2 usage error.\n", p.Name)
}

// NewFlagSet returns a flag set for "PROGRAM COMMAND" whose usage starts with synopsis (the
// arguments after the command name, e.g. "[flags] FILE").
func NewFlagSet(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s %s\n", name, synopsis)
		if about != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimRight(about, "\n"))
		}
		var n int
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// Parse parses args into fs. -h, --help and a lone "help" print the usage on stdout; then done is true
// and code is 0. A bad flag prints the error and usage on stderr: done, code 2. Otherwise done is false
// and the command goes on.
func Parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, done bool) {
	if len(args) == 1 && args[0] == "help" {
		fs.SetOutput(stdout)
		fs.Usage()
		return ExitOK, true
	}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return ExitOK, true
	case err != nil:
		fs.SetOutput(stderr)
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		fs.Usage()
		return ExitUsage, true
	}
	fs.SetOutput(stderr)
	return 0, false
}

// Usagef reports a usage error (missing or extra arguments) and returns ExitUsage.
func Usagef(fs *flag.FlagSet, stderr io.Writer, format string, a ...any) int {
	fmt.Fprintf(stderr, "%s: %s\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.SetOutput(stderr)
	fs.Usage()
	return ExitUsage
}
