// Command testproc is the victim and the attacker of keyguard's VM tests.
//
//	testproc hold [-threads N] [-keyfile PATH] [-keyfile-thread] [-wait-stdin] [-spawn EXE]
//	    puts a secret in its heap and prints one line
//	    "READY pid=P tids=T1,T2 addr=0xA len=N child=C" then sleeps until killed.
//	    -wait-stdin: print "WAITING pid=P ..." first and open the key file only after a line on stdin.
//	    -spawn EXE: fork+exec "EXE hold" and report its pid as child=.
//	testproc attack OP PID [TID] [ADDR]
//	    performs one read of PID's memory by OP and prints "OK <bytes>" or "ERR <errno>".
//	    OPS: attach seize vmreadv vmreadv32 vmreadvx32 pidfd_getfd, and the /proc/PID files mem environ
//	    auxv pagemap maps smaps smaps_rollup numa_maps map_files (task+NAME: /proc/PID/task/TID/NAME)
//	    (vmreadv32: process_vm_readv by the 32-bit entry, int 0x80, of an address below 4 GiB;
//	    vmreadvx32: by the x32 entry, same iovecs)
//	testproc compat32 | x32
//	    prints "OK" when the kernel runs 32-bit system calls of a 64-bit process (ia32 emulation).
//	testproc exec-attack EXE
//	    starts "EXE hold" and attacks /proc/PID/mem the instant exec returns; prints OK or ERR.
//	testproc fileop OP PATH [ARG]
//	    one file operation, prints "OK" or "ERR <errno>". OPS: read write opath-reopen handle link rename
//	    unlink truncate chmod chown setxattr removexattr.
//	testproc keyop OP ARG
//	    ftruncate-fd FD, setacl PATH, removeacl PATH, uring-open PATH (keyops.go); prints OK or ERR <errno>.
//	testproc race-victim KEYFILE
//	    opens KEYFILE right after exec (again while EAGAIN), copies it into raceBuf, prints
//	    "LOADED retries=N", lingers 20 ms and exits.
//	testproc race-read MODE RACER KEYFILE
//	    starts "RACER race-victim KEYFILE" and reads its raceBuf (same binary, same address) as fast as it
//	    can by MODE (vmreadv, vmreadv32, vmreadvx32, mem: a fresh fd per read, kept: fds kept open and read again) until it is
//	    gone; prints "LEAK n" when a read returned the key, else "CLEAN reads=n errors=m".
//	testproc fork-victim MODE KEYFILE, testproc fork-race MODE ROUNDS RACER KEYFILE
//	    the fork/key-open race: a fork racing a key-file open in another thread (forkrace.go).
//	testproc loop-attack PID ADDR SECONDS
//	    reads /proc/PID/mem every millisecond for SECONDS; prints "SUCCESSES n FAILURES m".
//	testproc spawn-attack fork|exec N PID SECONDS, testproc attach-exit PID
//	    one-shot attacker processes, one ptrace attach each (oneshot.go).
package main

import (
	"bufio"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Secret is what the tests look for in the victim's memory.
const Secret = "KEYGUARD-TEST-SECRET-0123456789abcdef"

// The main goroutine stays on the thread-group leader, so the other threads "hold" reports are never the
// leader (a goroutine that locks its thread while running on the leader would take it).
func init() { runtime.LockOSThread() }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testproc hold|attack|exec-attack|loop-attack ...")
		os.Exit(2)
	}
	mode, ok := modes()[os.Args[1]]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
	mode(os.Args[2:])
}

