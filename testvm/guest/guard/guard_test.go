// Package guard holds keyguard's end-to-end VM tests: the real agent binary enforcing its BPF LSM
// programs on a stock kernel, attacked by real processes (memory protection, the agent's life cycle,
// events to a collector). Tests of one package's behaviour live beside that package (vm_*_test.go,
// see testvm/README.md); all share the fixture testvm/guesttest. They run only inside testvm
// (KEYGUARD_VM=1), where they must pass; on any other machine they skip.
package guard

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/guesttest"
)

type readPath struct {
	op       string // testproc attack op
	thread   int    // aims at the victim's thread tids[thread] (0: the leader)
	denied   string // result in enforce mode
	eventOp  string
	byThread bool // the kernel sees the thread (not the leader) as the target
}

// readPaths: attempts that share an aggregation key (accessor executable and uid, target thread,
// operation, access mode) are counted in the kernel's aggregate and reported when its window (10 s)
// ends, so the /proc files opened with PTRACE_MODE_READ aim at threads of their own, the pid form of
// auxv excepted (one window per victim).
var readPaths = []readPath{
	{"attach", 0, "ERR EPERM", "ptrace_attach", false},
	{"attach", 1, "ERR EPERM", "ptrace_attach", true},
	{"seize", 0, "ERR EPERM", "ptrace_seize", false},
	{"seize", 1, "ERR EPERM", "ptrace_seize", true},
	{"mem", 0, "ERR EACCES", "proc_open", false},
	{"taskmem", 1, "ERR EACCES", "proc_open", true},
	{"vmreadv", 0, "ERR EPERM", "process_vm_readv", false},
	{"vmreadv", 1, "ERR EPERM", "process_vm_readv", true},
	{"environ", 0, "ERR EACCES", "proc_open", false},
	{"taskenviron", 1, "ERR EACCES", "proc_open", true},
	{"auxv", 0, "ERR EACCES", "proc_open", false},
	{"taskpagemap", 2, "ERR EACCES", "proc_open", true},
	// The layout (mm_access with PTRACE_MODE_READ, which 7.x lets CAP_PERFMON through).
	{"taskmaps", 3, "ERR EACCES", "proc_open", true},
	{"tasksmaps", 4, "ERR EACCES", "proc_open", true},
	{"tasksmaps_rollup", 5, "ERR EACCES", "proc_open", true},
	{"tasknuma_maps", 6, "ERR EACCES", "proc_open", true},
	{"pidfd_getfd", 0, "ERR EPERM", "pidfd_getfd", false},
}

// victimThreads is how many threads TestReadPaths's victims run (readPaths aims at each).
const victimThreads = "7"

func readPathName(p readPath) string {
	if p.thread > 0 {
		return fmt.Sprintf("%s/thread%d", p.op, p.thread)
	}
	return p.op
}

func TestReadPaths(t *testing.T) {
	for _, mode := range []struct {
		name, exe, rule, decision string
	}{
		{"enforce", victimEnforce, "signer", "denied"},
		{"audit", victimAudit, "signer-audit", "allowed_audit"},
	} {
		for _, uid := range []int{0, user} {
			t.Run(fmt.Sprintf("%s/uid%d", mode.name, uid), func(t *testing.T) {
				v := startVictim(t, mode.exe, uid, "-threads", victimThreads)
				for _, p := range readPaths {
					tid := v.tids[p.thread]
					t.Run(readPathName(p), func(t *testing.T) {
						apid, res := attack(t, procBin, uid, p.op, v.pid, tid, v.addr)
						if mode.name == "enforce" && res != p.denied {
							t.Fatalf("enforce: %s on protected pid %d tid %d by uid %d: got %q, want %q", p.op, v.pid, tid, uid, res, p.denied)
						}
						if mode.name == "audit" && !strings.HasPrefix(res, "OK") {
							t.Fatalf("audit: %s must succeed, got %q", p.op, res)
						}
						wantTid := uint32(v.pid)
						if p.byThread {
							wantTid = uint32(tid)
						}
						// An attempt with the key of an earlier one (auxv after environ) is counted in
						// the kernel's aggregate, reported with its first accessor and this one as the last.
						ev := waitEvent(t, fmt.Sprintf("%s %s by pid %d", mode.decision, p.eventOp, apid), func(e event) bool {
							return e.Kind == "access" && e.Accessor != nil &&
								(e.Accessor.PID == uint32(apid) || e.LastAccessorPID == uint32(apid)) &&
								e.Target != nil && e.Target.PID == uint32(v.pid) && e.Operation == p.eventOp
						})
						if ev.Decision != mode.decision || ev.Rule != mode.rule {
							t.Errorf("event decision %q rule %q, want %q %q", ev.Decision, ev.Rule, mode.decision, mode.rule)
						}
						if ev.Accessor.UID != uint32(uid) || ev.Target.UID != uint32(uid) {
							t.Errorf("event uids accessor %d target %d, want %d", ev.Accessor.UID, ev.Target.UID, uid)
						}
						if ev.Target.TID != wantTid {
							t.Errorf("event target tid %d, want %d", ev.Target.TID, wantTid)
						}
						if ev.Accessor.Executable != procBin || ev.Target.Executable != mode.exe {
							t.Errorf("event executables accessor %q target %q, want %q %q", ev.Accessor.Executable, ev.Target.Executable, procBin, mode.exe)
						}
						if ev.Accessor.Comm != "testproc" || ev.AccessMode == 0 {
							t.Errorf("event accessor comm %q access mode %#x", ev.Accessor.Comm, ev.AccessMode)
						}
					})
				}
			})
		}
	}
}

