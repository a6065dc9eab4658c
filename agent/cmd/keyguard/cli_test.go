package main

import (
	"path/filepath"
	"testing"

	"github.com/keyguard/keyguard/bpf/objhash"
	"github.com/keyguard/keyguard/deploy/cmdline/clitest"
)

// keyguard and keyguard-loadgen (the real binaries) answer -h, --help and help on every command with
// usage on stdout and exit 0, and version/--version with the build's identity.
func TestHelpAndVersion(t *testing.T) {
	dir := clitest.Build(t, ".", "../keyguard-loadgen")
	kg, loadgen := filepath.Join(dir, "keyguard"), filepath.Join(dir, "keyguard-loadgen")
	cases := []clitest.Case{
		{Bin: kg, Args: []string{"-h"}, Want: "usage: keyguard <command>"},
		{Bin: kg, Args: []string{"--help"}, Want: "break-glass"},
		{Bin: kg, Args: []string{"help"}, Want: "usage: keyguard <command>"},
		{Bin: kg, Args: []string{"help", "events"}, Want: "usage: keyguard events"},
		{Bin: kg, Args: []string{"version"}, Want: "bpf object sha256 " + objhash.SHA256},
		{Bin: kg, Args: []string{"--version"}, Want: "keyguard dev\ncommit "},
		{Bin: kg, Args: []string{"token", "-h"}, Want: "usage: keyguard token <command>"},
		{Bin: kg, Args: []string{"token", "sign", "--help"}, Want: "-action"},
		{Bin: kg, Args: []string{"token", "keygen", "help"}, Want: "usage: keyguard token keygen"},
		{Bin: kg, Args: []string{"scan", "--help"}, Want: "usage: keyguard scan"},
		{Bin: loadgen, Args: []string{"-h"}, Want: "usage: keyguard-loadgen [flags]"},
		{Bin: loadgen, Args: []string{"--help"}, Want: "-target"},
		{Bin: loadgen, Args: []string{"help"}, Want: "usage: keyguard-loadgen"},
		{Bin: loadgen, Args: []string{"version"}, Want: "keyguard-loadgen dev\ncommit "},
		{Bin: loadgen, Args: []string{"--version"}, Want: "bpf object sha256 "},
	}
	for name := range commands {
		for _, h := range []string{"-h", "--help", "help"} {
			cases = append(cases, clitest.Case{Bin: kg, Args: []string{name, h}, Want: "usage: keyguard " + name})
		}
	}
	clitest.Succeeds(t, cases)
	clitest.UsageErrors(t, kg, nil, []string{"nope"}, []string{"status", "-nope"}, []string{"token"})
	clitest.UsageErrors(t, loadgen, []string{"-nope"}, []string{"extra"})
}