// modes maps each mode of testproc to what it does with the arguments after the mode's name.
func modes() map[string]func(args []string) {
	return map[string]func(args []string){
		"hold":        hold,
		"attack":      attackCmd,
		"fileop":      fileop,
		"race-victim": func(a []string) { raceVictim(a[0]) },
		"race-read":   func(a []string) { raceRead(a[0], a[1], a[2]) },
		"fork-victim": func(a []string) { forkVictim(a[0], a[1]) },
		"fork-race":   func(a []string) { forkRace(a[0], a[1], a[2], a[3]) },
		"fork-round":  func(a []string) { forkRoundCmd(a[0], a[1], a[2], a[3]) },
		"compat32": func([]string) {
			if !compat32() {
				fmt.Println("ERR no 32-bit system calls")
				os.Exit(1)
			}
			fmt.Println("OK")
		},
		"x32": func([]string) {
			if !x32() {
				fmt.Println("ERR no x32 system calls (boot with syscall.x32=y)")
				os.Exit(1)
			}
			fmt.Println("OK")
		},
		"exec-attack": func(a []string) { execAttack(a[0]) },
		"crash":       crash,
		"perf":        perfCmd,
		"open":        openCmd,
		"finit":       finitCmd,
		"initmod": func([]string) {
			// init_module(2) of a buffer that is no module.
			report(0, unix.InitModule(make([]byte, 4096), ""))
		},
		"kexec": kexecCmd,
		"kexecload": func([]string) {
			// kexec_load with no segments (an unload): the LSM hook (kernel_load_data) comes first.
			_, _, e := unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0)
			if e != 0 {
				report(0, e)
				return
			}
			report(0, nil)
		},
		"bpfload": func(a []string) {
			// Load (not attach) a BPF program of the given kind; prints OK or ERR errno.
			report(1, bpfLoad(a[0]))
		},
		"selfread":    selfRead,
		"coresave":    coreSave,
		"corecount":   coreCount,
		"corelisten":  coreListen,
		"loop-attack": loopAttack,
		"keyop":       keyOp,
		// oneshot.go
		"spawn-attack": spawnAttack,
		"attach-exit":  attachExit,
	}
}

// attackCmd: attack OP PID [TID] [ADDR].
func attackCmd(args []string) {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testproc attack OP PID [TID] [ADDR]")
		os.Exit(2)
	}
	pid, _ := strconv.Atoi(args[1])
	tid, addr := pid, uint64(0)
	if len(args) > 2 {
		tid, _ = strconv.Atoi(args[2])
	}
	if len(args) > 3 {
		addr, _ = strconv.ParseUint(strings.TrimPrefix(args[3], "0x"), 16, 64)
	}
	n, err := Attack(args[0], pid, tid, addr)
	report(n, err)
}

// perfCmd: perf_event_open sampling the user stack of PID (or CPU-wide on CPU 0 with PID -1).
func perfCmd(args []string) {
	pid, _ := strconv.Atoi(args[0])
	cpu := -1
	if pid == -1 {
		cpu = 0
	}
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Sample: 100000, Sample_type: unix.PERF_SAMPLE_STACK_USER, Sample_stack_user: 8192}
	attr.Size = uint32(unsafe.Sizeof(attr))
	fd, err := unix.PerfEventOpen(&attr, pid, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err == nil {
		unix.Close(fd)
	}
	report(1, err)
}

// openCmd: open PATH r|w: prints OK 0 or ERR errno (side doors refused at open).
func openCmd(args []string) {
	flags := os.O_RDONLY
	if len(args) > 1 && args[1] == "w" {
		flags = os.O_WRONLY
	}
	f, err := os.OpenFile(args[0], flags, 0)
	if err == nil {
		f.Close()
	}
	report(0, err)
}

// finitCmd: finit_module(2) of PATH (any file: the LSM hook runs before the module is parsed).
func finitCmd(args []string) {
	f, err := os.Open(args[0])
	if err != nil {
		report(0, err)
		return
	}
	report(0, unix.FinitModule(int(f.Fd()), "", 0))
}

