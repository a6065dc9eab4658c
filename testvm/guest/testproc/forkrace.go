package main

// The fork/key-open race (issue 12 item 1): a fork by one thread of a process that passed task_alloc
// while the process was unmarked, and a key-file open plus key load by another thread before that fork
// copies the memory. keyguard must not leave such a child readable.
//
//	testproc fork-victim fork|vfork KEYFILE
//	    thread B forks without pause (fork: children that keep the copied memory, report whether it holds
//	    the key in their exit status and sleep 30 ms; vfork: Go's CLONE_VM|CLONE_VFORK spawn of a path
//	    that does not exist with 500 descriptors to move first, so the child shares the memory until its
//	    exec fails) while the main thread
//	    opens KEYFILE (again while EAGAIN) and reads the key into raceBuf. Prints "CHILD pid" per child,
//	    then "LOADED retries=N forks=F keykids=K straddled=S": K children held the key, S forks began
//	    before the open and ended after the load.
//	testproc fork-race fork|vfork ROUNDS RACER KEYFILE
//	    ROUNDS times: starts "RACER fork-victim MODE KEYFILE" and reads every new process's raceBuf from
//	    three threads (process_vm_readv, a fresh /proc/PID/mem fd per read, /proc/PID/mem fds kept from
//	    the first sight of the process) from the moment its pid exists (the next pids are tried before
//	    they are reported) until it is gone. Prints "LEAK round=R pid=P by=M" per process whose key was
//	    read and at the end "FORKRACE rounds=R loaded=L leaks=N leakrounds=X keykids=K straddled=S
//	    retries=T refused=D reads=C killed=K" (leaks: processes; refused: reads refused with EPERM or
//	    EACCES; killed: rounds whose readers keyguard killed). Each round's readers are a process of
//	    their own ("testproc fork-round MODE RACER KEYFILE ROUND").

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// childSleep is how long a fork child keeps its copy of the memory (a global: nothing to allocate in
// the child).
var childSleep = syscall.Timespec{Nsec: 30e6}

// forkChild forks with raw system calls. The child runs no Go runtime code: it looks at raceBuf, sleeps
// and exits with 1 when its copy holds the key.
//
//go:nosplit
func forkChild() (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0)
	if e != 0 {
		return 0, e
	}
	if r != 0 {
		return int(r), 0
	}
	code := uintptr(0)
	if raceBuf[0] == RaceMarker[0] && raceBuf[1] == RaceMarker[1] {
		code = 1
	}
	syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&childSleep)), 0, 0)
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, code, 0, 0)
	return 0, 0
}

// widenFork grows the fd table: copy_process copies it (copy_files) between task_alloc and copy_mm, so
// every fork spends longer in the window the test is about. 1,000 open descriptors and one at 32,767
// (root may raise its limit; the copy walks the whole table).
func widenFork() {
	lim := unix.Rlimit{Cur: 32768, Max: 32768}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	for i := 0; i < 1000 && uint64(i)+64 < lim.Cur; i++ {
		if _, err := unix.Dup(2); err != nil {
			return
		}
	}
	unix.Dup2(2, int(lim.Cur)-1)
}

func forkVictim(mode, keyfile string) {
	raceBuf[len(raceBuf)-1] = 0 // the page is present: the load does not fault (and wait for the copy)
	widenFork()
	var openStarted, loaded, stop atomic.Bool
	var forks, keyKids, straddled atomic.Int64
	straddlers := map[int]bool{}
	var mu sync.Mutex
	done := make(chan struct{})
	// vfork: the child moves 500 descriptors into place before its exec, which keeps it sharing the
	// memory longer (a wider window for the readers).
	spawn := &os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}}
	for range 500 {
		spawn.Files = append(spawn.Files, os.Stderr)
	}
	reap := func(flags int) {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, flags, nil)
			if pid <= 0 || err != nil {
				return
			}
			if ws.Exited() && ws.ExitStatus() == 1 {
				keyKids.Add(1)
				mu.Lock()
				if straddlers[pid] {
					straddled.Add(1)
				}
				mu.Unlock()
			}
		}
	}
	go func() { // thread B
		runtime.LockOSThread()
		defer close(done)
		for !stop.Load() {
			before := openStarted.Load()
			pid := 0
			if mode == "vfork" {
				p, err := os.StartProcess("/nonexistent/forkrace", []string{"x"}, spawn)
				if err == nil {
					pid = p.Pid
					p.Wait()
				}
			} else if p, e := forkChild(); e == 0 {
				pid = p
			}
			if pid > 0 {
				fmt.Printf("CHILD %d\n", pid)
				if !before && loaded.Load() {
					mu.Lock()
					straddlers[pid] = true
					mu.Unlock()
				}
			}
			forks.Add(1)
			reap(unix.WNOHANG)
		}
		reap(0)
	}()
	for forks.Load() < 2 {
		time.Sleep(100 * time.Microsecond)
	}
	time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	retries := 0
	openStarted.Store(true)
	for {
		fd, err := unix.Open(keyfile, unix.O_RDONLY, 0)
		if err == nil {
			unix.Read(fd, raceBuf[:])
			unix.Close(fd)
			break
		}
		if !errors.Is(err, unix.EAGAIN) || retries > 100000 {
			fmt.Println("ERR open key", err)
			stop.Store(true)
			<-done
			os.Exit(1)
		}
		retries++
	}
	loaded.Store(true)
	for at := forks.Load(); forks.Load() < at+3; {
		time.Sleep(100 * time.Microsecond)
	}
	stop.Store(true)
	<-done
	fmt.Printf("LOADED retries=%d forks=%d keykids=%d straddled=%d\n", retries, forks.Load(), keyKids.Load(), straddled.Load())
	runtime.KeepAlive(&raceBuf)
}

