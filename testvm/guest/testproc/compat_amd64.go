package main

import (
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func int80(nr, a1, a2, a3, a4, a5, a6 uintptr) (r uintptr)

// The ia32 numbers of getpid and process_vm_readv, and the x32 ones (the x86-64 table with
// __X32_SYSCALL_BIT set; process_vm_readv has its own x32 entry, 539, that takes compat iovecs).
const (
	ia32Getpid         = 20
	ia32ProcessVMReadv = 347
	x32SyscallBit      = 0x40000000
	x32Getpid          = x32SyscallBit | 39
	x32ProcessVMReadv  = x32SyscallBit | 539
)

// low is a page below 4 GiB (MAP_32BIT): the compat iovecs and the local buffer of a 32-bit call.
var low = sync.OnceValues(func() ([]byte, error) {
	return unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
})

// compat32 reports whether this kernel runs 32-bit system calls (int 0x80) of a 64-bit process.
func compat32() bool {
	return int32(int80(ia32Getpid, 0, 0, 0, 0, 0, 0)) == int32(syscall.Getpid())
}

// x32 reports whether this kernel runs x32 system calls (Debian's kernels: only when booted with
// syscall.x32=y; testvm's amd64 guests are).
func x32() bool {
	r, _, _ := unix.RawSyscall(x32Getpid, 0, 0, 0)
	return int(r) == syscall.Getpid()
}

// processVMReadvX32 is process_vm_readv through the x32 entry (compat iovecs below 4 GiB), as
// processVMReadv32.
func processVMReadvX32(pid int, remote uint64, buf []byte) (int, error) {
	page, base, err := compatIovecs(remote, buf)
	if err != nil {
		return 0, err
	}
	r, _, e := unix.Syscall6(x32ProcessVMReadv, uintptr(pid), base, 1, base+8, 1, 0)
	if e != 0 {
		return 0, e
	}
	copy(buf, page[2048:2048+int(r)])
	return int(r), nil
}

// compatIovecs writes the local and remote compat_iovec of a 32-bit process_vm_readv of len(buf) bytes
// (at most 2048) at remote (below 4 GiB) into the low page, local buffer at its second half.
func compatIovecs(remote uint64, buf []byte) ([]byte, uintptr, error) {
	page, err := low()
	if err != nil {
		return nil, 0, err
	}
	if remote >= 1<<32 || len(buf) > 2048 {
		return nil, 0, unix.EFAULT
	}
	base := uintptr(unsafe.Pointer(&page[0]))
	iov := (*[4]uint32)(unsafe.Pointer(&page[0]))
	iov[0], iov[1] = uint32(base+2048), uint32(len(buf)) // local compat_iovec
	iov[2], iov[3] = uint32(remote), uint32(len(buf))    // remote compat_iovec
	return page, base, nil
}

// processVMReadv32 is process_vm_readv through the ia32 entry (int 0x80, compat iovecs): len(buf) bytes
// (at most 2048) at remote, which must be below 4 GiB, of pid.
func processVMReadv32(pid int, remote uint64, buf []byte) (int, error) {
	page, base, err := compatIovecs(remote, buf)
	if err != nil {
		return 0, err
	}
	r := int32(int80(ia32ProcessVMReadv, uintptr(pid), base, 1, base+8, 1, 0))
	if r < 0 {
		return 0, syscall.Errno(-r)
	}
	copy(buf, page[2048:2048+int(r)])
	return int(r), nil
}