// kexecCmd: kexec_file_load(2) of PATH as a kernel image.
func kexecCmd(args []string) {
	f, err := os.Open(args[0])
	if err != nil {
		report(0, err)
		return
	}
	report(0, unix.KexecFileLoad(int(f.Fd()), -1, "", unix.KEXEC_FILE_NO_INITRAMFS))
}

// selfRead: a process reads its own memory through every path, including through another of its threads.
func selfRead([]string) {
	secret = make([]byte, 64)
	copy(secret, Secret)
	addr := uint64(uintptr(unsafe.Pointer(&secret[0])))
	tidc := make(chan int)
	go func() {
		runtime.LockOSThread()
		tidc <- unix.Gettid()
		select {}
	}()
	tid := <-tidc
	pid := os.Getpid()
	for _, op := range []string{"mem", "taskmem", "vmreadv", "environ", "taskenviron"} {
		n, err := Attack(op, pid, tid, addr)
		if err != nil || n == 0 {
			fmt.Printf("ERR %s %d %v\n", op, n, err)
			os.Exit(1)
		}
	}
	fmt.Println("OK")
}

// coreSave: a pipe core_pattern helper that keeps the dump: stdin to the file named by its argument.
func coreSave(args []string) {
	f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		os.Exit(1)
	}
	io.Copy(f, os.Stdin)
	f.Close()
}

// coreCount: a pipe core_pattern helper: counts the bytes of the dump on stdin and whether it holds Secret.
func coreCount(args []string) {
	b, _ := io.ReadAll(os.Stdin)
	os.WriteFile(args[0], []byte(fmt.Sprintf("%d %v\n", len(b), strings.Contains(string(b), Secret))), 0o644)
}

// coreListen: a minimal socket core_pattern receiver (@PATH, Linux 6.16): for each connection the
// kernel makes, writes "<bytes> <holds Secret>" to OUTDIR/sock.N. Runs until killed.
func coreListen(args []string) {
	l, err := net.Listen("unix", args[0])
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("LISTENING")
	for n := 0; ; n++ {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		// Written under a dot name and renamed: a reader never sees a record half written.
		tmp := filepath.Join(args[1], fmt.Sprintf(".sock.%d", n))
		os.WriteFile(tmp, []byte(fmt.Sprintf("%d %v\n", len(b), strings.Contains(string(b), Secret))), 0o644)
		os.Rename(tmp, filepath.Join(args[1], fmt.Sprintf("sock.%d", n)))
	}
}

// loopAttack: loop-attack PID ADDR SECONDS: /proc/PID/mem reads every millisecond; prints the counts.
func loopAttack(args []string) {
	pid, _ := strconv.Atoi(args[0])
	addr, _ := strconv.ParseUint(strings.TrimPrefix(args[1], "0x"), 16, 64)
	secs, _ := strconv.Atoi(args[2])
	ok, fail := 0, 0
	for end := time.Now().Add(time.Duration(secs) * time.Second); time.Now().Before(end); {
		if _, err := Attack("mem", pid, pid, addr); err == nil {
			ok++
		} else {
			fail++
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("SUCCESSES %d FAILURES %d\n", ok, fail)
}

// execAttack starts "EXE hold" and attacks it the instant the kernel has switched it to the new
// program (its comm changes), before the new program runs a single instruction of its own. A
// /proc/PID/mem opened even earlier (while the child still shares our memory after vfork) must not
// read the new program's memory either. Prints the attack's result, plus " LEAK" if the early fd read
// the secret.
func execAttack(exe string) {
	cmd := exec.Command(exe, "hold")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR start", err)
		os.Exit(1)
	}
	pid := cmd.Process.Pid
	early, _ := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	want := filepath.Base(exe)
	if len(want) > 15 {
		want = want[:15]
	}
	for i := 0; ; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(b)) == want {
			break
		}
		if i > 1_000_000 {
			fmt.Println("ERR exec never completed")
			os.Exit(1)
		}
	}
	n, err := Attack("mem", pid, pid, 0)
	leak := ""
	if early != nil {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		var addr uint64
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "addr=0x"); ok {
				addr, _ = strconv.ParseUint(v, 16, 64)
			}
		}
		buf := make([]byte, len(Secret))
		if k, _ := early.ReadAt(buf, int64(addr)); addr != 0 && k == len(buf) && string(buf) == Secret {
			leak = " LEAK"
		}
		early.Close()
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Printf("ERR %s%s\n", unix.ErrnoName(errno), leak)
			return
		}
	}
	fmt.Printf("OK %d%s\n", n, leak)
}

