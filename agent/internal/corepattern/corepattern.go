// Package corepattern installs keyguard's core-dump handler as kernel.core_pattern, remembers the
// pattern it replaced, expands that pattern the way the kernel would (so the handler can hand a dump
// on to systemd-coredump, apport, or a file), and restores it on uninstall.
package corepattern

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Kernel files.
const (
	PatternFile   = "/proc/sys/kernel/core_pattern"
	PipeLimitFile = "/proc/sys/kernel/core_pipe_limit"
)

// RunDir is where the agent keeps the handler's State. It is on tmpfs on purpose: core_pattern is
// reset at boot too, so both are forgotten together.
const RunDir = "/run/keyguard"

// HandlerArgs are the specifiers keyguard's pattern passes to the handler, in order. Each value is
// one argument (the kernel splits the pattern at spaces before expanding, since Linux 5.3).
var HandlerArgs = []string{"%P", "%i", "%I", "%p", "%u", "%g", "%d", "%s", "%t", "%h", "%c", "%e"}

// State is what install remembers, in StateDir/core-pattern.json.
type State struct {
	Previous          string `json:"previous"`
	PreviousPipeLimit string `json:"previous_pipe_limit"`
	Installed         string `json:"installed"`
	// For the handler: where the agent's state and sockets are.
	PinPath       string `json:"pin_path"`
	ControlSocket string `json:"control_socket"`
	EventLog      string `json:"event_log"`
	SpoolDir      string `json:"spool_dir"` // temporary files for redaction
	KeepStacks    bool   `json:"keep_stacks"`
	PolicyPath    string `json:"policy_path"` // public_keys of redact rules feed the key detector
}

// Sys are the kernel files, replaceable in tests.
type Sys struct {
	Pattern, PipeLimit string
}

// Kernel is the real system.
var Kernel = Sys{Pattern: PatternFile, PipeLimit: PipeLimitFile}

func statePath(stateDir string) string { return filepath.Join(stateDir, "core-pattern.json") }

// Pattern returns the handler's pattern for the executable at exe.
func Pattern(exe string) string {
	return "|" + exe + " dump-handler " + strings.Join(HandlerArgs, " ")
}

// Install points core_pattern at the handler. The pattern it replaces is saved first (unless it is
// already keyguard's, after an agent restart), and core_pipe_limit is raised to at least 16 so the
// kernel keeps the crashing process until the handler is done (the handler and systemd-coredump read
// /proc/PID). The kernel limits patterns to 127 bytes.
func (s Sys) Install(stateDir, exe string, st State) error {
	want := Pattern(exe)
	if len(want) > 127 {
		return fmt.Errorf("core_pattern for %s would be %d bytes, over the kernel's 127: install keyguard-agent at a shorter path", exe, len(want))
	}
	cur, err := readTrim(s.Pattern)
	if err != nil {
		return err
	}
	limit, err := readTrim(s.PipeLimit)
	if err != nil {
		return err
	}
	old, err := Load(stateDir)
	switch {
	case err == nil && (cur == old.Installed || isOurs(cur)):
		// Restarted agent: keep what was saved when keyguard first took over.
		st.Previous, st.PreviousPipeLimit = old.Previous, old.PreviousPipeLimit
	case isOurs(cur):
		return fmt.Errorf("core_pattern is already keyguard's (%q) but %s is missing, so the pattern to restore is unknown: set kernel.core_pattern to the system's pattern and start again", cur, statePath(stateDir))
	default:
		st.Previous, st.PreviousPipeLimit = cur, limit
	}
	st.Installed = want
	if err := save(stateDir, st); err != nil {
		return err
	}
	if n, _ := strconv.Atoi(limit); n < 16 {
		if err := os.WriteFile(s.PipeLimit, []byte("16"), 0); err != nil {
			return fmt.Errorf("raise core_pipe_limit: %w", err)
		}
	}
	if err := os.WriteFile(s.Pattern, []byte(want), 0); err != nil {
		return fmt.Errorf("set core_pattern: %w", err)
	}
	return nil
}

// Restore puts back the pattern and pipe limit saved by Install and forgets them. Without saved state
// it does nothing.
func (s Sys) Restore(stateDir string) error {
	st, err := Load(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	cur, _ := readTrim(s.Pattern)
	if cur == st.Installed || isOurs(cur) {
		if err := os.WriteFile(s.Pattern, []byte(st.Previous), 0); err != nil {
			return fmt.Errorf("restore core_pattern: %w", err)
		}
	}
	if st.PreviousPipeLimit != "" {
		_ = os.WriteFile(s.PipeLimit, []byte(st.PreviousPipeLimit), 0)
	}
	return os.Remove(statePath(stateDir))
}

// Load reads the saved state.
func Load(stateDir string) (State, error) {
	var st State
	b, err := os.ReadFile(statePath(stateDir))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", statePath(stateDir), err)
	}
	return st, nil
}

func save(stateDir string, st State) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := statePath(stateDir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(stateDir))
}

func isOurs(p string) bool {
	return strings.HasPrefix(p, "|") && strings.Contains(p, " dump-handler ")
}

