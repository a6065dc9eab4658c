package initramfs

import (
	"fmt"
	"io"
	"strconv"
)

// Entry is one member of an archive read back by Read.
type Entry struct {
	Name         string
	Mode         uint32 // type and permission bits, as in stat(2)
	RMajor       uint32
	RMinor       uint32
	Data         []byte
	Ino, NLink   uint32
	HeaderOffset int
}

// Read parses an uncompressed newc archive up to its trailer. It exists to check what Writer
// produced (tests, debugging an image); the kernel is the reader that matters.
func Read(r io.Reader) ([]Entry, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	var out []Entry
	off := 0
	for {
		if off+110 > len(raw) || string(raw[off:off+6]) != "070701" {
			return nil, fmt.Errorf("%w (at byte %d)", ErrFormat, off)
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("%w: field %d at byte %d: %v", ErrFormat, i, off, err)
			}
			f[i] = uint32(v)
		}
		e := Entry{Ino: f[0], Mode: f[1], NLink: f[4], RMajor: f[9], RMinor: f[10], HeaderOffset: off}
		nameEnd := off + 110 + int(f[11])
		if f[11] == 0 || nameEnd > len(raw) || raw[nameEnd-1] != 0 {
			return nil, fmt.Errorf("%w: bad name at byte %d", ErrFormat, off)
		}
		e.Name = string(raw[off+110 : nameEnd-1])
		dataOff := align4(nameEnd)
		dataEnd := dataOff + int(f[6])
		if dataEnd > len(raw) {
			return nil, fmt.Errorf("%w: %s: data runs past the end", ErrFormat, e.Name)
		}
		e.Data = raw[dataOff:dataEnd]
		off = align4(dataEnd)
		if e.Name == "TRAILER!!!" {
			return out, nil
		}
		out = append(out, e)
	}
}

func align4(n int) int { return (n + 3) &^ 3 }
