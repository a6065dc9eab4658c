package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func writeExe(t *testing.T, path string) {
	t.Helper()
	writeFile(t, path, "#!/bin/sh\nexit 0\n", 0o755)
}

func writePolicy(t *testing.T, dir, yaml string) string {
	t.Helper()
	p := filepath.Join(dir, "policy.yaml")
	writeFile(t, p, yaml, 0o644)
	return p
}

func TestLoadFileChecks(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "bin/signer")
	writeExe(t, exe)
	writeFile(t, filepath.Join(dir, "bin/plain"), "data", 0o644)
	if err := os.Link(exe, filepath.Join(dir, "bin/signer-link")); err != nil {
		t.Fatal(err)
	}
	writeExe(t, filepath.Join(dir, "bin/signer-copy"))
	if err := os.Symlink("loop-b", filepath.Join(dir, "bin/loop-a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop-a", filepath.Join(dir, "bin/loop-b")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("gone", filepath.Join(dir, "bin/dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("signer", filepath.Join(dir, "bin/signer-sym")); err != nil {
		t.Fatal(err)
	}

	rule := func(exes ...string) string {
		s := "  - name: r%d\n    match:\n      executables:\n"
		for _, e := range exes {
			s += "        - " + e + "\n"
		}
		return s
	}
	cases := []struct {
		name  string
		rules []string
		want  []want // prefixes are relative to the policy path; "P" is replaced by it
	}{
		{"valid, including hard link, copy and symlink", []string{rule(exe, dir+"/bin/signer-link", dir+"/bin/signer-sym"), rule(dir + "/bin/signer-copy")}, nil},
		{"missing", []string{rule(exe, dir+"/bin/sigger")}, []want{{"P:7:11: rules[0].match.executables[1]: ", fmt.Sprintf("%q: no such file (check the path;", dir+"/bin/sigger")}}},
		{"missing directory", []string{rule(dir + "/nobin/signer")}, []want{{"P:6:11: rules[0].match.executables[0]: ", "no such file"}}},
		{"directory", []string{rule(dir + "/bin")}, []want{{"P:6:11: rules[0].match.executables[0]: ", "is a directory, not an executable file"}}},
		{"not executable", []string{rule(dir + "/bin/plain")}, []want{{"P:6:11: rules[0].match.executables[0]: ", "is not executable (no x permission bit)"}}},
		{"device", []string{rule("/dev/null")}, []want{{"P:6:11: rules[0].match.executables[0]: ", `"/dev/null": is not a regular file`}}},
		{"file as directory", []string{rule(dir + "/bin/plain/x")}, []want{{"P:6:11: rules[0].match.executables[0]: ", "a component of the path is not a directory"}}},
		{"symlink loop", []string{rule(dir + "/bin/loop-a")}, []want{{"P:6:11: rules[0].match.executables[0]: ", "too many levels of symbolic links"}}},
		{"dangling symlink", []string{rule(dir + "/bin/dangling")}, []want{{"P:6:11: rules[0].match.executables[0]: ", "no such file"}}},
		{"hard link in two rules", []string{rule(exe), rule(dir + "/bin/signer-link")}, []want{{"P:10:11: rules[1].match.executables[0]: ",
			fmt.Sprintf("%q is the same file as %q of rule \"r0\" (rules[0].match.executables[0]); a file can be the executable of one rule only", dir+"/bin/signer-link", exe)}}},
		{"symlink in two rules", []string{rule(exe), rule(dir + "/bin/signer-sym")}, []want{{"P:10:11: rules[1].match.executables[0]: ", "is the same file as"}}},
		{"accessor missing", []string{rule(exe) + "    allow:\n      - executable: /usr/bin/gdb-absent\n        uid: 0\n"},
			[]want{{"P:8:21: rules[0].allow[0].executable: ", `"/usr/bin/gdb-absent": no such file`}}},
		{"parse and file errors together, in file order", []string{rule(dir+"/bin/absent1") + "    mode: bad\n", rule(dir + "/bin/absent2")}, []want{
			{"P:6:11: rules[0].match.executables[0]: ", "no such file"},
			{"P:7:11: rules[0].mode: ", `"bad" is not a mode`},
			{"P:11:11: rules[1].match.executables[0]: ", "no such file"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := head
			for i, r := range tc.rules {
				y += fmt.Sprintf(r, i)
			}
			path := writePolicy(t, t.TempDir(), y)
			p, err := Load(path)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Load: %v\npolicy:\n%s", err, y)
				}
				if len(p.Rules) != len(tc.rules) {
					t.Fatalf("got %d rules", len(p.Rules))
				}
				return
			}
			if p != nil {
				t.Error("Load returned a policy with errors")
			}
			for i := range tc.want {
				tc.want[i].prefix = strings.Replace(tc.want[i].prefix, "P", path, 1)
			}
			checkErrors(t, err, tc.want)
		})
	}
}

func TestLoadPolicyFileProblems(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := writePolicy(t, t.TempDir(), "")
	syntax := writePolicy(t, t.TempDir(), "version: 1\nrules: [\n")
	cases := []struct {
		name, path, msg string
	}{
		{"missing", filepath.Join(dir, "absent.yaml"), "no such file; give the path of the policy file"},
		{"directory", dir, "is a directory; give the path of the policy YAML file itself"},
		{"fifo", fifo, "is not a regular file (p---------); give the path"},
		{"empty", empty, "file is empty"},
		{"syntax", syntax, "YAML syntax error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.path)
			errs := policyErrors(t, err)
			if len(errs) != 1 || errs[0].File != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Load(%s) = %v, want one error for that file containing %q", tc.path, err, tc.msg)
			}
		})
	}
}

// TestLoadUnreadable loads a file this thread may not read: root reads anything, so the test thread
// switches its filesystem uid to nobody (which drops the DAC override capabilities) for the call.
func TestLoadUnreadable(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to switch the filesystem uid")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := writePolicy(t, dir, head)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	unix.Setfsuid(65534)
	_, err := Load(path)
	unix.Setfsuid(0)
	if prev, _ := unix.SetfsuidRetUid(0); prev != 0 {
		t.Fatal("could not restore the filesystem uid")
	}
	runtime.UnlockOSThread()
	want := path + ": permission denied reading the policy file"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got %v, want prefix %q", err, want)
	}
}
