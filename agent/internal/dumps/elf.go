package dumps

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// ELF constants used by x86-64 Linux core files (elf.h); written out so the parser does not depend
// on debug/elf's lenient reader.
const (
	ehdrSize = 64
	phdrSize = 56

	etCore    = 4
	emX86_64  = 62
	pnXNum    = 0xffff
	ptNull    = 0
	ptLoad    = 1
	ptNote    = 4
	pfW       = 2
	pageSize  = 4096
	maxPhnum  = pnXNum - 1
	maxOffset = 1 << 56 // no x86-64 address space (57-bit with LA57) dumps more than this

	// MaxNoteBytes bounds the total size of PT_NOTE data. The kernel's largest note, NT_FILE, is at
	// most 16 MiB (kernel.core_file_note_size_limit); per-thread notes take about 4–13 KiB per thread.
	MaxNoteBytes = 64 << 20
	// MaxTrailing bounds bytes after the last segment (a kernel core has none on x86-64).
	MaxTrailing = 1 << 20
)

// Segment is one program header of the core.
type Segment struct {
	Type     uint32 `json:"type"` // 1 PT_LOAD, 4 PT_NOTE
	Flags    uint32 `json:"flags"`
	Offset   uint64 `json:"offset"`
	Vaddr    uint64 `json:"vaddr"`
	FileSize uint64 `json:"file_size"`
	MemSize  uint64 `json:"mem_size"`
}

// Writable reports PF_W.
func (s Segment) Writable() bool { return s.Flags&pfW != 0 }

func (s Segment) end() uint64 { return s.Offset + s.FileSize }

// header is the parsed, validated ELF header and program header table.
type header struct {
	phoff    uint64
	phEnd    uint64 // end of the program header table
	segs     []Segment
	notes    []int // indexes into segs of PT_NOTE with data, in file order
	loads    []int // indexes of PT_LOAD with data, in file order
	dataEnd  uint64
	rawFirst []byte // ELF header and program header bytes as read
}

func parseEhdr(b []byte) (phoff uint64, phnum int, err error) {
	if len(b) < ehdrSize {
		return 0, 0, fmt.Errorf("ELF header truncated: %d of %d bytes", len(b), ehdrSize)
	}
	if string(b[:4]) != "\x7fELF" {
		return 0, 0, fmt.Errorf("not an ELF file (magic % x)", b[:4])
	}
	if b[4] != 2 {
		return 0, 0, fmt.Errorf("ELF class %d is not ELFCLASS64: only x86-64 cores are supported", b[4])
	}
	if b[5] != 1 {
		return 0, 0, fmt.Errorf("ELF data encoding %d is not little-endian: only x86-64 cores are supported", b[5])
	}
	if b[6] != 1 {
		return 0, 0, fmt.Errorf("ELF ident version %d, want 1", b[6])
	}
	le := binary.LittleEndian
	if t := le.Uint16(b[16:]); t != etCore {
		return 0, 0, fmt.Errorf("ELF type %d is not ET_CORE (4): not a core dump", t)
	}
	if m := le.Uint16(b[18:]); m != emX86_64 {
		return 0, 0, fmt.Errorf("ELF machine %d is not x86-64 (62): only x86-64 cores are supported", m)
	}
	if v := le.Uint32(b[20:]); v != 1 {
		return 0, 0, fmt.Errorf("ELF version %d, want 1", v)
	}
	phoff = le.Uint64(b[32:])
	if s := le.Uint16(b[52:]); s != ehdrSize {
		return 0, 0, fmt.Errorf("ELF header size %d, want %d", s, ehdrSize)
	}
	if s := le.Uint16(b[54:]); s != phdrSize {
		return 0, 0, fmt.Errorf("program header entry size %d, want %d", s, phdrSize)
	}
	if shoff, shnum := le.Uint64(b[40:]), le.Uint16(b[60:]); shoff != 0 || shnum != 0 {
		return 0, 0, fmt.Errorf("section headers (offset %d, %d entries): a kernel core has none", shoff, shnum)
	}
	phnum = int(le.Uint16(b[56:]))
	switch {
	case phnum == pnXNum:
		return 0, 0, fmt.Errorf("more than %d program headers (PN_XNUM) is not supported", maxPhnum)
	case phnum == 0:
		return 0, 0, fmt.Errorf("core has no program headers")
	case phoff < ehdrSize:
		return 0, 0, fmt.Errorf("program headers at offset %d overlap the ELF header", phoff)
	case phoff > 1<<20:
		return 0, 0, fmt.Errorf("program headers at offset %d: absurd (a kernel core has them at 64)", phoff)
	}
	return phoff, phnum, nil
}

