package daemon

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/loader"
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
func scanProcs(rs loader.RuleSet, self int) ([]found, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	var out []found
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		f := found{PID: pid}
		if id, err := loader.StatFileID(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
			if r, ok := rs.Exes[id]; ok {
				f.RuleID, f.Why = r, "executable"
			}
		}
		if f.RuleID == 0 && len(rs.Keys) > 0 {
			fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			for _, fd := range fds {
				p := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
				id, err := loader.StatFileID(p)
				if err != nil {
					continue
				}
				if r, ok := rs.Keys[id]; ok {
					target, _ := os.Readlink(p)
					f.RuleID, f.Why = r, "key file "+filepath.Clean(target)
					break
				}
			}
		}
		if f.RuleID == 0 {
			continue
		}
		f.TracerPID = tracerPID(pid)
		out = append(out, f)
	}
	return out, nil
}

// tracerPID returns the first non-zero TracerPid among the process's threads.
func tracerPID(pid int) int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "TracerPid:"); ok {
				if n, _ := strconv.Atoi(strings.TrimSpace(v)); n != 0 {
					return n
				}
			}
		}
	}
	return 0
}
