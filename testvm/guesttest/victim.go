package guesttest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Victim is a testproc "hold" process: it holds a secret in memory and reports where.
type Victim struct {
	Cmd   *exec.Cmd
	PID   int
	TIDs  []int
	Addr  string // the secret's address, hex
	Child int    // the child it spawned (-spawn), or 0
	Stdin io.WriteCloser
	out   *bufio.Reader
}

// StartVictim starts "exe hold args..." as uid; the test's cleanup kills it.
func StartVictim(t *testing.T, exe string, uid int, args ...string) *Victim {
	t.Helper()
	v, err := StartVictimErr(exe, uid, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Kill)
	return v
}

// StartVictimErr is StartVictim outside a test: the caller kills it.
func StartVictimErr(exe string, uid int, args ...string) (*Victim, error) {
	cmd := exec.Command(exe, append([]string{"hold"}, args...)...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	stdout, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe()
	cmd.Stderr = os.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	v := &Victim{Cmd: cmd, Stdin: stdin, out: bufio.NewReader(stdout)}
	if err := v.ReadLine(); err != nil {
		v.Kill()
		return nil, err
	}
	return v, nil
}

// ReadLine parses "READY|WAITING pid=.. tids=.. addr=.. len=.. child=..".
func (v *Victim) ReadLine() error {
	line, err := v.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("victim: %w (got %q)", err, line)
	}
	f := strings.Fields(line)
	if len(f) < 6 || (f[0] != "READY" && f[0] != "WAITING") {
		return fmt.Errorf("victim said %q", line)
	}
	for _, kv := range f[1:] {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "pid":
			v.PID, _ = strconv.Atoi(val)
		case "tids":
			v.TIDs = nil
			for _, s := range strings.Split(val, ",") {
				n, _ := strconv.Atoi(s)
				v.TIDs = append(v.TIDs, n)
			}
		case "addr":
			v.Addr = val
		case "child":
			v.Child, _ = strconv.Atoi(val)
		}
	}
	return nil
}

// Kill kills the victim and its child.
func (v *Victim) Kill() {
	if v.Child != 0 {
		syscall.Kill(v.Child, syscall.SIGKILL)
	}
	v.Cmd.Process.Kill()
	v.Cmd.Wait()
}

// Attack runs "exe attack op pid tid addr" as uid and returns its pid and result ("OK n" or "ERR EPERM").
func Attack(t *testing.T, exe string, uid int, op string, pid, tid int, addr string) (int, string) {
	t.Helper()
	cmd := exec.Command(exe, "attack", op, strconv.Itoa(pid), strconv.Itoa(tid), addr)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("attack %s: %v: %s", op, err, out.String())
	}
	return cmd.Process.Pid, strings.TrimSpace(out.String())
}

// Names lists the entries' names.
func Names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
