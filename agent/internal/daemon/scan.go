package daemon

import (
	"os"
	"path/filepath"

	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/procfs"
)

// found is a running process the procfs scan decided to protect.
type found struct {
	PID       int
	RuleID    uint32
	Why       string // executable or key-file path
	TracerPID int    // a tracer attached before protection, which keyguard cannot detach
}

// scanProcs finds processes that run a protected executable or hold a protected key file open.
// Processes in protected cgroups need no scan: the kernel checks cgroups at access time.
func scanProcs(proc procfs.FS, rs loader.RuleSet, self int) ([]found, error) {
	pids, err := proc.PIDs()
	if err != nil {
		return nil, err
	}
	var out []found
	for _, pid := range pids {
		if pid == self {
			continue
		}
		f := found{PID: pid}
		if id, err := loader.StatFileID(proc.Path(pid, "exe")); err == nil {
			if r, ok := rs.Exes[id]; ok {
				f.RuleID, f.Why = r, "executable"
			}
		}
		if f.RuleID == 0 && len(rs.Keys) > 0 {
			f.RuleID, f.Why = keyFileRule(proc, pid, rs)
		}
		if f.RuleID == 0 {
			continue
		}
		f.TracerPID = proc.TracerPID(pid)
		out = append(out, f)
	}
	return out, nil
}

// keyFileRule returns the rule of the first protected key file the process holds open.
func keyFileRule(proc procfs.FS, pid int, rs loader.RuleSet) (uint32, string) {
	for _, p := range proc.FDs(pid) {
		id, err := loader.StatFileID(p)
		if err != nil {
			continue
		}
		if r, ok := rs.Keys[id]; ok {
			target, _ := os.Readlink(p)
			return r, "key file " + filepath.Clean(target)
		}
	}
	return 0, ""
}