func report(n int, err error) {
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Println("ERR", unix.ErrnoName(errno))
		} else {
			fmt.Println("ERR", err)
		}
		return
	}
	fmt.Println("OK", n)
}

var secret []byte

func hold(args []string) {
	threads, keyfile, keyThread, waitStdin, spawn := 0, "", false, false, ""
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-threads":
			i++
			threads, _ = strconv.Atoi(args[i])
		case "-keyfile":
			i++
			keyfile = args[i]
		case "-keyfile-thread":
			keyThread = true
		case "-wait-stdin":
			waitStdin = true
		case "-spawn":
			i++
			spawn = args[i]
		}
	}
	secret = make([]byte, 4096)
	copy(secret, Secret)
	tids := []int{os.Getpid()} // the leader: main runs on it (init locks it there)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < threads; i++ {
		wg.Add(1)
		go func() {
			runtime.LockOSThread() // this goroutine keeps its own OS thread for good
			mu.Lock()
			tids = append(tids, unix.Gettid())
			mu.Unlock()
			wg.Done()
			select {}
		}()
	}
	wg.Wait()
	child := 0
	if spawn != "" {
		c := exec.Command(spawn, "hold")
		c.Stdout = os.Stderr
		if err := c.Start(); err != nil {
			fmt.Println("ERR spawn", err)
			os.Exit(1)
		}
		child = c.Process.Pid
	}
	line := func(word string) {
		ts := make([]string, len(tids))
		for i, t := range tids {
			ts[i] = strconv.Itoa(t)
		}
		fmt.Printf("%s pid=%d tids=%s addr=0x%x len=%d child=%d\n", word, os.Getpid(), strings.Join(ts, ","),
			uintptr(unsafe.Pointer(&secret[0])), len(Secret), child)
	}
	if keyfile != "" {
		if waitStdin {
			line("WAITING")
			bufio.NewReader(os.Stdin).ReadString('\n')
		}
		open := func() {
			// EAGAIN: keyguard makes the open wait while a read of this process's memory is in flight or
			// another process shares its memory (a thread being created, a vfork child): open again.
			f, err := os.Open(keyfile)
			for deadline := time.Now().Add(5 * time.Second); errors.Is(err, syscall.EAGAIN) && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
				f, err = os.Open(keyfile)
			}
			if err != nil {
				fmt.Println("ERR open key", err)
				os.Exit(1)
			}
			f.Close()
		}
		if keyThread {
			done := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				open()
				close(done)
			}()
			<-done
		} else {
			open()
		}
	}
	line("READY")
	for {
		time.Sleep(time.Hour)
	}
}

// Attack reads the target's memory (or secrets) by one path and returns how many bytes it got.
func Attack(op string, pid, tid int, addr uint64) (int, error) {
	buf := make([]byte, 64)
	switch op {
	case "attach", "seize":
		return ptraceAttack(op, tid, addr, buf)
	case "vmreadv":
		local := []unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
		remote := []unix.RemoteIovec{{Base: uintptr(addrOr(addr)), Len: len(buf)}}
		return unix.ProcessVMReadv(tid, local, remote, 0)
	case "vmreadv32", "vmreadvx32":
		a := addrOr(addr)
		if a >= 1<<32 {
			a = addrOr(0) // the compat iovec holds 32 bits; the check comes before any address is used
		}
		if op == "vmreadvx32" {
			return processVMReadvX32(tid, a, buf)
		}
		return processVMReadv32(tid, a, buf)
	case "pidfd_getfd":
		pfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return 0, err
		}
		defer unix.Close(pfd)
		fd, err := unix.PidfdGetfd(pfd, 0, 0)
		if err != nil {
			return 0, err
		}
		unix.Close(fd)
		return 1, nil
	}
	return procAttack(op, pid, tid, addr, buf)
}

