package dumps

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Note types (elf.h, linux/elf.h). Notes are handled by type whatever their owner name, because
// gdb's BFD reads a note of an unknown owner by its type too.
const (
	ntPRStatus  = 1
	ntFPRegset  = 2
	ntPRPSInfo  = 3
	ntAuxv      = 6
	ntX86XState = 0x202
	ntPRXFPReg  = 0x46e62b7f
	ntSigInfo   = 0x53494749
	ntFile      = 0x46494c45

	prstatusSize = 336 // struct elf_prstatus on x86-64
	prpsinfoSize = 136 // struct elf_prpsinfo on x86-64
	siginfoSize  = 128
	prRegOff     = 112 // offset of pr_reg in elf_prstatus
	maxNameSize  = 256
	maxFileNote  = 16 << 20 // the kernel's NT_FILE limit (core_file_note_size_limit max)
	maxAuxv      = 64 << 10
	maxMappings  = 1 << 17 // twice the most vm.max_map_count allows by default
	atSysinfoEH  = 33      // AT_SYSINFO_EHDR: the vdso's address
)

// x86-64 user_regs_struct, in pr_reg order.
var regNames = [27]string{"r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
	"rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs"}

// What NT_PRSTATUS keeps of each register: all of it, its low 16 bits (segment selectors), its low
// 32 bits (eflags) or nothing.
const (
	regZero = iota
	regKeep
	regLow16
	regLow32
)

var regRule = [27]int{
	regZero, regZero, regZero, regZero, // r15 r14 r13 r12
	regKeep, regZero, regZero, regZero, // rbp rbx r11 r10
	regZero, regZero, regZero, regZero, // r9 r8 rax rcx
	regZero, regZero, regZero, regKeep, // rdx rsi rdi orig_rax
	regKeep, regLow16, regLow32, regKeep, // rip cs eflags rsp
	regLow16, regKeep, regKeep, regLow16, // ss fs_base gs_base ds
	regLow16, regLow16, regLow16, // es fs gs
}

// KeptRegisters lists the NT_PRSTATUS registers Redact keeps (segment selectors as 16 bits,
// eflags as 32); every other general register is zeroed.
func KeptRegisters() []string {
	var out []string
	for i, r := range regRule {
		if r != regZero {
			out = append(out, regNames[i])
		}
	}
	return out
}

// Info is what the headers and notes of a core say.
type Info struct {
	PID      int       `json:"pid"`    // NT_PRPSINFO pr_pid, else the first thread's
	Signal   int       `json:"signal"` // NT_SIGINFO si_signo, else the first thread's pr_cursig
	Comm     string    `json:"comm"`   // NT_PRPSINFO pr_fname
	Args     string    `json:"args"`   // NT_PRPSINFO pr_psargs (the first 80 bytes of the command line)
	Threads  []Thread  `json:"threads"`
	Mappings []Mapping `json:"mappings"` // NT_FILE
	Segments []Segment `json:"segments"` // every program header
	VDSO     uint64    `json:"vdso"`     // NT_AUXV AT_SYSINFO_EHDR
}

// Thread is one NT_PRSTATUS (the registers as they were before redaction).
type Thread struct {
	TID    int    `json:"tid"`
	Signal int    `json:"signal"` // pr_cursig
	RIP    uint64 `json:"rip"`
	RSP    uint64 `json:"rsp"`
	RBP    uint64 `json:"rbp"`
}

// Mapping is one NT_FILE entry: [Start, End) maps Path from byte Offset.
type Mapping struct {
	Start  uint64 `json:"start"`
	End    uint64 `json:"end"`
	Offset uint64 `json:"offset"`
	Path   string `json:"path"`
}

// Anonymous reports whether the mapping is memory with no file behind it on disk: an unlinked
// file (" (deleted)"), a memfd, shared anonymous memory (/dev/zero, SysV shm, anonymous huge
// pages) or POSIX shared memory (/dev/shm). Redact treats such mappings like anonymous memory.
func (m Mapping) Anonymous() bool {
	p := m.Path
	return p == "" || strings.HasSuffix(p, " (deleted)") || strings.HasPrefix(p, "/memfd:") ||
		strings.HasPrefix(p, "/dev/zero") || strings.HasPrefix(p, "/SYSV") ||
		strings.HasPrefix(p, "/anon_hugepage") || strings.HasPrefix(p, "/dev/shm/")
}

