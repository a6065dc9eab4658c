package guesttest

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Romfs is a romfs image (Documentation/filesystems/romfs.rst) with one regular file, name, holding
// data, padded to size bytes: a "." directory header (the root inode, whose entries start at itself),
// ".." (a hard link to it) and the file. Every header carries its checksum; the first 512 bytes sum to 0.
func Romfs(name string, data []byte, size int) []byte {
	pad := func(n int) int { return (n + 15) &^ 15 }
	img := make([]byte, size)
	copy(img, "-rom1fs-")
	copy(img[16:], "kg")
	const root = 32
	header := func(off, next, typ, spec int, name string, n int) int {
		binary.BigEndian.PutUint32(img[off:], uint32(next|typ))
		binary.BigEndian.PutUint32(img[off+4:], uint32(spec))
		binary.BigEndian.PutUint32(img[off+8:], uint32(n))
		copy(img[off+16:], name)
		end := off + 16 + pad(len(name)+1)
		binary.BigEndian.PutUint32(img[off+12:], -sum(img[off:end]))
		return end
	}
	dot := header(root, root+32, 1|8, root, ".", 0) // directory, executable
	file := header(dot, dot+32, 0, root, "..", 0)   // hard link to the root
	start := header(file, 0, 2, 0, name, len(data)) // regular file, the last entry
	copy(img[start:], data)
	if start+pad(len(data)) > size {
		panic(fmt.Sprintf("romfs: %d bytes do not fit in %d", start+len(data), size))
	}
	binary.BigEndian.PutUint32(img[8:], uint32(size))
	binary.BigEndian.PutUint32(img[12:], -sum(img[:min(512, size)]))
	return img
}

func sum(b []byte) uint32 {
	var s uint32
	for i := 0; i+4 <= len(b); i += 4 {
		s += binary.BigEndian.Uint32(b[i:])
	}
	return s
}

// LoopMount writes a romfs image with one key file at image, attaches it to a free loop device and
// mounts that read-only on dir; it returns the loop device's path. Undone at the test's end.
func LoopMount(t *testing.T, image, dir, name string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(image, Romfs(name, data, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("no loop devices (testvm/blkmods.sh puts loop.ko in the guest): %v", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		t.Fatalf("LOOP_CTL_GET_FREE: %v", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	loop, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_SET_FD, int(img.Fd())); err != nil {
		t.Fatalf("LOOP_SET_FD %s: %v", dev, err)
	}
	t.Cleanup(func() { // by the fd opened before the device was listed (a later open is refused)
		unix.Syscall(unix.SYS_IOCTL, loop.Fd(), unix.LOOP_CLR_FD, 0)
		loop.Close()
	})
	os.MkdirAll(dir, 0o755)
	if err := unix.Mount(dev, dir, "romfs", unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount %s (romfs) on %s: %v", dev, dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !strings.Contains(string(b), string(data)) {
		t.Fatalf("the key file on %s: %q %v", dev, b, err)
	}
	return dev
}
