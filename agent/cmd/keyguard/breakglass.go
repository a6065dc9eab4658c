package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"

	"github.com/keyguard/keyguard/agent/internal/control"
)

func init() {
	register("break-glass", "grant one accessor a time-limited exception to a rule, with a written reason", runBreakGlass)
}

func runBreakGlass(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("break-glass", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket")
	exe := fs.String("executable", "", "absolute path of the accessor's executable (required)")
	uid := fs.Int64("uid", -2, "uid the accessor runs as (required; -1 for any uid)")
	rule := fs.String("rule", "", "policy rule to open (required)")
	dur := fs.String("for", "15m", "how long the exception lasts (at most 4h)")
	reason := fs.String("reason", "", "why, in words (required; recorded in the event)")
	operator := fs.String("operator", defaultOperator(), "who grants it")
	revoke := fs.Uint64("revoke", 0, "revoke the grant with this id instead")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	req := control.Request{Op: "break-glass", Executable: *exe, Rule: *rule, Duration: *dur, Reason: *reason, Operator: *operator}
	if *revoke != 0 {
		req = control.Request{Op: "revoke", GrantID: *revoke}
	} else {
		if *uid == -2 {
			fmt.Fprintln(stderr, "keyguard break-glass: -uid is required (-1 for any uid)")
			return 2
		}
		req.UID = uid
	}
	resp, err := control.Call(*socket, req)
	if err != nil {
		fmt.Fprintln(stderr, "keyguard break-glass:", err)
		return 1
	}
	if g := resp.Grant; g != nil {
		fmt.Fprintf(stdout, "granted #%d: %s (uid %d) may read processes of rule %s until %s\n", g.ID, g.Executable, g.UID, g.Rule, g.Expires.Format("2006-01-02 15:04:05 MST"))
	} else {
		fmt.Fprintf(stdout, "revoked #%d\n", *revoke)
	}
	return 0
}

// defaultOperator names the human behind sudo when there is one.
func defaultOperator() string {
	if s := os.Getenv("SUDO_USER"); s != "" {
		return s
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
