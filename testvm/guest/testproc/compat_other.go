//go:build !amd64

package main

import "golang.org/x/sys/unix"

// compat32 and x32: 32-bit system calls of a 64-bit process are an x86-64 matter here.
func compat32() bool { return false }
func x32() bool      { return false }

func processVMReadvX32(pid int, remote uint64, buf []byte) (int, error) { return 0, unix.ENOSYS }

func processVMReadv32(pid int, remote uint64, buf []byte) (int, error) { return 0, unix.ENOSYS }
