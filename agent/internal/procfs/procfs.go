// Package procfs is the agent's one reader of /proc: process list, status (name, uids, gids, tracer),
// start time, cgroup, executable and open files. FS.Root replaces /proc, so tests point it at a fake
// tree; the zero FS reads the real /proc.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// FS reads one procfs tree.
type FS struct {
	// Root is the procfs mount ("" means /proc).
	Root string
}

// Path names a file of a process, e.g. Path(42, "fd", "3") is /proc/42/fd/3.
func (fs FS) Path(pid int, elem ...string) string {
	return filepath.Join(append([]string{fs.root(), strconv.Itoa(pid)}, elem...)...)
}

// File names a file of procfs itself, e.g. File("stat") is /proc/stat.
func (fs FS) File(elem ...string) string {
	return filepath.Join(append([]string{fs.root()}, elem...)...)
}

func (fs FS) root() string {
	if fs.Root == "" {
		return "/proc"
	}
	return fs.Root
}

// PIDs lists the processes (thread-group leaders) in the tree.
func (fs FS) PIDs() ([]int, error) {
	ents, err := os.ReadDir(fs.root())
	if err != nil {
		return nil, fmt.Errorf("list processes in %s: %w", fs.root(), err)
	}
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out, nil
}

// Status is what the agent reads from /proc/PID/status.
type Status struct {
	Name      string
	UID, EUID uint32
	GID, EGID uint32
	TracerPID int
	hasUID    bool
}

// ParseStatus parses the content of /proc/PID/status; missing lines leave zero values.
func ParseStatus(b []byte) Status {
	var st Status
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "Name":
			st.Name = strings.TrimSpace(v)
		case "Uid":
			if len(f) >= 2 {
				st.UID, st.EUID = parseID(f[0]), parseID(f[1])
				st.hasUID = true
			}
		case "Gid":
			if len(f) >= 2 {
				st.GID, st.EGID = parseID(f[0]), parseID(f[1])
			}
		case "TracerPid":
			if len(f) >= 1 {
				st.TracerPID, _ = strconv.Atoi(f[0])
			}
		}
	}
	return st
}

func parseID(s string) uint32 {
	n, _ := strconv.ParseUint(s, 10, 32)
	return uint32(n)
}

// Status reads /proc/PID/status. A file without a Uid line is an error (not a process status).
func (fs FS) Status(pid int) (Status, error) {
	b, err := os.ReadFile(fs.Path(pid, "status"))
	if err != nil {
		return Status{}, err
	}
	st := ParseStatus(b)
	if !st.hasUID {
		return st, fmt.Errorf("%s has no Uid line", fs.Path(pid, "status"))
	}
	return st, nil
}

// TracerPID returns the first non-zero TracerPid among the process's threads (a tracer may attach to
// any one thread), or 0.
func (fs FS) TracerPID(pid int) int {
	tasks, _ := os.ReadDir(fs.Path(pid, "task"))
	for _, t := range tasks {
		b, err := os.ReadFile(fs.Path(pid, "task", t.Name(), "status"))
		if err != nil {
			continue
		}
		if n := ParseStatus(b).TracerPID; n != 0 {
			return n
		}
	}
	return 0
}

// StartTicks reads a process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
func (fs FS) StartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fs.Path(pid, "stat"))
	if err != nil {
		return 0, fmt.Errorf("read start time of %d: %w", pid, err)
	}
	return ParseStartTicks(b)
}

// ParseStartTicks reads starttime (field 22) from the content of /proc/PID/stat.
func ParseStartTicks(stat []byte) (uint64, error) {
	// The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, errors.New("malformed /proc/PID/stat: too few fields")
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse start time in /proc/PID/stat: %w", err)
	}
	return v, nil
}

// Cgroup returns a process's cgroup v2 path from /proc/PID/cgroup, or "".
func (fs FS) Cgroup(pid int) string {
	b, err := os.ReadFile(fs.Path(pid, "cgroup"))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	return ""
}

// Comm returns /proc/PID/comm without its newline, or "".
func (fs FS) Comm(pid int) string {
	b, err := os.ReadFile(fs.Path(pid, "comm"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Exe returns the path of the process's executable (the /proc/PID/exe link), or "".
func (fs FS) Exe(pid int) string {
	p, _ := os.Readlink(fs.Path(pid, "exe"))
	return p
}

// FDs lists the paths of the process's open file descriptors (/proc/PID/fd/N).
func (fs FS) FDs(pid int) []string {
	ents, _ := os.ReadDir(fs.Path(pid, "fd"))
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, fs.Path(pid, "fd", e.Name()))
	}
	return out
}