// ptraceAttack attaches to (or seizes) tid, stops it and peeks a word at addr.
func ptraceAttack(op string, tid int, addr uint64, buf []byte) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var err error
	if op == "attach" {
		err = unix.PtraceAttach(tid)
	} else {
		err = unix.PtraceSeize(tid)
	}
	if err != nil {
		return 0, err
	}
	if op == "seize" {
		unix.PtraceInterrupt(tid)
	}
	var ws unix.WaitStatus
	unix.Wait4(tid, &ws, unix.WALL, nil)
	n, err := unix.PtracePeekData(tid, uintptr(addrOr(addr)), buf)
	unix.PtraceDetach(tid)
	return n, err
}

// procAttack reads the target through one of its /proc/PID files, or (op "task"+name) its thread's
// /proc/PID/task/TID one.
func procAttack(op string, pid, tid int, addr uint64, buf []byte) (int, error) {
	dir, name := fmt.Sprintf("/proc/%d/", pid), op
	if rest, ok := strings.CutPrefix(op, "task"); ok {
		dir, name = fmt.Sprintf("/proc/%d/task/%d/", pid, tid), rest
	}
	switch name {
	case "mem", "pagemap":
		f, err := os.Open(dir + name)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if name == "pagemap" {
			return f.ReadAt(buf[:8], int64(addrOr(addr)/4096*8)) // the page's frame entry
		}
		if addr == 0 {
			return 0, nil // open is the checked step
		}
		return f.ReadAt(buf, int64(addr))
	case "map_files": // list the mappings, then open one (needs CAP_CHECKPOINT_RESTORE) and read it
		ents, err := os.ReadDir(dir + name)
		if err != nil {
			return 0, err
		}
		if len(ents) == 0 {
			return 0, fmt.Errorf("%s: no mappings listed", dir+name)
		}
		f, err := os.Open(dir + name + "/" + ents[0].Name())
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return f.Read(buf[:1])
	case "environ", "auxv", "maps", "smaps", "smaps_rollup", "numa_maps": // maps...: the layout
		b, err := os.ReadFile(dir + name)
		return len(b), err
	}
	return 0, fmt.Errorf("unknown attack %q", op)
}

func addrOr(a uint64) uint64 {
	if a == 0 {
		return 0x400000 // mapped in a non-PIE Go binary
	}
	return a
}

