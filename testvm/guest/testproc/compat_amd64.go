package main

import (
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func int80(nr, a1, a2, a3, a4, a5, a6 uintptr) (r uintptr)

// The ia32 numbers of getpid and process_vm_readv.
const (
	ia32Getpid         = 20
	ia32ProcessVMReadv = 347
)

// low is a page below 4 GiB (MAP_32BIT): the compat iovecs and the local buffer of a 32-bit call.
var low = sync.OnceValues(func() ([]byte, error) {
	return unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
})

// compat32 reports whether this kernel runs 32-bit system calls (int 0x80) of a 64-bit process.
func compat32() bool {
	return int32(int80(ia32Getpid, 0, 0, 0, 0, 0, 0)) == int32(syscall.Getpid())
}

// processVMReadv32 is process_vm_readv through the ia32 entry (int 0x80, compat iovecs): len(buf) bytes
// (at most 2048) at remote, which must be below 4 GiB, of pid.
func processVMReadv32(pid int, remote uint64, buf []byte) (int, error) {
	page, err := low()
	if err != nil {
		return 0, err
	}
	if remote >= 1<<32 || len(buf) > 2048 {
		return 0, unix.EFAULT
	}
	base := uintptr(unsafe.Pointer(&page[0]))
	iov := (*[4]uint32)(unsafe.Pointer(&page[0]))
	iov[0], iov[1] = uint32(base+2048), uint32(len(buf)) // local compat_iovec
	iov[2], iov[3] = uint32(remote), uint32(len(buf))    // remote compat_iovec
	r := int32(int80(ia32ProcessVMReadv, uintptr(pid), base, 1, base+8, 1, 0))
	if r < 0 {
		return 0, syscall.Errno(-r)
	}
	copy(buf, page[2048:2048+int(r)])
	return int(r), nil
}