// forkTargets is what the attackers of one round read: every pid from the first one after the racer's
// that exists or is reported, until it is gone. Threads of the racer itself are left out.
type forkTargets struct {
	mu     sync.Mutex
	racer  int
	next   int          // the lowest pid not tried yet beyond the known ones
	state  map[int]int8 // pidAlive, pidGone, pidThread
	report map[int]bool // pids the racer printed
	leaks  map[int]bool // pids whose key was read
}

const (
	pidAlive  = 1
	pidGone   = 2
	pidThread = 3
)

// candidates are the pids to read now: known live ones and the next few, which may appear any moment.
func (ft *forkTargets) candidates(out []int) []int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	out = out[:0]
	for p, s := range ft.state {
		if s == pidAlive {
			out = append(out, p)
		}
	}
	for p := range ft.report {
		if _, ok := ft.state[p]; !ok {
			out = append(out, p)
		}
	}
	for p := ft.next; p < ft.next+4; p++ {
		if _, ok := ft.state[p]; !ok {
			out = append(out, p)
		}
	}
	return out
}

// readable says whether to read pid now: a live process other than the racer's threads. A pid seen for
// the first time is classified once: a thread of the racer (its memory is the racer's own, not a
// child's) is never read; a reported pid that is not there any more is gone.
func (ft *forkTargets) readable(pid int) bool {
	ft.mu.Lock()
	s, known := ft.state[pid]
	reported := ft.report[pid]
	ft.mu.Unlock()
	if known {
		return s == pidAlive
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		if reported {
			ft.gone(pid)
		}
		return false
	}
	s = pidAlive
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", ft.racer, pid)); err == nil {
		s = pidThread
	}
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if _, known := ft.state[pid]; !known {
		ft.state[pid] = s
	}
	ft.next = max(ft.next, pid+1)
	return ft.state[pid] == pidAlive
}

// leaked records that pid's key was read; true the first time (leaks are counted by process).
func (ft *forkTargets) leaked(pid int) bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if ft.leaks[pid] {
		return false
	}
	ft.leaks[pid] = true
	return true
}

// gone records that pid does not answer any more.
func (ft *forkTargets) gone(pid int) {
	ft.mu.Lock()
	ft.state[pid] = pidGone
	ft.mu.Unlock()
}

// forkTally counts one run's outcome.
type forkTally struct {
	leaks, leakRounds, loaded, keyKids, straddled, retries int
	refused, reads                                         atomic.Int64
}

func forkRace(mode, roundsArg, racer, keyfile string) {
	rounds, err := strconv.Atoi(roundsArg)
	if err != nil {
		fmt.Println("ERR rounds", err)
		os.Exit(2)
	}
	var t forkTally
	killed := 0
	for r := 1; r <= rounds; r++ {
		// Each round's readers are a process of their own: keyguard may kill one (SIGKILL before a copy).
		out, err := exec.Command("/proc/self/exe", "fork-round", mode, racer, keyfile, strconv.Itoa(r)).Output()
		leaked := 0
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && f[0] == "LEAK":
				fmt.Println(line)
				leaked++
			case len(f) > 0 && f[0] == "ROUND":
				var l, kk, st, re, rf, rd int
				fmt.Sscanf(strings.Join(f[1:], " "), "loaded=%d keykids=%d straddled=%d retries=%d refused=%d reads=%d", &l, &kk, &st, &re, &rf, &rd)
				t.loaded, t.keyKids, t.straddled, t.retries = t.loaded+l, t.keyKids+kk, t.straddled+st, t.retries+re
				t.refused.Add(int64(rf))
				t.reads.Add(int64(rd))
			case len(f) > 0 && f[0] == "round":
				fmt.Println(line)
			}
		}
		if ee, ok := err.(*exec.ExitError); ok && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
			killed++
		}
		t.leaks += leaked
		if leaked > 0 {
			t.leakRounds++
		}
	}
	fmt.Printf("FORKRACE rounds=%d loaded=%d leaks=%d leakrounds=%d keykids=%d straddled=%d retries=%d refused=%d reads=%d killed=%d\n",
		rounds, t.loaded, t.leaks, t.leakRounds, t.keyKids, t.straddled, t.retries, t.refused.Load(), t.reads.Load(), killed)
}

