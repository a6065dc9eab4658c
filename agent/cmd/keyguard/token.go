package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/keyguard/keyguard/deploy/cmdline"
	"github.com/keyguard/keyguard/proto/optoken"
)

func init() {
	register("token", "make an operator key pair, or sign an uninstall, break-glass or policy token with it", runToken)
}

const tokenUsage = `  keyguard token keygen -out PATH        writes PATH.key (private, 0600: keep it off the hosts) and PATH.pub
  keyguard token sign -key PATH.key -action uninstall|break-glass|policy -host HOST -operator NAME -reason TEXT [flags]
      break-glass: -rule RULE -executable PATH -uid N (-1: any) -for DURATION (at most 4h)
      policy:      -policy FILE (the exact file the agent will load)
      -valid DURATION (default 1h, at most 24h)
The agent accepts a token once, for the host it names, until it expires.`

func runToken(_ context.Context, args []string, stdout, stderr io.Writer) int {
	p := cmdline.Program{Name: "keyguard token", Version: version, About: tokenUsage, Commands: []cmdline.Command{
		{Name: "keygen", Summary: "make an operator key pair", Run: tokenKeygen},
		{Name: "sign", Summary: "sign an uninstall, break-glass or policy token", Run: tokenSign},
	}}
	return p.Main(args, stdout, stderr)
}

func tokenKeygen(args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard token keygen", "[flags]", "")
	out := fs.String("out", "", "path prefix of the key files (required)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if *out == "" {
		fmt.Fprintln(stderr, "keyguard token keygen: -out is required")
		return 2
	}
	if err := optoken.WriteKeyPair(*out); err != nil {
		fmt.Fprintln(stderr, "keyguard token keygen:", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s.key (keep it off the hosts) and %s.pub (install it as /etc/keyguard/operator.pub)\n", *out, *out)
	return 0
}

func tokenSign(args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard token sign", "[flags]", "")
	keyPath := fs.String("key", "", "the operator's private key (required)")
	var c optoken.Claims
	fs.StringVar(&c.Action, "action", "", "uninstall, break-glass or policy (required)")
	fs.StringVar(&c.Host, "host", "", "the host the token is for, as its agent names itself (required)")
	fs.StringVar(&c.Operator, "operator", defaultOperator(), "who authorises it")
	fs.StringVar(&c.Reason, "reason", "", "why, in words (required; recorded in the host's events)")
	fs.StringVar(&c.Rule, "rule", "", "break-glass: the policy rule to open")
	fs.StringVar(&c.Executable, "executable", "", "break-glass: absolute path of the accessor's executable")
	uid := fs.Int64("uid", -2, "break-glass: uid the accessor runs as (-1 for any uid)")
	fs.StringVar(&c.Duration, "for", "", "break-glass: how long the exception lasts, e.g. 15m (at most 4h)")
	policyFile := fs.String("policy", "", "policy: the policy file to approve")
	valid := fs.Duration("valid", time.Hour, "how long the token can be used (at most 24h)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if *keyPath == "" {
		fmt.Fprintln(stderr, "keyguard token sign: -key is required")
		return 2
	}
	if *uid != -2 {
		c.UID = uid
	}
	if *policyFile != "" {
		b, err := os.ReadFile(*policyFile)
		if err != nil {
			fmt.Fprintln(stderr, "keyguard token sign:", err)
			return 1
		}
		s := sha256.Sum256(b)
		c.PolicySHA256 = hex.EncodeToString(s[:])
	} else if c.Action == optoken.ActionPolicy {
		fmt.Fprintln(stderr, "keyguard token sign: a policy token needs -policy FILE")
		return 2
	}
	if *valid <= 0 || *valid > optoken.MaxValidity {
		fmt.Fprintf(stderr, "keyguard token sign: -valid must be positive and at most %s\n", optoken.MaxValidity)
		return 2
	}
	c.IssuedAt = time.Now().UTC().Truncate(time.Second)
	c.ExpiresAt = c.IssuedAt.Add(*valid)
	priv, err := optoken.LoadPrivateKey(*keyPath)
	if err != nil {
		fmt.Fprintln(stderr, "keyguard token sign:", err)
		return 1
	}
	tok, err := optoken.Sign(priv, c)
	if err != nil {
		fmt.Fprintln(stderr, "keyguard token sign:", err)
		if errors.Is(err, os.ErrNotExist) {
			return 1
		}
		return 2
	}
	fmt.Fprintln(stdout, tok)
	return 0
}
