package dumps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"
)

// tcore builds x86-64 ELF cores in the kernel's layout (ELF header, program headers with the
// PT_NOTE first, note data, padding to a page, PT_LOAD data in order) for tests.
type tcore struct {
	notes []byte
	segs  []tseg
}

type tseg struct {
	vaddr, memsz uint64
	flags        uint32
	size         uint64                    // file size
	data         []byte                    // contents, or
	fill         func(p []byte, off int64) // generator: fill p with the bytes at segment offset off
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// note appends one note.
func (c *tcore) note(name string, typ uint32, desc []byte) {
	n := []byte(name + "\x00")
	c.notes = binary.LittleEndian.AppendUint32(c.notes, uint32(len(n)))
	c.notes = binary.LittleEndian.AppendUint32(c.notes, uint32(len(desc)))
	c.notes = binary.LittleEndian.AppendUint32(c.notes, typ)
	c.notes = append(c.notes, n...)
	c.notes = append(c.notes, make([]byte, align4(uint64(len(n)))-uint64(len(n)))...)
	c.notes = append(c.notes, desc...)
	c.notes = append(c.notes, make([]byte, align4(uint64(len(desc)))-uint64(len(desc)))...)
}

func prstatus(tid, sig int, regs [27]uint64) []byte {
	d := make([]byte, prstatusSize)
	binary.LittleEndian.PutUint32(d[0:], uint32(sig))
	binary.LittleEndian.PutUint16(d[12:], uint16(sig))
	binary.LittleEndian.PutUint32(d[32:], uint32(tid))
	for i, r := range regs {
		binary.LittleEndian.PutUint64(d[prRegOff+8*i:], r)
	}
	return d
}

func prpsinfo(pid int, comm, args string) []byte {
	d := make([]byte, prpsinfoSize)
	binary.LittleEndian.PutUint32(d[24:], uint32(pid))
	copy(d[40:56], comm)
	copy(d[56:], args)
	return d
}

func fileNote(ms []Mapping) []byte {
	d := le64(uint64(len(ms)))
	d = append(d, le64(pageSize)...)
	for _, m := range ms {
		d = append(d, le64(m.Start)...)
		d = append(d, le64(m.End)...)
		d = append(d, le64(m.Offset/pageSize)...)
	}
	for _, m := range ms {
		d = append(d, m.Path...)
		d = append(d, 0)
	}
	return d
}

func (c *tcore) add(s tseg) {
	if s.data != nil {
		s.size = uint64(len(s.data))
	}
	if s.memsz == 0 {
		s.memsz = s.size
	}
	c.segs = append(c.segs, s)
}

func (c *tcore) headers() []byte {
	phnum := 1 + len(c.segs)
	b := make([]byte, ehdrSize+phdrSize*phnum)
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], etCore)
	le.PutUint16(b[18:], emX86_64)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], ehdrSize)
	le.PutUint16(b[52:], ehdrSize)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], uint16(phnum))
	ph := func(i int, typ, flags uint32, off, vaddr, filesz, memsz, align uint64) {
		p := b[ehdrSize+phdrSize*i:]
		le.PutUint32(p, typ)
		le.PutUint32(p[4:], flags)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], vaddr)
		le.PutUint64(p[32:], filesz)
		le.PutUint64(p[40:], memsz)
		le.PutUint64(p[48:], align)
	}
	noteOff := uint64(len(b))
	ph(0, ptNote, 0, noteOff, 0, uint64(len(c.notes)), 0, 0)
	off := (noteOff + uint64(len(c.notes)) + pageSize - 1) &^ (pageSize - 1)
	for i, s := range c.segs {
		ph(i+1, ptLoad, s.flags, off, s.vaddr, s.size, s.memsz, pageSize)
		off += s.size
	}
	return b
}

// WriteTo writes the core.
func (c *tcore) WriteTo(w io.Writer) (int64, error) {
	h := c.headers()
	var n int64
	write := func(p []byte) error {
		k, err := w.Write(p)
		n += int64(k)
		return err
	}
	if err := write(h); err != nil {
		return n, err
	}
	if err := write(c.notes); err != nil {
		return n, err
	}
	if pad := (pageSize - n%pageSize) % pageSize; pad > 0 {
		if err := write(make([]byte, pad)); err != nil {
			return n, err
		}
	}
	buf := make([]byte, 1<<20)
	for _, s := range c.segs {
		if s.data != nil {
			if err := write(s.data); err != nil {
				return n, err
			}
			continue
		}
		for off := uint64(0); off < s.size; {
			k := min(uint64(len(buf)), s.size-off)
			if s.fill != nil {
				s.fill(buf[:k], int64(off))
			} else {
				clear(buf[:k])
			}
			if err := write(buf[:k]); err != nil {
				return n, err
			}
			off += k
		}
	}
	return n, nil
}

func (c *tcore) bytes() []byte {
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// kernelLayout rewrites a core written by gdb's gcore (notes after the loads, section headers) in
// the layout the kernel writes, with the same notes and segment contents.
func kernelLayout(t testing.TB, path string) []byte {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var c tcore
	var files []Mapping
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, fileMappings(t, b)...)
		}
	}
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_NOTE:
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			c.notes = append(c.notes, b...)
		case elf.PT_LOAD:
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			if uint64(len(b)) != p.Filesz {
				t.Fatalf("segment %#x: read %d of %d bytes", p.Vaddr, len(b), p.Filesz)
			}
			// Like the kernel with the default coredump_filter, dump file-backed memory that was
			// never written only as its ELF header page.
			if p.Flags&elf.PF_W == 0 && slices.ContainsFunc(files, func(m Mapping) bool { return m.Start <= p.Vaddr && p.Vaddr < m.End }) {
				if bytes.HasPrefix(b, []byte("\x7fELF")) {
					b = b[:pageSize]
				} else {
					b = b[:0]
				}
			}
			c.add(tseg{vaddr: p.Vaddr, memsz: p.Memsz, flags: uint32(p.Flags), data: b})
		}
	}
	return c.bytes()
}

func writeTemp(t testing.TB, b []byte) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "core-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

var _ = fmt.Sprintf

// fileMappings returns the NT_FILE mappings in raw note data.
func fileMappings(t testing.TB, notes []byte) []Mapping {
	t.Helper()
	for len(notes) >= 12 {
		nn, dn, typ := binary.LittleEndian.Uint32(notes), binary.LittleEndian.Uint32(notes[4:]), binary.LittleEndian.Uint32(notes[8:])
		d := notes[12+align4(uint64(nn)):]
		if typ == ntFile {
			ms, err := parseFileNote(d[:dn])
			if err != nil {
				t.Fatal(err)
			}
			return ms
		}
		notes = d[align4(uint64(dn)):]
	}
	return nil
}
