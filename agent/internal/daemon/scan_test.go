package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/procfs"
)

// The procfs scan on a fake tree: a process running a protected executable, one holding a protected
// key file open (and traced), one unrelated, and the agent itself (skipped).
func TestScanProcs(t *testing.T) {
	files := t.TempDir()
	touch := func(name string) string {
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	signer, key, shell := touch("signer"), touch("signing.pem"), touch("sh")
	id := func(p string) loader.FileID {
		fid, err := loader.StatFileID(p)
		if err != nil {
			t.Fatal(err)
		}
		return fid
	}
	root := t.TempDir()
	mk := func(rel, target, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target != "" {
			err = os.Symlink(target, p)
		} else {
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	mk("10/exe", signer, "")
	mk("10/task/10/status", "", "TracerPid:\t0\n")
	mk("11/exe", shell, "")
	mk("11/fd/0", shell, "")
	mk("11/fd/3", key, "")
	mk("11/task/11/status", "", "TracerPid:\t0\n")
	mk("11/task/12/status", "", "TracerPid:\t4242\n")
	mk("20/exe", shell, "")
	mk("99/exe", signer, "") // the agent itself
	rs := loader.RuleSet{Exes: map[loader.FileID]uint32{id(signer): 1}, Keys: map[loader.FileID]uint32{id(key): 2}}

	got, err := scanProcs(procfs.FS{Root: root}, rs, 99)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b found) int { return a.PID - b.PID })
	want := []found{
		{PID: 10, RuleID: 1, Why: "executable"},
		{PID: 11, RuleID: 2, Why: "key file " + key, TracerPID: 4242},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("scanProcs = %+v\nwant %+v", got, want)
	}
	// Without key rules the fds are not looked at.
	rs.Keys = nil
	if got, _ := scanProcs(procfs.FS{Root: root}, rs, 99); len(got) != 1 || got[0].PID != 10 {
		t.Fatalf("exe rules only: %+v", got)
	}
}
