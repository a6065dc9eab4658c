package memscan

import (
	"crypto/rand"
	"os"
	"testing"
)

func TestFindInOwnMemory(t *testing.T) {
	needle := make([]byte, 32)
	rand.Read(needle)
	held := make([]byte, 4096)
	rev := make([]byte, len(needle))
	for i := range needle {
		rev[i] = needle[len(needle)-1-i]
	}
	copy(held[100:], rev) // held little-endian: found as the byte-reversed needle
	if _, ok := Find(os.Getpid(), needle); !ok {
		t.Fatal("a reversed copy of the needle in this process's heap was not found")
	}
	if _, ok := Find(-1, needle); ok {
		t.Fatal("found something in a process that does not exist")
	}
}