// forkRoundCmd is one round of forkRace in a process of its own; it prints the LEAK lines and
// "ROUND loaded=L keykids=K straddled=S retries=T refused=D reads=C".
func forkRoundCmd(mode, racer, keyfile, round string) {
	r, _ := strconv.Atoi(round)
	var t forkTally
	forkRound(r, mode, racer, keyfile, &t)
	fmt.Printf("ROUND loaded=%d keykids=%d straddled=%d retries=%d refused=%d reads=%d\n", t.loaded, t.keyKids, t.straddled, t.retries, t.refused.Load(), t.reads.Load())
}

// forkRound runs one racer under three readers and returns how many of its processes leaked the key.
func forkRound(round int, mode, racer, keyfile string, tally *forkTally) int {
	cmd := exec.Command(racer, "fork-victim", mode, keyfile)
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Println("ERR pipe", err)
		os.Exit(1)
	}
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR start", err)
		os.Exit(1)
	}
	ft := &forkTargets{racer: cmd.Process.Pid, next: cmd.Process.Pid + 1, state: map[int]int8{cmd.Process.Pid: pidThread},
		report: map[int]bool{}, leaks: map[int]bool{}}
	var stop atomic.Bool
	var leaks atomic.Int64
	var wg sync.WaitGroup
	for _, by := range []string{"vmreadv", "mem", "kept"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			forkReader(by, round, ft, &stop, &leaks, tally)
		}()
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "CHILD":
			if pid, err := strconv.Atoi(f[1]); err == nil {
				ft.mu.Lock()
				ft.report[pid] = true
				ft.next = max(ft.next, pid+1)
				ft.mu.Unlock()
			}
		case len(f) > 0 && f[0] == "LOADED":
			tally.loaded++
			var r, forks, kk, st int
			fmt.Sscanf(strings.Join(f[1:], " "), "retries=%d forks=%d keykids=%d straddled=%d", &r, &forks, &kk, &st)
			tally.retries += r
			tally.keyKids += kk
			tally.straddled += st
		case len(f) > 0 && f[0] == "ERR":
			fmt.Printf("round %d: racer: %s\n", round, sc.Text())
		}
	}
	cmd.Wait()
	stop.Store(true)
	wg.Wait()
	return int(leaks.Load())
}

// forkReader reads raceBuf of every candidate pid by one path until the round stops.
func forkReader(by string, round int, ft *forkTargets, stop *atomic.Bool, leaks *atomic.Int64, tally *forkTally) {
	addr := uintptr(unsafe.Pointer(&raceBuf[0]))
	buf := make([]byte, len(raceBuf))
	kept := map[int]int{}
	defer func() {
		for _, fd := range kept {
			unix.Close(fd)
		}
	}()
	var cands []int
	for !stop.Load() {
		cands = ft.candidates(cands)
		for _, pid := range cands {
			if !ft.readable(pid) {
				continue
			}
			n, err := forkRead(by, pid, addr, buf, kept)
			if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
				ft.gone(pid)
				continue
			}
			switch {
			case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
				tally.refused.Add(1)
			case err == nil && n > 0:
				tally.reads.Add(1)
				if strings.HasPrefix(string(buf[:n]), RaceMarker) && ft.leaked(pid) {
					leaks.Add(1)
					fmt.Printf("LEAK round=%d pid=%d by=%s\n", round, pid, by)
				}
			}
		}
	}
}

// forkRead is one read of pid's raceBuf by process_vm_readv, a fresh /proc/PID/mem fd, or a
// /proc/PID/mem fd kept from the first time the pid was seen (opened then, read every time after).
func forkRead(by string, pid int, addr uintptr, buf []byte, kept map[int]int) (int, error) {
	switch by {
	case "vmreadv":
		local := []unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
		remote := []unix.RemoteIovec{{Base: addr, Len: len(buf)}}
		return unix.ProcessVMReadv(pid, local, remote, 0)
	case "mem":
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/mem", pid), unix.O_RDONLY, 0)
		if err != nil {
			return 0, err
		}
		defer unix.Close(fd)
		return unix.Pread(fd, buf, int64(addr))
	}
	fd, ok := kept[pid]
	if !ok {
		var err error
		if fd, err = unix.Open(fmt.Sprintf("/proc/%d/mem", pid), unix.O_RDONLY, 0); err != nil {
			return 0, err
		}
		kept[pid] = fd
	}
	n, err := unix.Pread(fd, buf, int64(addr))
	if err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		unix.Close(fd) // gone (EIO, ESRCH): the fd reads nothing more
		delete(kept, pid)
		return 0, unix.ESRCH
	}
	return n, err
}
