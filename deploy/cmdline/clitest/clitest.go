// Package clitest checks built keyguard binaries against the conventions of package cmdline: help on
// -h, --help and help (stdout, exit 0, no files created), version and --version, and usage errors (exit 2
// with usage on stderr). Each binary's cli_test.go lists its commands; the checks live here once.
package clitest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Build builds the packages (import paths or directories, relative to the test's directory) into a
// temporary directory and returns it; binaries are named after their package directory.
func Build(t *testing.T, pkgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, out)
	}
	return dir
}

// Case is one command line that must succeed with Want in its standard output.
type Case struct {
	Bin  string
	Args []string
	Want string
}

// Succeeds runs each case in an empty working directory: exit 0, Want on stdout, nothing on stderr,
// and no file created.
func Succeeds(t *testing.T, cases []Case) {
	t.Helper()
	for _, tc := range cases {
		t.Run(filepath.Base(tc.Bin)+" "+strings.Join(tc.Args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(tc.Bin, tc.Args...)
			cmd.Stdout, cmd.Stderr, cmd.Dir = &stdout, &stderr, t.TempDir()
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\nstderr: %s", err, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.Want) || stderr.Len() > 0 {
				t.Errorf("stdout lacks %q or stderr not empty:\nstdout: %s\nstderr: %s", tc.Want, stdout.String(), stderr.String())
			}
			if ents, _ := os.ReadDir(cmd.Dir); len(ents) > 0 {
				t.Errorf("created files: %v", ents)
			}
		})
	}
}

// UsageErrors runs bin with each argument list and wants exit 2 with a usage text on stderr.
func UsageErrors(t *testing.T, bin string, argLists ...[]string) {
	t.Helper()
	for _, args := range argLists {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "usage:") {
			t.Errorf("%s %q: %v, want exit 2 and usage on stderr; stderr:\n%s", filepath.Base(bin), args, err, stderr.String())
		}
	}
}
