package guesttest

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// The image the kernel's romfs_fill_super accepts: magic, size, first 512 bytes summing to 0, the root
// directory header right after the volume name, and the file's bytes after its header.
func TestRomfs(t *testing.T) {
	img := Romfs("key.pem", []byte("loop-key"), 4096)
	if !bytes.HasPrefix(img, []byte("-rom1fs-")) || binary.BigEndian.Uint32(img[8:]) != 4096 {
		t.Fatalf("superblock %q", img[:16])
	}
	if s := sum(img[:512]); s != 0 {
		t.Errorf("superblock checksum: first 512 bytes sum to %#x", s)
	}
	for _, c := range []struct {
		off  int
		next uint32
		name string
	}{{32, 64 | 9, "."}, {64, 96, ".."}, {96, 2, "key.pem"}} {
		if got := binary.BigEndian.Uint32(img[c.off:]); got != c.next || !bytes.HasPrefix(img[c.off+16:], []byte(c.name+"\x00")) {
			t.Errorf("header at %d: next %#x name %q, want %#x %q", c.off, got, img[c.off+16:c.off+32], c.next, c.name)
		}
		if s := sum(img[c.off : c.off+32]); s != 0 {
			t.Errorf("header %q checksum: sums to %#x", c.name, s)
		}
	}
	if !bytes.Equal(img[128:136], []byte("loop-key")) || binary.BigEndian.Uint32(img[96+8:]) != 8 {
		t.Errorf("file data %q", img[128:136])
	}
}
