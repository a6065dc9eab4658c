package policy

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FileID names a file the way the BPF programs see it: the superblock's device number in the
// kernel's internal encoding (sb->s_dev = major<<20 | minor, what MKDEV builds; NOT stat's st_dev
// encoding) and the inode number. Its layout matches struct kg_file_id.
type FileID struct {
	Dev uint64
	Ino uint64
}

// String returns "major:minor:inode".
func (f FileID) String() string {
	return fmt.Sprintf("%d:%d:%d", f.Dev>>20, f.Dev&(1<<20-1), f.Ino)
}

// KernelDev converts stat(2)'s st_dev (glibc's makedev encoding) to the kernel's internal dev_t
// encoding, major<<20 | minor.
func KernelDev(stDev uint64) uint64 {
	return MkKernelDev(unix.Major(stDev), unix.Minor(stDev))
}

// MkKernelDev is the kernel's MKDEV(major, minor).
func MkKernelDev(major, minor uint32) uint64 {
	return uint64(major)<<20 | uint64(minor&(1<<20-1))
}

// FileInfo is what resolution learns about a file.
type FileInfo struct {
	ID   FileID
	Mode fs.FileMode
}

// Stat returns the FileID of the file at path, following symlinks (so /proc/PID/exe names the
// executable). See statter for how the device number is chosen.
func Stat(path string) (FileInfo, error) {
	return newStatter().stat(path)
}

// statter stats files and caches this process's mount table for the duration of one resolution.
type statter struct {
	mounts map[uint64]uint64 // mount id → sb->s_dev, from /proc/self/mountinfo; nil until needed
	err    error
}

func newStatter() *statter { return &statter{} }

// stat returns the file's identity. The device is stat's st_dev in kernel encoding, except when the
// mount the file lives on (statx STATX_MNT_ID) reports another superblock device in mountinfo: on
// btrfs subvolumes and some overlayfs set-ups st_dev is a per-subvolume or per-layer number while the
// kernel's inode->i_sb->s_dev (what the BPF programs read) is the superblock's; mountinfo shows the
// latter.
func (s *statter) stat(path string) (FileInfo, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_SYNC_AS_STAT,
		unix.STATX_TYPE|unix.STATX_MODE|unix.STATX_INO|unix.STATX_MNT_ID, &stx)
	if err != nil {
		return FileInfo{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	id := FileID{Dev: MkKernelDev(stx.Dev_major, stx.Dev_minor), Ino: stx.Ino}
	if stx.Mask&unix.STATX_MNT_ID != 0 {
		if dev, ok := s.mountDev(stx.Mnt_id); ok {
			id.Dev = dev
		}
	}
	return FileInfo{ID: id, Mode: modeOf(uint32(stx.Mode))}, nil
}

func (s *statter) mountDev(mntID uint64) (uint64, bool) {
	if s.mounts == nil && s.err == nil {
		s.mounts, s.err = readMountDevs("/proc/self/mountinfo")
	}
	dev, ok := s.mounts[mntID]
	return dev, ok
}

// readMountDevs maps mount ids to superblock devices from a mountinfo file:
// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw".
func readMountDevs(file string) (map[uint64]uint64, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[uint64]uint64{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		id, err1 := strconv.ParseUint(fields[0], 10, 64)
		maj, min, ok := strings.Cut(fields[2], ":")
		ma, err2 := strconv.ParseUint(maj, 10, 32)
		mi, err3 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || err2 != nil || err3 != nil || !ok {
			continue
		}
		out[id] = MkKernelDev(uint32(ma), uint32(mi))
	}
	return out, sc.Err()
}

func modeOf(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	return mode
}
