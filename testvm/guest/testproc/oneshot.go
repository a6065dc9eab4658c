package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// One-shot attackers (issue 13): a loop that starts a new attacker process per attempt, each making one
// ptrace attach of PID and exiting with its errno (0: attached).
//
//	testproc spawn-attack fork|exec N PID SECONDS
//	    starts up to N one-shot attacker processes one after another, for at most SECONDS: fork, a
//	    child of this process that attacks and exits; exec, a fork+exec of this executable
//	    ("testproc attach-exit PID"). Prints "MADE n DENIED d OTHER o LAST pid".
//	testproc attach-exit PID
//	    one ptrace attach of PID; exits with its errno.

// spawnAttack: spawn-attack fork|exec N PID SECONDS.
func spawnAttack(args []string) {
	if len(args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: testproc spawn-attack fork|exec N PID SECONDS")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(args[1])
	pid, _ := strconv.Atoi(args[2])
	secs, _ := strconv.Atoi(args[3])
	self, err := os.Executable()
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	attr := &syscall.ProcAttr{Files: []uintptr{devnull.Fd(), devnull.Fd(), devnull.Fd()}}
	made, denied, other, last := 0, 0, 0, 0
	for end := time.Now().Add(time.Duration(secs) * time.Second); made < n && time.Now().Before(end); made++ {
		var child int
		switch args[0] {
		case "fork":
			c, errno := forkAttach(uintptr(pid))
			if errno != 0 {
				fmt.Println("ERR fork", errno)
				os.Exit(1)
			}
			child = int(c)
		case "exec":
			c, err := syscall.ForkExec(self, []string{"testproc", "attach-exit", strconv.Itoa(pid)}, attr)
			if err != nil {
				fmt.Println("ERR exec", err)
				os.Exit(1)
			}
			child = c
		default:
			fmt.Fprintln(os.Stderr, "spawn-attack: fork or exec, not", args[0])
			os.Exit(2)
		}
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(child, &ws, 0, nil); err != nil {
			fmt.Println("ERR wait", err)
			os.Exit(1)
		}
		if ws.Exited() && ws.ExitStatus() == int(syscall.EPERM) {
			denied++
		} else {
			other++
		}
		last = child
	}
	fmt.Printf("MADE %d DENIED %d OTHER %d LAST %d\n", made, denied, other, last)
}

// forkAttach forks a child (a copy of this process, no exec) that makes one ptrace attach of pid and
// exits with its errno. The child runs only raw system calls on this goroutine's stack: no Go runtime.
//
//go:norace
//go:nosplit
func forkAttach(pid uintptr) (uintptr, syscall.Errno) {
	r, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	if r == 0 {
		_, _, e := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, pid, 0)
		for {
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, uintptr(e), 0, 0)
		}
	}
	return r, 0
}

// attachExit: attach-exit PID.
func attachExit(args []string) {
	pid, _ := strconv.Atoi(args[0])
	_, _, e := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, uintptr(pid), 0)
	os.Exit(int(e))
}
