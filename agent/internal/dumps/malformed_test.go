package dumps

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

// small returns a minimal valid core: one thread, NT_FILE, a file-backed and an anonymous segment.
func small() *tcore {
	var c tcore
	c.note("CORE", ntPRStatus, prstatus(7, 6, synRegs(100)))
	c.note("CORE", ntFile, fileNote([]Mapping{{Start: synText, End: synText + pageSize, Path: "/bin/x"}}))
	c.add(tseg{vaddr: synText, flags: 5, data: bytes.Repeat([]byte{'T'}, pageSize)})
	c.add(tseg{vaddr: synHeap, flags: 6, data: bytes.Repeat([]byte{'H'}, 2*pageSize)})
	return &c
}

// Offsets into small()'s bytes.
const (
	phNote  = ehdrSize              // program header of the PT_NOTE
	phText  = ehdrSize + phdrSize   // of the text PT_LOAD
	phHeap  = ehdrSize + 2*phdrSize // of the heap PT_LOAD
	noteOff = ehdrSize + 3*phdrSize // first note
	pOffset = 8                     // p_offset within a program header
	pVaddr  = 16                    // p_vaddr
	pFilesz = 32                    // p_filesz
	pMemsz  = 40                    // p_memsz
	ntDesc  = noteOff + 12 + 8      // the NT_PRSTATUS descriptor
	ntFileH = ntDesc + prstatusSize // the NT_FILE note header
	ntFileD = ntFileH + 12 + 8      // its descriptor
	ntSize  = noteOff + 4           // descsz of the first note
	ntType  = noteOff + 8           // type of the first note
	ehType  = 16                    // e_type
	ehPhnum = 56                    // e_phnum
	ehPhent = 54                    // e_phentsize
	ehMach  = 18                    // e_machine
	ehPhoff = 32                    // e_phoff
)

