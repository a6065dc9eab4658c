package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/posture"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

func init() {
	register("status", "show the local agent's state: rules, counters, protected processes, posture", runStatus)
}

func runStatus(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard status", "[flags]", "")
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	resp, err := control.Call(*socket, control.Request{Op: "status"})
	if err != nil {
		fmt.Fprintln(stderr, "keyguard status:", err)
		return 1
	}
	s := resp.Status
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(s)
		return 0
	}
	fmt.Fprintf(stdout, "agent %s, BPF build %s (adopted pinned programs: %v), pinned in %s\n", s.Version, s.Build, s.Adopted, s.PinPath)
	fmt.Fprintf(stdout, "policy %s: rules %v\n", s.PolicyPath, s.Rules)
	fmt.Fprintf(stdout, "protected processes: %d %v\n", s.ProtectedNow, s.ProtectedPIDs)
	names := make([]string, 0, len(s.Counters))
	for n := range s.Counters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(stdout, "  %-20s %d\n", n, s.Counters[n])
	}
	fmt.Fprintf(stdout, "events lost in the kernel: %d\n", s.KernelLost)
	if e := s.Export; e != nil {
		switch {
		case e.Problem != "":
			fmt.Fprintf(stdout, "export to %s: NOT DELIVERING since %s: %s\n  what to do: %s\n", e.Collector, e.Since.Format(time.RFC3339), e.Problem, e.Advice)
		case e.Connected:
			fmt.Fprintf(stdout, "export to %s: connected, last acknowledgement %s\n", e.Collector, e.LastAck.Format(time.RFC3339))
		default:
			fmt.Fprintf(stdout, "export to %s: connecting\n", e.Collector)
		}
	}
	for _, g := range s.ActiveGrants {
		fmt.Fprintf(stdout, "break-glass #%d: %s uid %d on rule %s until %s by %s: %s\n", g.ID, g.Executable, g.UID, g.Rule, g.Expires.Format("15:04:05"), g.Operator, g.Reason)
	}
	fmt.Fprintln(stdout, "posture (worst first):")
	posture.Print(stdout, posture.Worst(s.Posture))
	return 0
}