// crash loads the PEM private keys in -keys DIR (if any), keeps them in memory, and dies of -sig (SEGV,
// ABRT or QUIT) with the default action, from the main thread or (-thread) another one, so the kernel
// dumps core. -spawn EXE: first start "EXE crash ..." (same flags minus -spawn) as a child and wait for it.
func crash(args []string) {
	sig, thread, keysDir, spawn := unix.SIGSEGV, false, "", ""
	var rest []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-sig":
			i++
			switch args[i] {
			case "SEGV":
				sig = unix.SIGSEGV
			case "ABRT":
				sig = unix.SIGABRT
			case "QUIT":
				sig = unix.SIGQUIT
			}
			rest = append(rest, "-sig", args[i])
		case "-thread":
			thread = true
			rest = append(rest, "-thread")
		case "-keys":
			i++
			keysDir = args[i]
			rest = append(rest, "-keys", args[i])
		case "-spawn":
			i++
			spawn = args[i]
		}
	}
	if spawn != "" {
		c := exec.Command(spawn, append([]string{"crash"}, rest...)...)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		err := c.Run()
		fmt.Println("CHILD", err)
		os.Exit(0)
	}
	unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY})
	if keysDir != "" {
		held = loadKeys(keysDir)
	}
	secret = make([]byte, 4096)
	copy(secret, Secret)
	die := func() {
		// Default action for sig, bypassing the Go runtime's handlers, then deliver it to this thread.
		var sa [4]uint64 // struct kernel_sigaction: handler SIG_DFL, flags, restorer, mask
		unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&sa[0])), 0, 8, 0, 0)
		var set [1]uint64
		unix.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&set[0])), 0, 8, 0, 0)
		tasks, _ := os.ReadDir("/proc/self/task")
		fmt.Printf("CRASHING pid=%d keys=%d threads=%d\n", os.Getpid(), len(held), len(tasks))
		os.Stdout.Sync()
		unix.Tgkill(os.Getpid(), unix.Gettid(), sig)
		time.Sleep(10 * time.Second)
		fmt.Println("ERR still alive")
		os.Exit(1)
	}
	if thread {
		go func() {
			runtime.LockOSThread()
			die()
		}()
		select {}
	}
	runtime.LockOSThread()
	die()
}

var held []any

// loadKeys parses every PEM private key in dir and keeps the parsed keys alive.
func loadKeys(dir string) []any {
	ents, _ := os.ReadDir(dir)
	var out []any
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
			if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
				out = append(out, k)
			} else if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
				out = append(out, k)
			} else if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
				out = append(out, k)
			}
			out = append(out, blk.Bytes)
		}
	}
	return out
}

// bpfLoad loads one BPF program: "tracepoint" reads user memory with bpf_probe_read_user, "sleepable"
// is a sleepable LSM program that reads another task's memory with bpf_copy_from_user_task, and
// "socket" is a harmless socket filter.
func bpfLoad(kind string) error {
	var spec *ebpf.ProgramSpec
	switch kind {
	case "tracepoint":
		spec = &ebpf.ProgramSpec{Type: ebpf.TracePoint, License: "GPL", Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.R10), asm.Add.Imm(asm.R1, -8), asm.Mov.Imm(asm.R2, 8), asm.Mov.Imm(asm.R3, 0),
			asm.FnProbeReadUser.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return(),
		}}
	case "sleepable":
		spec = &ebpf.ProgramSpec{Type: ebpf.LSM, AttachType: ebpf.AttachLSMMac, AttachTo: "bprm_committed_creds",
			Flags: unix.BPF_F_SLEEPABLE, License: "GPL", Instructions: asm.Instructions{
				asm.FnGetCurrentTaskBtf.Call(), asm.Mov.Reg(asm.R4, asm.R0),
				asm.Mov.Reg(asm.R1, asm.R10), asm.Add.Imm(asm.R1, -8), asm.Mov.Imm(asm.R2, 8), asm.Mov.Imm(asm.R3, 0),
				asm.Mov.Imm(asm.R5, 0), asm.FnCopyFromUserTask.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return(),
			}}
	case "socket":
		spec = &ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL", Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0), asm.Return(),
		}}
	default:
		return fmt.Errorf("unknown program kind %q", kind)
	}
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		return err
	}
	return p.Close()
}

func fileop(args []string) {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testproc fileop OP PATH [ARG]")
		os.Exit(2)
	}
	op, path, arg := args[0], args[1], ""
	if len(args) > 2 {
		arg = args[2]
	}
	report(0, fileOp(op, path, arg))
}