func TestRedactRefusesMalformed(t *testing.T) {
	le := binary.LittleEndian
	base := small().bytes()
	u16 := func(off int, v uint16) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint16(b[off:], v); return b }
	}
	u32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint32(b[off:], v); return b }
	}
	u64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint64(b[off:], v); return b }
	}
	get := func(off int) uint64 { return le.Uint64(base[off:]) }
	cases := []struct {
		name   string
		mutate func([]byte) []byte
		want   string
	}{
		{"empty", func([]byte) []byte { return nil }, "truncated: the input ends at offset 0, inside the ELF header"},
		{"truncated ELF header", func(b []byte) []byte { return b[:40] }, "inside the ELF header"},
		{"not ELF", func(b []byte) []byte { copy(b, "\x7fXYZ"); return b }, "not an ELF file"},
		{"32-bit", func(b []byte) []byte { b[4] = 1; return b }, "not ELFCLASS64"},
		{"big-endian", func(b []byte) []byte { b[5] = 2; return b }, "not little-endian"},
		{"executable", u16(ehType, 2), "not ET_CORE"},
		{"arm64", u16(ehMach, 183), "not x86-64"},
		{"phentsize", u16(ehPhent, 32), "program header entry size 32"},
		{"no program headers", u16(ehPhnum, 0), "no program headers"},
		{"section headers", u16(60, 3), "section headers"},
		{"PN_XNUM", u16(ehPhnum, 0xffff), "PN_XNUM"},
		{"phoff inside the header", u64(ehPhoff, 8), "overlap the ELF header"},
		{"phoff absurd", u64(ehPhoff, 1<<40), "absurd"},
		{"truncated program headers", func(b []byte) []byte { return b[:phHeap+10] }, "inside the program headers"},
		{"PT_LOAD file size over memory size", u64(phHeap+pMemsz, pageSize), "exceeds memory size"},
		{"PT_LOAD wraps the address space", u64(phHeap+pMemsz, ^uint64(0)-synHeap+2), "wraps the address space"},
		{"segments overlap in the file", u64(phHeap+pOffset, get(phText+pOffset)+100), "overlaps or precedes"},
		{"segments out of order", func(b []byte) []byte {
			t1 := append([]byte(nil), b[phText:phText+phdrSize]...)
			copy(b[phText:], b[phHeap:phHeap+phdrSize])
			copy(b[phHeap:], t1)
			return b
		}, "overlaps or precedes"},
		{"segment overlapping the program headers", u64(phNote+pOffset, 100), "overlaps or precedes"},
		{"note after the loads", func(b []byte) []byte {
			n := append([]byte(nil), b[phNote:phNote+phdrSize]...)
			copy(b[phNote:], b[phText:phText+2*phdrSize])
			copy(b[phHeap:], n)
			le.PutUint64(b[phHeap+pOffset:], uint64(len(b)))
			return append(b, b[noteOff:noteOff+int(get(phNote+pFilesz))]...)
		}, "PT_NOTE data after PT_LOAD data"},
		{"no notes", u32(phNote, 0x6474e550), "only PT_NOTE and PT_LOAD"},
		{"notes too big", u64(phNote+pFilesz, MaxNoteBytes+1), "absurd"},
		{"memory ranges overlap", u64(phHeap+pVaddr, synText+100), "overlap"},
		{"absurd file offset", u64(phHeap+pOffset, 1<<60), "absurd"},
		{"note runs past its segment", u32(ntSize, 1<<20), "runs past its PT_NOTE segment"},
		{"note header cut by its segment", func(b []byte) []byte {
			le.PutUint64(b[phNote+pFilesz:], get(phNote+pFilesz)+8) // 8 bytes of padding: not a note
			return b
		}, "too few for a note header"},
		{"note name absurd", u32(noteOff, 5000), "name size 5000"},
		{"NT_PRSTATUS size", func(b []byte) []byte {
			le.PutUint32(b[ntSize:], prstatusSize-8)
			le.PutUint32(b[ntFileH:], 8) // keep the next note aligned: make the leftover a note header
			return b
		}, "has 328 bytes, want 336"},
		{"NT_FILE count absurd", u64(ntFileD, 1<<40), "NT_FILE claims"},
		{"NT_FILE page size", u64(ntFileD+8, 3), "page size 3"},
		{"NT_FILE missing path", func(b []byte) []byte { b[ntFileD+16+24+len("/bin/x")] = 'x'; return b }, "0 paths for 1 mappings"},
		{"NT_FILE mapping backwards", u64(ntFileD+16+8, synText-1), "ends"},
		{"second NT_FILE", func([]byte) []byte {
			c := small()
			c.note("CORE", ntFile, fileNote(nil))
			return c.bytes()
		}, "a second NT_FILE"},
		{"truncated in a segment", func(b []byte) []byte { return b[:len(b)-100] }, "inside the PT_LOAD segment at 0x1000000"},
		{"truncated in the notes", func(b []byte) []byte { return b[:ntFileD+3] }, "truncated"},
		{"trailing data", func(b []byte) []byte { return append(b, make([]byte, MaxTrailing+1)...) }, "after the last segment"},
	}
	det := testDetector(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := c.mutate(append([]byte(nil), base...))
			var out bytes.Buffer
			_, err := Redact(context.Background(), bytes.NewReader(in), &out, Options{Detector: det})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Redact error %v, want one containing %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "discard the output") {
				t.Errorf("error %q does not tell the caller to discard the output", err)
			}
			if _, err := Inspect(bytes.NewReader(in)); err == nil && !strings.Contains(c.name, "segment") && !strings.Contains(c.name, "trailing") {
				t.Errorf("Inspect accepted it")
			}
		})
	}
	// The unmutated core is accepted, so each case fails for its own reason.
	if _, err := Redact(context.Background(), bytes.NewReader(base), io.Discard, Options{Detector: det}); err != nil {
		t.Fatalf("base core refused: %v", err)
	}
}

func TestRedactNeedsDetector(t *testing.T) {
	if _, err := Redact(context.Background(), bytes.NewReader(small().bytes()), io.Discard, Options{}); err == nil {
		t.Fatal("Redact without a detector succeeded")
	}
}

func TestRedactCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Redact(ctx, bytes.NewReader(small().bytes()), io.Discard, Options{Detector: testDetector(t)})
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("Redact with a cancelled context: %v", err)
	}
}

// Peek returns the core's info and a reader that replays every byte.
func TestPeekReplays(t *testing.T) {
	in := synthetic(t)
	info, r, err := Peek(io.MultiReader(bytes.NewReader(in))) // a plain io.Reader, like a pipe
	if err != nil {
		t.Fatal(err)
	}
	if info.PID != 100 || len(info.Threads) != 2 || len(info.Mappings) != 4 || info.Mappings[2].Path != "/memfd:keys (deleted)" || !info.Mappings[2].Anonymous() {
		t.Errorf("info: %+v", info)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, in) {
		t.Fatalf("replayed %d bytes (%v), want the %d input bytes unchanged", len(got), err, len(in))
	}
	// An unparseable dump is replayed too.
	bad := append([]byte("not a core"), in...)
	if _, r, err := Peek(bytes.NewReader(bad)); err == nil {
		t.Fatal("Peek accepted a non-core")
	} else if got, _ := io.ReadAll(r); !bytes.Equal(got, bad) {
		t.Fatal("Peek did not replay an unparseable input")
	}
}
