package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/keyguard/keyguard/collector/internal/console"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

// consoleCmd: keyguard-collector console user add -users FILE -name NAME -role admin|viewer, with the
// password read from the first line of stdin (so it never appears in the process list or shell history).
func consoleCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	add := cmdline.Command{Name: "add", Summary: "add or replace a user (password on the first line of stdin)",
		Run: func(args []string, stdout, stderr io.Writer) int { return consoleUserAdd(args, stdin, stdout, stderr) }}
	user := cmdline.Program{Name: "keyguard-collector console user", Version: version, Commands: []cmdline.Command{add}}
	p := cmdline.Program{Name: "keyguard-collector console", Version: version, Commands: []cmdline.Command{
		{Name: "user", Summary: "user add -users FILE -name NAME -role admin|viewer: manage web console users", Run: user.Main},
	}}
	return p.Main(args, stdout, stderr)
}

func consoleUserAdd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-collector console user add", "-users FILE -name NAME [-role admin|viewer]  (password on stdin)",
		"Adds or replaces a web console user; the password is the first line of standard input, so it never appears\n"+
			"in the process list or shell history.")
	users := fs.String("users", "", "users file (created 0600 if missing)")
	name := fs.String("name", "", "user name: 1-64 of a-z A-Z 0-9 . _ - @")
	role := fs.String("role", console.RoleViewer, "viewer (read only) or admin (may also issue operator tokens)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if *users == "" || *name == "" || fs.NArg() > 0 {
		return cmdline.Usagef(fs, stderr, "-users and -name are required (and no other arguments); the password is read from stdin")
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintln(stderr, "console user add: read password from stdin:", err)
		return 1
	}
	password := strings.TrimRight(line, "\r\n")
	if err := console.AddUser(*users, *name, *role, password); err != nil {
		fmt.Fprintln(stderr, "console user add:", err)
		return 1
	}
	fmt.Fprintf(stdout, "user %s (%s) written to %s\n", *name, *role, *users)
	return 0
}
