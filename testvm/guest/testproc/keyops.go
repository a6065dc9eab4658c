package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// keyOp runs the file operations of "testproc keyop OP ARG", which need more than a path:
//
//	ftruncate-fd FD   ftruncate(2) of an fd inherited from the parent (opened before its file was listed)
//	ftruncate-late KEY PLAIN  create and open both files for writing, print "OPEN", wait for a line on
//	                  stdin (the test has the agent list KEY meanwhile), ftruncate both fds; prints
//	                  "KEY OK|ERR <errno>" and "PLAIN OK|ERR <errno>" (this process, not the test, holds
//	                  the key file open: the agent's scan marks holders and their children)
//	setacl PATH       set a POSIX access ACL with a named user (system.posix_acl_access)
//	removeacl PATH    remove the access ACL
//	uring-open PATH   open PATH read-only by an io_uring IORING_OP_OPENAT request and read from it
//	uring-open-async PATH  the same with IOSQE_ASYNC (the open runs in an io-wq worker thread)
//
// It prints "OK" or "ERR <errno>".
func keyOp(args []string) {
	if len(args) == 3 && args[0] == "ftruncate-late" {
		ftruncateLate(args[1], args[2])
		return
	}
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: testproc keyop ftruncate-fd|setacl|removeacl|uring-open ARG")
		os.Exit(2)
	}
	var err error
	switch args[0] {
	case "ftruncate-fd":
		fd, perr := strconv.Atoi(args[1])
		if perr != nil {
			fmt.Fprintln(os.Stderr, perr)
			os.Exit(2)
		}
		err = unix.Ftruncate(fd, 0)
	case "setacl":
		err = unix.Setxattr(args[1], "system.posix_acl_access", posixACL(1000), 0)
	case "removeacl":
		err = unix.Removexattr(args[1], "system.posix_acl_access")
	case "uring-open":
		err = uringOpen(args[1], 0)
	case "uring-open-async":
		err = uringOpen(args[1], 1<<4) // IOSQE_ASYNC: the open runs in an io-wq worker
	default:
		fmt.Fprintln(os.Stderr, "unknown keyop", args[0])
		os.Exit(2)
	}
	report(0, err)
}

func ftruncateLate(key, plain string) {
	var fds []*os.File
	for _, p := range []string{key, plain} {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		f.WriteString("-----BEGIN PRIVATE KEY-----\nlate\n-----END PRIVATE KEY-----\n")
		fds = append(fds, f)
	}
	fmt.Println("OPEN")
	bufio.NewReader(os.Stdin).ReadString('\n')
	for i, name := range []string{"KEY", "PLAIN"} {
		fmt.Print(name, " ")
		report(0, unix.Ftruncate(int(fds[i].Fd()), 0))
	}
}

// posixACL is the xattr form of the ACL u::rw-,u:UID:r--,g::r--,m::r--,o::r--.
func posixACL(uid uint32) []byte {
	const undefined = 0xffffffff
	entries := []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, undefined}, {0x02, 4, uid}, {0x04, 4, undefined}, {0x10, 4, undefined}, {0x20, 4, undefined}}
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// io_uring_params with the offsets this program reads (include/uapi/linux/io_uring.h).
type uringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQHead, SQTail, SQRingMask, SQRingEntries, SQFlags, SQDropped, SQArray uint32
	SQResv1                                                                uint32
	SQUserAddr                                                             uint64
	CQHead, CQTail, CQRingMask, CQRingEntries, CQOverflow, CQCqes, CQFlags uint32
	CQResv1                                                                uint32
	CQUserAddr                                                             uint64
}

// uringOpen opens path by one IORING_OP_OPENAT request (the open runs in the kernel, possibly in an
// io-wq worker, not in this thread's openat syscall) and reads from the fd it returns.
func uringOpen(path string, sqeFlags uint8) error {
	var p uringParams
	rfd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_setup: %w", errno)
	}
	ring := int(rfd)
	defer unix.Close(ring)
	sq, err := unix.Mmap(ring, 0, int(p.SQArray+p.SQEntries*4), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap sq ring: %w", err)
	}
	defer unix.Munmap(sq)
	cq, err := unix.Mmap(ring, 0x8000000, int(p.CQCqes+p.CQEntries*16), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap cq ring: %w", err)
	}
	defer unix.Munmap(cq)
	sqes, err := unix.Mmap(ring, 0x10000000, int(p.SQEntries*64), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap sqes: %w", err)
	}
	defer unix.Munmap(sqes)

	name := append([]byte(path), 0)
	sqe := sqes[:64]
	clear(sqe)
	sqe[1] = sqeFlags
	sqe[0] = 18                                                                        // IORING_OP_OPENAT
	binary.LittleEndian.PutUint32(sqe[4:], uint32(0xffffff9c))                         // fd: AT_FDCWD
	binary.LittleEndian.PutUint64(sqe[16:], uint64(uintptr(unsafe.Pointer(&name[0])))) // addr: the path
	binary.LittleEndian.PutUint32(sqe[28:], unix.O_RDONLY)                             // open_flags
	binary.LittleEndian.PutUint64(sqe[32:], 0x6b67)                                    // user_data
	mask := *(*uint32)(unsafe.Pointer(&sq[p.SQRingMask]))
	tail := (*uint32)(unsafe.Pointer(&sq[p.SQTail]))
	*(*uint32)(unsafe.Pointer(&sq[p.SQArray+(*tail&mask)*4])) = 0
	*tail++
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, rfd, 1, 1, 1 /* IORING_ENTER_GETEVENTS */, 0, 0)
	runtime.KeepAlive(name)
	if errno != 0 {
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
	if n != 1 {
		return fmt.Errorf("io_uring_enter submitted %d requests", n)
	}
	cmask := *(*uint32)(unsafe.Pointer(&cq[p.CQRingMask]))
	head := *(*uint32)(unsafe.Pointer(&cq[p.CQHead]))
	if head == *(*uint32)(unsafe.Pointer(&cq[p.CQTail])) {
		return fmt.Errorf("io_uring: no completion")
	}
	cqe := cq[p.CQCqes+(head&cmask)*16:]
	res := int32(binary.LittleEndian.Uint32(cqe[8:]))
	if res < 0 {
		return unix.Errno(-res)
	}
	defer unix.Close(int(res))
	_, err = unix.Read(int(res), make([]byte, 64))
	return err
}