func readTrim(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// Values are what the kernel substitutes for a pattern's specifiers.
type Values struct {
	PID, GlobalPID, TID, GlobalTID   string // %p %P %i %I
	UID, GID, DumpMode, Signal, Time string // %u %g %d %s %t
	Hostname, CoreLimit, Comm        string // %h %c %e
	Exe                              string // path of the executable, for %f and %E
	CPU                              string // %C (6.12); empty when unknown
	PidFD                            string // %F (6.16, pipe patterns only): the helper's pidfd number, "3"
}

// PidFDNumber is the descriptor number at which the kernel gives a pipe helper a pidfd of the crashing
// process when the pattern has %F (COREDUMP_PIDFD_NUMBER).
const PidFDNumber = 3

// unixPathMax is the size of sun_path: a socket pattern's path must be shorter.
const unixPathMax = 108

// Parsed is an expanded pattern: a pipe helper's argv, a unix socket, or a file path.
type Parsed struct {
	Pipe bool
	Argv []string // Pipe: program and arguments
	// Socket (`@/path`, Linux 6.16): the kernel connects to the listening unix socket at Path and
	// writes the dump into the connection. SocketRequest (`@@/path`) is the request protocol: the
	// kernel first sends a struct coredump_req and waits for the receiver's coredump_ack.
	Socket        bool
	SocketRequest bool
	Path          string // file: the core file path (relative paths are relative to the crasher's cwd); socket: the socket
}

// Kind names the pattern's destination for messages: "pipe", "socket", "socket request" or "file".
func (p Parsed) Kind() string {
	switch {
	case p.Pipe:
		return "pipe"
	case p.SocketRequest:
		return "socket request"
	case p.Socket:
		return "socket"
	}
	return "file"
}

// Expand expands pattern as the kernel's format_corename does.
func Expand(pattern string, v Values) (Parsed, error) {
	if pattern == "" {
		return Parsed{}, errors.New("empty core_pattern")
	}
	if strings.HasPrefix(pattern, "|") {
		fields := strings.Fields(pattern[1:])
		if len(fields) == 0 {
			return Parsed{}, errors.New("pipe core_pattern without a program")
		}
		p := Parsed{Pipe: true}
		for _, f := range fields {
			p.Argv = append(p.Argv, expand(f, v, true))
		}
		return p, nil
	}
	if strings.HasPrefix(pattern, "@") {
		return parseSocket(pattern)
	}
	p := Parsed{Path: expand(pattern, v, false)}
	// Like the kernel: a pattern without %p gets ".PID" appended when core_uses_pid is set; we do not
	// read core_uses_pid here, so the path is exactly the expansion.
	return p, nil
}

// parseSocket parses `@/path` and `@@/path` as the kernel's format_corename and check_coredump_socket
// do: the path is taken literally (no specifiers), absolute, without spaces or "..", shorter than
// sun_path. The kernel writes no dump at all for a pattern it refuses.
func parseSocket(pattern string) (Parsed, error) {
	p := Parsed{Socket: true, Path: pattern[1:]}
	if strings.HasPrefix(p.Path, "@") {
		p.SocketRequest, p.Path = true, p.Path[1:]
	}
	switch {
	case !strings.HasPrefix(p.Path, "/"):
		return p, fmt.Errorf("socket core_pattern %q: the socket path must be absolute", pattern)
	case strings.Contains(p.Path, " "):
		return p, fmt.Errorf("socket core_pattern %q: the socket path may not contain spaces", pattern)
	case slices.Contains(strings.Split(p.Path, "/"), ".."):
		return p, fmt.Errorf("socket core_pattern %q: the socket path may not contain \"..\"", pattern)
	case len(p.Path) >= unixPathMax:
		return p, fmt.Errorf("socket core_pattern %q: the socket path is %d bytes, the kernel allows %d", pattern, len(p.Path), unixPathMax-1)
	}
	return p, nil
}

// expand substitutes the specifiers of one pipe argument or of a file pattern.
func expand(s string, v Values, pipe bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 'p':
			b.WriteString(v.PID)
		case 'P':
			b.WriteString(v.GlobalPID)
		case 'i':
			b.WriteString(v.TID)
		case 'I':
			b.WriteString(v.GlobalTID)
		case 'u':
			b.WriteString(v.UID)
		case 'g':
			b.WriteString(v.GID)
		case 'd':
			b.WriteString(v.DumpMode)
		case 's':
			b.WriteString(v.Signal)
		case 't':
			b.WriteString(v.Time)
		case 'h':
			b.WriteString(v.Hostname)
		case 'e':
			b.WriteString(v.Comm)
		case 'f':
			b.WriteString(filepath.Base(v.Exe))
		case 'E':
			b.WriteString(strings.ReplaceAll(v.Exe, "/", "!"))
		case 'c':
			b.WriteString(v.CoreLimit)
		case 'C':
			b.WriteString(v.CPU)
		case 'F':
			if pipe { // the kernel installs a pidfd only for a helper it spawns
				b.WriteString(v.PidFD)
			}
		default:
			// The kernel drops unknown specifiers.
		}
	}
	return b.String()
}