// parsePhdrs validates the program headers: only PT_LOAD and PT_NOTE carry data, data regions
// follow the program header table in increasing, non-overlapping file order, all notes come before
// all loads (they must be read first to classify the loads), and PT_LOAD memory ranges do not
// overlap.
func parsePhdrs(h *header, b []byte) error {
	le := binary.LittleEndian
	n := len(b) / phdrSize
	h.segs = make([]Segment, n)
	prevEnd := h.phEnd
	var noteBytes uint64
	for i := range n {
		p := b[i*phdrSize:]
		s := Segment{
			Type:     le.Uint32(p[0:]),
			Flags:    le.Uint32(p[4:]),
			Offset:   le.Uint64(p[8:]),
			Vaddr:    le.Uint64(p[16:]),
			FileSize: le.Uint64(p[32:]),
			MemSize:  le.Uint64(p[40:]),
		}
		h.segs[i] = s
		if s.Type == ptLoad {
			if s.FileSize > s.MemSize {
				return fmt.Errorf("program header %d: PT_LOAD file size %#x exceeds memory size %#x", i, s.FileSize, s.MemSize)
			}
			if s.Vaddr+s.MemSize < s.Vaddr {
				return fmt.Errorf("program header %d: PT_LOAD at %#x size %#x wraps the address space", i, s.Vaddr, s.MemSize)
			}
		}
		if s.FileSize == 0 {
			continue // no data: the kernel writes these for mappings it does not dump
		}
		switch s.Type {
		case ptLoad, ptNote:
		default:
			return fmt.Errorf("program header %d: type %#x with %d bytes of data: a kernel core has only PT_NOTE and PT_LOAD", i, s.Type, s.FileSize)
		}
		if s.Offset > maxOffset || s.FileSize > maxOffset || s.end() > maxOffset {
			return fmt.Errorf("program header %d: offset %#x size %#x: absurd", i, s.Offset, s.FileSize)
		}
		if s.Offset < prevEnd {
			return fmt.Errorf("program header %d: data at %#x overlaps or precedes the previous region ending at %#x (segments must be in file order)", i, s.Offset, prevEnd)
		}
		prevEnd = s.end()
		if s.Type == ptNote {
			if len(h.loads) > 0 {
				return fmt.Errorf("program header %d: PT_NOTE data after PT_LOAD data: not the kernel's layout (notes must come first to be read in one pass; gdb's gcore writes them last)", i)
			}
			noteBytes += s.FileSize
			if noteBytes > MaxNoteBytes {
				return fmt.Errorf("PT_NOTE data totals more than %d bytes: absurd", MaxNoteBytes)
			}
			h.notes = append(h.notes, i)
		} else {
			h.loads = append(h.loads, i)
		}
	}
	if len(h.notes) == 0 {
		return fmt.Errorf("core has no PT_NOTE data (no threads)")
	}
	h.dataEnd = prevEnd
	// Memory ranges of PT_LOAD must not overlap.
	type rng struct{ a, b uint64 }
	var rs []rng
	for _, s := range h.segs {
		if s.Type == ptLoad && s.MemSize > 0 {
			rs = append(rs, rng{s.Vaddr, s.Vaddr + s.MemSize})
		}
	}
	slices.SortFunc(rs, func(x, y rng) int {
		switch {
		case x.a < y.a:
			return -1
		case x.a > y.a:
			return 1
		}
		return 0
	})
	for i := 1; i < len(rs); i++ {
		if rs[i].a < rs[i-1].b {
			return fmt.Errorf("PT_LOAD memory ranges %#x-%#x and %#x-%#x overlap", rs[i-1].a, rs[i-1].b, rs[i].a, rs[i].b)
		}
	}
	return nil
}
