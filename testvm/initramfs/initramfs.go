// Package initramfs writes a Linux initramfs: a "newc" cpio archive (the format the kernel unpacks,
// see Documentation/driver-api/early-userspace/buffer-format.rst), optionally gzip-compressed.
package initramfs

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Writer adds entries to an initramfs. Parent directories are created on demand (mode 0755).
// Close writes the trailer; it does not close the underlying writer.
type Writer struct {
	out  io.Writer
	gz   *gzip.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

// NewWriter returns a Writer that writes an uncompressed cpio archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{out: w, ino: 1, dirs: map[string]bool{".": true}}
}

// NewGzipWriter returns a Writer that writes a gzip-compressed cpio archive to w.
func NewGzipWriter(w io.Writer, level int) (*Writer, error) {
	gz, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	iw := NewWriter(gz)
	iw.gz = gz
	return iw, nil
}

// Mode bits of the cpio format (octal, as in stat(2)).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// Dir adds a directory (and its parents).
func (w *Writer) Dir(name string, perm fs.FileMode) error {
	name, err := w.clean(name)
	if err != nil {
		return err
	}
	if w.dirs[name] {
		return nil
	}
	if err := w.parents(name); err != nil {
		return err
	}
	w.dirs[name] = true
	return w.entry(name, modeDir|permBits(perm), 0, 0, nil)
}

// File adds a regular file with the given content.
func (w *Writer) File(name string, perm fs.FileMode, data []byte) error {
	name, err := w.clean(name)
	if err != nil {
		return err
	}
	if err := w.parents(name); err != nil {
		return err
	}
	return w.entry(name, modeFile|permBits(perm), 0, 0, data)
}

// CopyFile adds the host file src as name, keeping its permission bits.
func (w *Writer) CopyFile(name, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return w.File(name, st.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), data)
}

// CopyTree adds the host directory src and everything below it as name. Symlinks are kept as
// symlinks; other special files are refused.
func (w *Writer) CopyTree(name, src string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		dst := path.Join(name, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		switch {
		case d.IsDir():
			return w.Dir(dst, info.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("initramfs: %w", err)
			}
			return w.Symlink(dst, target)
		case d.Type().IsRegular():
			return w.CopyFile(dst, p)
		}
		return fmt.Errorf("initramfs: %s is neither a file, a directory nor a symlink", p)
	})
}

// Symlink adds a symbolic link name pointing to target.
func (w *Writer) Symlink(name, target string) error {
	name, err := w.clean(name)
	if err != nil {
		return err
	}
	if err := w.parents(name); err != nil {
		return err
	}
	return w.entry(name, modeSymlink|0o777, 0, 0, []byte(target))
}

// CharDev adds a character device node (for example /dev/console, 5:1, which the kernel opens as
// PID 1's stdin, stdout and stderr: without it /init prints nothing).
func (w *Writer) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	name, err := w.clean(name)
	if err != nil {
		return err
	}
	if err := w.parents(name); err != nil {
		return err
	}
	return w.entry(name, modeCharDev|permBits(perm), major, minor, nil)
}

// Close writes the trailer and flushes compression.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if err := w.entry("TRAILER!!!", 0, 0, 0, nil); err != nil {
		return err
	}
	if w.gz != nil {
		if err := w.gz.Close(); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}
	return nil
}

func (w *Writer) clean(name string) (string, error) {
	c := path.Clean(strings.TrimPrefix(name, "/"))
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("initramfs: bad entry name %q", name)
	}
	return c, nil
}

func (w *Writer) parents(name string) error {
	if dir := path.Dir(name); !w.dirs[dir] {
		return w.Dir(dir, 0o755)
	}
	return nil
}

// entry writes one newc header, name and data, each padded to 4 bytes.
func (w *Writer) entry(name string, mode, rmajor, rminor uint32, data []byte) error {
	if w.err != nil {
		return w.err
	}
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	ino := w.ino
	w.ino++
	if name == "TRAILER!!!" {
		ino = 0
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8+len(data))
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	if _, err := w.out.Write(buf); err != nil {
		w.err = fmt.Errorf("initramfs: %w", err)
		return w.err
	}
	return nil
}

// permBits converts permission, setuid, setgid and sticky bits to their stat(2) values.
func permBits(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// ErrFormat is returned by Read for an archive that is not newc cpio.
var ErrFormat = errors.New("initramfs: not a newc cpio archive")
