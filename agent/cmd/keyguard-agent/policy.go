package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

// policyCmd is `keyguard-agent policy check FILE [-offline]`.
func policyCmd(args []string, stdout, stderr io.Writer) int {
	p := cmdline.Program{Name: "keyguard-agent policy", Version: version, Commands: []cmdline.Command{
		{Name: "check", Summary: "validate a policy file; -offline skips the filesystem checks (for CI)", Run: policyCheck},
	}}
	return p.Main(args, stdout, stderr)
}

func policyCheck(args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-agent policy check", "[-offline] FILE",
		"Validates a policy without a kernel or a running agent: syntax, keys, values, and (unless -offline) that\n"+
			"every executable exists. Prints every problem with file:line:column; exit 0 valid, 1 invalid. Read-only.")
	offline := fs.Bool("offline", false, "do not check the filesystem (the protected executables need not exist; for CI)")
	// Flags may follow the file too: `policy check FILE -offline`.
	var files []string
	rest := args
	for {
		if code, done := cmdline.Parse(fs, rest, stdout, stderr); done {
			return code
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(files) != 1 {
		return cmdline.Usagef(fs, stderr, "give one policy file (got %d)", len(files))
	}
	load := policy.Load
	if *offline {
		load = policy.LoadOffline
	}
	pol, err := load(files[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cmdline.ExitFailure
	}
	names := make([]string, 0, len(pol.Rules))
	for _, r := range pol.Rules {
		names = append(names, r.Name)
	}
	what := "valid"
	if *offline {
		what = "valid (offline: executables not checked)"
	}
	fmt.Fprintf(stdout, "%s: %s; %d rule(s): %s; sha256 %s\n", files[0], what, len(pol.Rules), strings.Join(names, ", "), hex.EncodeToString(pol.SHA256[:]))
	return cmdline.ExitOK
}