func fileOp(op, path, arg string) error {
	readFd := func(fd int) error {
		defer unix.Close(fd)
		_, err := unix.Read(fd, make([]byte, 64))
		return err
	}
	switch op {
	case "read":
		fd, err := unix.Open(path, unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		return readFd(fd)
	case "write":
		fd, err := unix.Open(path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		unix.Close(fd)
		return nil
	case "opath-reopen":
		pfd, err := unix.Open(path, unix.O_PATH, 0)
		if err != nil {
			return err
		}
		defer unix.Close(pfd)
		fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		return readFd(fd)
	case "handle":
		h, mnt, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
		if err != nil {
			return fmt.Errorf("name_to_handle_at: %w", err)
		}
		_ = mnt
		mfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(mfd)
		fd, err := unix.OpenByHandleAt(mfd, h, unix.O_RDONLY)
		if err != nil {
			return err
		}
		return readFd(fd)
	case "link":
		return unix.Link(path, arg)
	case "rename":
		return unix.Rename(path, arg)
	case "unlink":
		return unix.Unlink(path)
	case "truncate":
		return unix.Truncate(path, 0)
	case "chmod":
		return unix.Chmod(path, 0o666)
	case "chown":
		return unix.Chown(path, 1000, 1000)
	case "setxattr":
		return unix.Setxattr(path, "user.kg", []byte("x"), 0)
	case "removexattr":
		return unix.Removexattr(path, "user.kg")
	}
	return fmt.Errorf("unknown file op %q", op)
}

// raceBuf receives the key in race-victim; a non-PIE binary has it at the same address in every copy.
var raceBuf [64]byte

// RaceMarker starts the race test's key file.
const RaceMarker = "RACEKEY-"

func raceVictim(keyfile string) {
	retries := 0
	var f *os.File
	for {
		var err error
		f, err = os.Open(keyfile)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EAGAIN) || retries > 100000 {
			fmt.Println("ERR open key", err)
			os.Exit(1)
		}
		retries++
	}
	f.Read(raceBuf[:])
	f.Close()
	fmt.Printf("LOADED retries=%d\n", retries)
	time.Sleep(20 * time.Millisecond)
	runtime.KeepAlive(&raceBuf)
}

func raceRead(mode, racer, keyfile string) {
	cmd := exec.Command(racer, "race-victim", keyfile)
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR start", err)
		os.Exit(1)
	}
	pid := cmd.Process.Pid
	var gone sync.WaitGroup
	gone.Add(1)
	var exited atomic.Bool
	go func() { cmd.Wait(); exited.Store(true); gone.Done() }()
	defer gone.Wait()
	addr := uintptr(unsafe.Pointer(&raceBuf[0]))
	buf := make([]byte, len(raceBuf))
	reads, errs := 0, 0
	var kept []*os.File
	check := func(n int, err error) {
		if err != nil || n == 0 {
			errs++
			return
		}
		reads++
		if strings.HasPrefix(string(buf[:n]), RaceMarker) {
			fmt.Println("LEAK", reads)
			gone.Wait()
			os.Exit(0)
		}
	}
	memPath := fmt.Sprintf("/proc/%d/mem", pid)
	for start := time.Now(); time.Since(start) < 10*time.Second; {
		if exited.Load() {
			break
		}
		switch mode {
		case "vmreadv":
			local := []unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
			remote := []unix.RemoteIovec{{Base: addr, Len: len(buf)}}
			check(unix.ProcessVMReadv(pid, local, remote, 0))
		case "vmreadv32":
			check(processVMReadv32(pid, uint64(addr), buf))
		case "vmreadvx32":
			check(processVMReadvX32(pid, uint64(addr), buf))
		case "mem":
			f, err := os.Open(memPath)
			if err != nil {
				errs++
				continue
			}
			check(f.ReadAt(buf, int64(addr)))
			f.Close()
		case "kept":
			if f, err := os.Open(memPath); err == nil {
				kept = append(kept, f)
				if len(kept) > 8 {
					kept[0].Close()
					kept = kept[1:]
				}
			}
			for _, f := range kept {
				check(f.ReadAt(buf, int64(addr)))
			}
		}
	}
	fmt.Printf("CLEAN reads=%d errors=%d\n", reads, errs)
}