// TestMapFiles: root lists /proc/PID/map_files of a protected process and opens a mapping through it
// (the lookup needs CAP_CHECKPOINT_RESTORE, so only root is tried). Newer kernels' mm_access() lets a
// CAP_PERFMON caller through the PTRACE_MODE_READ check the listing and the lookup make; keyguard must
// refuse it all the same. An unprotected process's mappings stay open to root.
func TestMapFiles(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	apid, res := attack(t, procBin, 0, "map_files", v.pid, v.pid, v.addr)
	if res != "ERR EACCES" {
		t.Fatalf("map_files of protected pid %d by root: got %q, want ERR EACCES", v.pid, res)
	}
	ev := waitEvent(t, fmt.Sprintf("denied map_files by pid %d", apid), func(e event) bool {
		return e.Kind == "access" && e.Accessor != nil &&
			(e.Accessor.PID == uint32(apid) || e.LastAccessorPID == uint32(apid)) &&
			e.Target != nil && e.Target.PID == uint32(v.pid)
	})
	if ev.Decision != "denied" || ev.Rule != "signer" {
		t.Errorf("event decision %q rule %q, want denied signer", ev.Decision, ev.Rule)
	}
	p := startVictim(t, victimPlain, 0)
	if _, res := attack(t, procBin, 0, "map_files", p.pid, p.pid, p.addr); !strings.HasPrefix(res, "OK") {
		t.Errorf("map_files of unprotected pid %d by root: %q, want OK", p.pid, res)
	}
}

// TestUringProcOpen: root opens /proc/PID/task/TID/{mem,environ,maps} of a protected process by an
// io_uring IORING_OP_OPENAT request, inline in the submitter and (IOSQE_ASYNC) in an io-wq worker
// thread: the same file_open and ptrace checks decide, so each is refused (EACCES) with an event (each
// attempt aims at a thread of its own, so none waits in an aggregate). The same request for an
// unprotected process's environ opens and reads.
func TestUringProcOpen(t *testing.T) {
	v := startVictim(t, victimEnforce, 0, "-threads", "6")
	plain := startVictim(t, victimPlain, 0)
	next := 1
	for _, op := range []string{"uring-open", "uring-open-async"} {
		for _, file := range []string{"mem", "environ", "maps"} {
			tid := v.tids[next]
			next++
			t.Run(op+"/"+file, func(t *testing.T) {
				cmd := exec.Command(procBin, "keyop", op, fmt.Sprintf("/proc/%d/task/%d/%s", v.pid, tid, file))
				out, err := cmd.CombinedOutput()
				if got := strings.TrimSpace(string(out)); got != "ERR EACCES" {
					t.Fatalf("%s of protected pid %d tid %d's %s: %q (%v), want ERR EACCES", op, v.pid, tid, file, got, err)
				}
				apid := uint32(cmd.Process.Pid)
				ev := waitEvent(t, fmt.Sprintf("denied %s by pid %d", op, apid), func(e event) bool {
					return e.Kind == "access" && e.Accessor != nil && (e.Accessor.PID == apid || e.LastAccessorPID == apid) &&
						e.Target != nil && e.Target.PID == uint32(v.pid)
				})
				if ev.Decision != "denied" || ev.Rule != "signer" || ev.Target.TID != uint32(tid) {
					t.Errorf("event decision %q rule %q target tid %d, want denied signer %d", ev.Decision, ev.Rule, ev.Target.TID, tid)
				}
			})
		}
		out, err := exec.Command(procBin, "keyop", op, fmt.Sprintf("/proc/%d/environ", plain.pid)).CombinedOutput()
		if got := strings.TrimSpace(string(out)); got != "OK 0" {
			t.Errorf("%s of unprotected pid %d's environ: %q (%v), want OK 0", op, plain.pid, got, err)
		}
	}
}