// sink receives the output bytes in order: data is kept (and scanned), zero(n) is n bytes the
// redactor zeroed.
type sink interface {
	data(p []byte) error
	zero(n int64) error
}

type noteState struct {
	info      *Info
	sawFile   bool
	regZeroed int64
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// notes reads one PT_NOTE segment, scrubs register notes and records what it learns.
func (in *input) notes(seg Segment, st *noteState, out sink) error {
	le := binary.LittleEndian
	left := seg.FileSize
	for left > 0 {
		at := in.off
		if left < 12 {
			return fmt.Errorf("note at offset %#x: %d bytes left in its segment, too few for a note header", at, left)
		}
		hdr, err := in.full(12, "a note header")
		if err != nil {
			return err
		}
		namesz, descsz, typ := uint64(le.Uint32(hdr)), uint64(le.Uint32(hdr[4:])), le.Uint32(hdr[8:])
		if namesz > maxNameSize {
			return fmt.Errorf("note at offset %#x: name size %d: absurd", at, namesz)
		}
		total := 12 + align4(namesz) + align4(descsz)
		if total > left {
			return fmt.Errorf("note at offset %#x (type %#x, %d bytes) runs past its PT_NOTE segment (%d bytes left)", at, typ, total, left)
		}
		left -= total
		if err := out.data(hdr); err != nil {
			return err
		}
		name, err := in.full(int(align4(namesz)), "a note name")
		if err != nil {
			return err
		}
		if err := out.data(name); err != nil {
			return err
		}
		pad := int64(align4(descsz) - descsz)
		switch typ {
		case ntX86XState:
			if err := in.xstate(int64(descsz), st, out); err != nil {
				return err
			}
		case ntFPRegset, ntPRXFPReg:
			// x87/SSE state: XMM registers hold key schedules and key bytes.
			if err := in.skip(int64(descsz), "register state"); err != nil {
				return err
			}
			st.regZeroed += int64(descsz)
			if err := out.zero(int64(descsz)); err != nil {
				return err
			}
		case ntPRStatus, ntPRPSInfo, ntSigInfo, ntFile, ntAuxv:
			desc, err := in.noteDesc(typ, descsz, at)
			if err != nil {
				return err
			}
			if err := st.parse(typ, desc, at); err != nil {
				return err
			}
			if err := out.data(desc); err != nil {
				return err
			}
		default:
			if err := in.stream(int64(descsz), "a note", out.data); err != nil {
				return err
			}
		}
		if err := in.stream(pad, "note padding", out.data); err != nil {
			return err
		}
	}
	return nil
}

func (in *input) noteDesc(typ uint32, size uint64, at int64) ([]byte, error) {
	want := map[uint32]uint64{ntPRStatus: prstatusSize, ntPRPSInfo: prpsinfoSize, ntSigInfo: siginfoSize}
	if w, ok := want[typ]; ok && size != w {
		return nil, fmt.Errorf("note at offset %#x: type %#x has %d bytes, want %d on x86-64", at, typ, size, w)
	}
	if typ == ntFile && size > maxFileNote {
		return nil, fmt.Errorf("note at offset %#x: NT_FILE of %d bytes is over the kernel's %d-byte limit", at, size, maxFileNote)
	}
	if typ == ntAuxv && size > maxAuxv {
		return nil, fmt.Errorf("note at offset %#x: NT_AUXV of %d bytes: absurd", at, size)
	}
	return in.full(int(size), "a note")
}

// parse records a note's content and scrubs NT_PRSTATUS registers in place.
func (st *noteState) parse(typ uint32, d []byte, at int64) error {
	le := binary.LittleEndian
	info := st.info
	switch typ {
	case ntPRStatus:
		regs := d[prRegOff:]
		reg := func(i int) uint64 { return le.Uint64(regs[8*i:]) }
		th := Thread{
			TID:    int(int32(le.Uint32(d[32:]))),
			Signal: int(int16(le.Uint16(d[12:]))),
			RIP:    reg(16), RSP: reg(19), RBP: reg(4),
		}
		info.Threads = append(info.Threads, th)
		for i, rule := range regRule {
			v := reg(i)
			switch rule {
			case regZero:
				v = 0
				st.regZeroed += 8
			case regLow16:
				v &= 0xffff
			case regLow32:
				v &= 0xffffffff
			}
			le.PutUint64(regs[8*i:], v)
		}
	case ntPRPSInfo:
		info.PID = int(int32(le.Uint32(d[24:])))
		info.Comm = cstring(d[40:56])
		info.Args = cstring(d[56:136])
	case ntSigInfo:
		info.Signal = int(int32(le.Uint32(d)))
	case ntAuxv:
		for i := 0; i+16 <= len(d); i += 16 {
			if le.Uint64(d[i:]) == atSysinfoEH {
				info.VDSO = le.Uint64(d[i+8:])
			}
		}
	case ntFile:
		if st.sawFile {
			return fmt.Errorf("note at offset %#x: a second NT_FILE note", at)
		}
		st.sawFile = true
		m, err := parseFileNote(d)
		if err != nil {
			return fmt.Errorf("note at offset %#x: %w", at, err)
		}
		info.Mappings = m
	}
	return nil
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// parseFileNote decodes NT_FILE: count, page size, count × (start, end, page offset), then count
// NUL-terminated paths.
func parseFileNote(d []byte) ([]Mapping, error) {
	le := binary.LittleEndian
	if len(d) < 16 {
		return nil, fmt.Errorf("NT_FILE of %d bytes is too short", len(d))
	}
	count, psz := le.Uint64(d), le.Uint64(d[8:])
	if count > uint64(len(d)-16)/24 {
		return nil, fmt.Errorf("NT_FILE claims %d mappings in %d bytes", count, len(d))
	}
	if count > maxMappings {
		return nil, fmt.Errorf("NT_FILE lists %d mappings, more than %d: absurd", count, maxMappings)
	}
	if psz == 0 || psz&(psz-1) != 0 || psz > 1<<30 {
		return nil, fmt.Errorf("NT_FILE page size %d is not a power of two up to 1 GiB", psz)
	}
	ms := make([]Mapping, count)
	names := d[16+24*count:]
	for i := range ms {
		e := d[16+24*i:]
		m := Mapping{Start: le.Uint64(e), End: le.Uint64(e[8:])}
		pg := le.Uint64(e[16:])
		if m.End < m.Start {
			return nil, fmt.Errorf("NT_FILE mapping %d ends (%#x) before it starts (%#x)", i, m.End, m.Start)
		}
		if pg > (1<<64-1)/psz {
			return nil, fmt.Errorf("NT_FILE mapping %d: page offset %#x: absurd", i, pg)
		}
		m.Offset = pg * psz
		j := bytes.IndexByte(names, 0)
		if j < 0 {
			return nil, fmt.Errorf("NT_FILE has %d paths for %d mappings", i, count)
		}
		m.Path = string(names[:j])
		names = names[j+1:]
		ms[i] = m
	}
	return ms, nil
}

// XSAVE layout: the kernel stores the XCR0 feature mask (which state components exist, hence
// the layout and size of the rest) in the first 8 software-reserved bytes of the legacy FXSAVE
// area (USER_XSTATE_XCR0_WORD); gdb needs it to read the note.
const (
	xsaveXCR0Off = 464
	xsaveXCR0End = 472
)

// plausibleXCR0 accepts a feature mask with x87 and SSE set and no bit above the defined ones.
func plausibleXCR0(v uint64) bool { return v&3 == 3 && v < 1<<32 }

// xstate zeroes an NT_X86_XSTATE descriptor except the XCR0 word: every register (x87, XMM, YMM,
// ZMM, AMX tiles, ...) and the XSAVE header (so every component reads as in its initial state).
func (in *input) xstate(size int64, st *noteState, out sink) error {
	if size < xsaveXCR0End {
		if err := in.skip(size, "register state"); err != nil {
			return err
		}
		st.regZeroed += size
		return out.zero(size)
	}
	if err := in.skip(xsaveXCR0Off, "register state"); err != nil {
		return err
	}
	w, err := in.full(xsaveXCR0End-xsaveXCR0Off, "register state")
	if err != nil {
		return err
	}
	zeroed := size
	if err := out.zero(xsaveXCR0Off); err != nil {
		return err
	}
	if plausibleXCR0(binary.LittleEndian.Uint64(w)) {
		zeroed -= xsaveXCR0End - xsaveXCR0Off
		if err := out.data(w); err != nil {
			return err
		}
	} else if err := out.zero(xsaveXCR0End - xsaveXCR0Off); err != nil {
		return err
	}
	if err := in.skip(size-xsaveXCR0End, "register state"); err != nil {
		return err
	}
	st.regZeroed += zeroed
	return out.zero(size - xsaveXCR0End)
}
