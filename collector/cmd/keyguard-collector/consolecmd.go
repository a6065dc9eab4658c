package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/keyguard/keyguard/collector/internal/console"
)

// consoleCmd: keyguard-collector console user add -users FILE -name NAME -role admin|viewer, with the
// password read from the first line of stdin (so it never appears in the process list or shell history).
func consoleCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) < 2 || args[0] != "user" || args[1] != "add" {
		fmt.Fprintln(stderr, "usage: keyguard-collector console user add -users FILE -name NAME -role admin|viewer  (password on stdin)")
		return 2
	}
	fs := flag.NewFlagSet("console user add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	users := fs.String("users", "", "users file (created 0600 if missing)")
	name := fs.String("name", "", "user name: 1-64 of a-z A-Z 0-9 . _ - @")
	role := fs.String("role", console.RoleViewer, "viewer (read only) or admin (may also issue operator tokens)")
	if err := fs.Parse(args[2:]); err != nil {
		return 2
	}
	if *users == "" || *name == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "console user add: -users and -name are required (and no other arguments); the password is read from stdin")
		return 2
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