// The process itself and its threads keep working; an unprotected neighbour stays readable.
func TestUnprotectedNeighbour(t *testing.T) {
	v := startVictim(t, victimPlain, 0, "-threads", victimThreads)
	c := startVictim(t, victimCopy, 0) // a copy of the protected executable is another file
	for _, target := range []*victim{v, c} {
		for _, p := range readPaths {
			tid := target.tids[min(p.thread, len(target.tids)-1)]
			_, res := attack(t, procBin, 0, p.op, target.pid, tid, target.addr)
			if !strings.HasPrefix(res, "OK") {
				t.Errorf("%s on unprotected pid %d: %q, want OK", p.op, target.pid, res)
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	for _, ev := range readEvents() {
		if ev.Kind == "access" && ev.Target != nil && (ev.Target.PID == uint32(v.pid) || ev.Target.PID == uint32(c.pid)) {
			t.Errorf("event for an unprotected process: %+v", ev)
		}
	}
}

func TestHardLinkIsProtected(t *testing.T) {
	v := startVictim(t, victimLink, 0)
	if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
		t.Fatalf("mem of a process run through a hard link of the protected executable: %q", res)
	}
}

func TestRunningBeforeAgentIsProtected(t *testing.T) {
	if _, res := attack(t, procBin, 0, "mem", early.pid, early.pid, early.addr); res != "ERR EACCES" {
		t.Fatalf("process started before the agent: %q, want ERR EACCES", res)
	}
	waitEvent(t, "protect event from the procfs scan", func(e event) bool {
		return e.Kind == "protect" && e.Target != nil && e.Target.PID == uint32(early.pid) && e.Reason == "procfs_scan"
	})
}

func TestAllowedAccessor(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	apid, res := attack(t, debugger, 0, "mem", v.pid, v.pid, v.addr)
	if !strings.HasPrefix(res, "OK") {
		t.Fatalf("allowed debugger (uid 0): %q, want OK", res)
	}
	waitEvent(t, "allowed_policy event", func(e event) bool {
		return e.Kind == "access" && e.Accessor != nil && e.Accessor.PID == uint32(apid) && e.Decision == "allowed_policy"
	})
	// The same executable under another uid is not allowed.
	w := startVictim(t, victimEnforce, user)
	if _, res := attack(t, debugger, user, "mem", w.pid, w.pid, w.addr); res != "ERR EACCES" {
		t.Fatalf("debugger as uid %d: %q, want ERR EACCES", user, res)
	}
}

func TestNoWindowAfterExec(t *testing.T) {
	for i := 0; i < 20; i++ {
		c := exec.Command(procBin, "exec-attack", victimEnforce)
		c.Stderr = os.Stdout
		out, err := c.Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != "ERR EACCES" {
			t.Fatalf("attack right after exec (round %d): %q, want ERR EACCES", i, got)
		}
	}
}

func TestForkChildInherits(t *testing.T) {
	v := startVictim(t, victimEnforce, 0, "-spawn", victimPlain)
	if v.child == 0 {
		t.Fatal("no child")
	}
	if _, res := attack(t, procBin, 0, "mem", v.child, v.child, ""); res != "ERR EACCES" {
		t.Fatalf("child of a protected process (unprotected executable): %q, want ERR EACCES", res)
	}
	ev := waitEvent(t, "denial for the child", func(e event) bool {
		return e.Kind == "access" && e.Target != nil && e.Target.PID == uint32(v.child)
	})
	if ev.Reason != "inherited" || ev.Rule != "signer" {
		t.Errorf("child's protection: reason %q rule %q, want inherited signer", ev.Reason, ev.Rule)
	}
}

func TestKeyFileOpenProtects(t *testing.T) {
	for _, thread := range []bool{false, true} {
		t.Run(fmt.Sprintf("thread=%v", thread), func(t *testing.T) {
			args := []string{"-keyfile", keyFile}
			if thread {
				args = append(args, "-keyfile-thread")
			}
			v := startVictim(t, victimPlain, 0, args...)
			if _, res := attack(t, procBin, 0, "mem", v.pid, v.pid, v.addr); res != "ERR EACCES" {
				t.Fatalf("right after opening a key file: %q, want ERR EACCES", res)
			}
			waitEvent(t, "protect event for the key file", func(e event) bool {
				return e.Kind == "protect" && e.Target != nil && e.Target.PID == uint32(v.pid) &&
					e.Reason == "key_file" && e.Rule == "keyholder" && e.Detail == "signing.pem"
			})
		})
	}
}

// A /proc/PID/mem opened before the process loaded its key must stop reading when it does.
func TestFileOpenedBeforeProtection(t *testing.T) {
	v := startVictim(t, victimPlain, 0, "-keyfile", keyFile, "-wait-stdin")
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", v.pid))
	if err != nil {
		t.Fatalf("open mem of the still unprotected process: %v", err)
	}
	defer f.Close()
	addr, _ := strconv.ParseUint(strings.TrimPrefix(v.addr, "0x"), 16, 64)
	buf := make([]byte, 16)
	if _, err := f.ReadAt(buf, int64(addr)); err != nil {
		t.Fatalf("read before protection: %v", err)
	}
	fmt.Fprintln(v.stdin, "go")
	if err := v.readLine(); err != nil {
		t.Fatal(err)
	}
	if n, err := f.ReadAt(buf, int64(addr)); err == nil {
		t.Fatalf("read through an fd opened before protection succeeded (%d bytes: %q)", n, buf[:n])
	}
	waitEvent(t, "proc_read denial", func(e event) bool {
		return e.Kind == "access" && e.Operation == "proc_read" && e.Target != nil && e.Target.PID == uint32(v.pid) && e.Decision == "denied"
	})
}

// A traced process may not exec a protected executable (the tracer would read it afterwards).
func TestTracedExecRefused(t *testing.T) {
	cmd := exec.Command(victimEnforce, "hold")
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	err := cmd.Start()
	if err == nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("exec of a protected executable under ptrace succeeded")
	}
	waitEvent(t, "exec_traced denial", func(e event) bool {
		return e.Kind == "access" && e.Operation == "exec_traced" && e.Decision == "denied"
	})
}

func TestStatus(t *testing.T) {
	out, err := exec.Command(cliBin, "status", "-socket", ctlSock, "-json").Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st struct {
		Rules    []string          `json:"rules"`
		Counters map[string]uint64 `json:"counters"`
		PIDs     []int             `json:"protected_pids"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v: %s", err, out)
	}
	// The suites' policy (guesttest.PolicyYAML) has these rules, in this order.
	want := []string{"signer", "signer-audit", "keyholder", "container", "redactor", "strictsigner"}
	if !slices.Equal(st.Rules, want) || st.Counters["denied"] == 0 {
		t.Errorf("status: rules %v (want %v) counters %v", st.Rules, want, st.Counters)
	}
	found := false
	for _, p := range st.PIDs {
		found = found || p == early.pid
	}
	if !found {
		t.Errorf("status does not list protected pid %d: %v", early.pid, st.PIDs)
	}
}

// Enforcement holds while the agent is SIGKILLed and until it is restarted and adopts the pins.
func TestAgentKilledEnforcementHolds(t *testing.T) {
	v := startVictim(t, victimEnforce, 0)
	loop := exec.Command(procBin, "loop-attack", strconv.Itoa(v.pid), v.addr, "6")
	var out strings.Builder
	loop.Stdout = &out
	if err := loop.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	agent.Process.Kill()
	agent.Wait()
	// While no agent runs, new protected processes are still marked by the kernel.
	w := startVictim(t, victimEnforce, 0)
	if _, res := attack(t, procBin, 0, "mem", w.pid, w.pid, w.addr); res != "ERR EACCES" {
		t.Errorf("new protected process while the agent is down: %q", res)
	}
	time.Sleep(time.Second)
	if err := startAgent(); err != nil {
		t.Fatal(err)
	}
	if err := loop.Wait(); err != nil {
		t.Fatal(err)
	}
	var ok, fail int
	fmt.Sscanf(out.String(), "SUCCESSES %d FAILURES %d", &ok, &fail)
	if ok != 0 || fail == 0 {
		t.Fatalf("attack loop across the agent restart: %d successes, %d failures", ok, fail)
	}
	t.Logf("attack loop across SIGKILL and restart: %d attempts, all denied", fail)
	waitEvent(t, "adopted health event", func(e event) bool {
		return e.Kind == "health" && e.Health != nil && e.Health.State == "adopted"
	})
	// The denials made while the agent was down were kept in the pinned ring buffer and read now.
	waitEvent(t, "denial of the process started while the agent was down", func(e event) bool {
		return e.Kind == "access" && e.Target != nil && e.Target.PID == uint32(w.pid) && e.Decision == "denied"
	})
}

func TestBadPolicyRefused(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "version: 1\nrules:\n  - name: x\n    mood: enforce\n    match:\n      executables: [/bin/testproc]\n", "bad.yaml:4"},
		{"missing executable", "version: 1\nrules:\n  - name: x\n    match:\n      executables: [/nonexistent/signer]\n", "/nonexistent/signer"},
		{"bad mode", "version: 1\nrules:\n  - name: x\n    mode: block-everything\n    match:\n      executables: [/bin/testproc]\n", "bad.yaml:4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o644)
			cmd := exec.Command(agentBin, "run", "-policy", p, "-events", dir+"/bad-events.jsonl", "-pin-path", "/sys/fs/bpf/kg-bad", "-control-socket", "")
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("agent started with a bad policy: %s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("error does not name %q:\n%s", tc.want, out)
			}
			if _, err := os.Stat("/sys/fs/bpf/kg-bad"); err == nil {
				t.Fatal("agent pinned programs despite a bad policy")
			}
		})
	}
}

// A protected process keeps full access to itself, from any of its threads.
func TestProtectedProcessReadsItself(t *testing.T) {
	out, err := exec.Command(victimEnforce, "selfread").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		t.Fatalf("protected process reading its own memory: %v: %s", err, out)
	}
}

// TestCompatVMReadv: process_vm_readv through the 32-bit entries (ia32: int 0x80 from a 64-bit process;
// x32: syscall 539 with __X32_SYSCALL_BIT; both with compat iovecs) is refused against a protected
// process like the native call, with the same event, by root and by the victim's uid; an unprotected
// process stays readable by it.
func TestCompatVMReadv(t *testing.T) {
	for _, entry := range []struct {
		op, name string
		runs     func() bool
	}{
		{"vmreadv32", "ia32 (int 0x80)", guesttest.Compat32},
		{"vmreadvx32", "x32 (syscall.x32=y)", guesttest.X32},
	} {
		t.Run(entry.op, func(t *testing.T) {
			if !entry.runs() {
				t.Skipf("this kernel (%s, %s) runs no %s system calls of a 64-bit process", os.Getenv("KEYGUARD_KERNEL"), runtime.GOARCH, entry.name)
			}
			compatVMReadv(t, entry.op)
		})
	}
}

// compatVMReadv: process_vm_readv by a 32-bit entry (op) reads an unprotected process and is refused
// (EPERM, with an event) on a protected one, its leader and another thread, as root and as its user.
func compatVMReadv(t *testing.T, op string) {
	plain := startVictim(t, victimPlain, 0)
	if _, res := attack(t, procBin, 0, op, plain.pid, plain.pid, plain.addr); !strings.HasPrefix(res, "OK 64") {
		t.Fatalf("%s of an unprotected process: %q, want OK 64", op, res)
	}
	for _, uid := range []int{0, user} {
		v := startVictim(t, victimEnforce, uid, "-threads", "2")
		for _, tid := range []int{v.pid, v.tids[1]} {
			apid, res := attack(t, procBin, uid, op, v.pid, tid, v.addr)
			if res != "ERR EPERM" {
				t.Fatalf("%s of protected pid %d tid %d by uid %d: %q, want ERR EPERM", op, v.pid, tid, uid, res)
			}
			ev := waitEvent(t, fmt.Sprintf("denied %s by pid %d", op, apid), func(e event) bool {
				return e.Kind == "access" && e.Accessor != nil && (e.Accessor.PID == uint32(apid) || e.LastAccessorPID == uint32(apid)) &&
					e.Target != nil && e.Target.PID == uint32(v.pid) && e.Operation == "process_vm_readv"
			})
			if ev.Decision != "denied" || ev.Rule != "signer" || ev.Accessor.UID != uint32(uid) {
				t.Errorf("event decision %q rule %q accessor uid %d, want denied signer %d", ev.Decision, ev.Rule, ev.Accessor.UID, uid)
			}
		}
	}
}
