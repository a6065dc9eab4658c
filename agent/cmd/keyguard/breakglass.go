package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

func init() {
	register("break-glass", "grant one accessor a time-limited exception to a rule, with a written reason", runBreakGlass)
}

func runBreakGlass(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard break-glass", "[flags]", "")
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket")
	tokenFile := fs.String("token-file", "", `break-glass token signed by the operator key ("-" for standard input); see keyguard token sign`)
	revoke := fs.Uint64("revoke", 0, "revoke the grant with this id instead (needs no token)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	req := control.Request{Op: "revoke", GrantID: *revoke}
	if *revoke == 0 {
		if *tokenFile == "" {
			fmt.Fprintln(stderr, "keyguard break-glass: -token-file is required: an operator signs one with\n"+
				"  keyguard token sign -key operator.key -action break-glass -host HOST -rule RULE -executable PATH -uid N -for 15m -operator NAME -reason TEXT")
			return 2
		}
		var b []byte
		var err error
		if *tokenFile == "-" {
			b, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
		} else {
			b, err = os.ReadFile(*tokenFile)
		}
		if err != nil {
			fmt.Fprintln(stderr, "keyguard break-glass: read the token:", err)
			return 2
		}
		req = control.Request{Op: "break-glass", Token: strings.TrimSpace(string(b))}
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
