package dumps

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"github.com/keyguard/keyguard/agent/internal/detect"
)

// DefaultStackLimit is how much of each thread's stack above its stack pointer KeepStacks keeps
// when Options.StackLimit is 0.
const DefaultStackLimit = 1 << 20

// redZone is the x86-64 ABI red zone below the stack pointer, kept with the live stack.
const redZone = 128

// Options configures Redact.
type Options struct {
	// Detector finds key material in everything Redact keeps. Required.
	Detector *detect.Detector
	// KeepStacks keeps each thread's live stack — from 128 bytes below its RSP (the red zone) up to
	// StackLimit bytes above it, within the segment holding RSP — so that gdb can unwind. The rest
	// of a stack segment is zeroed like any anonymous memory. The kept bytes are still scanned by
	// the detector, but raw key material of keys not configured in the detector can remain there.
	KeepStacks bool
	// StackLimit bounds the stack kept above each RSP; 0 means DefaultStackLimit.
	StackLimit uint64
	// Sparse leaves zero runs of 64 KiB or more as holes when out is an *os.File, which must be
	// a regular, empty file opened for writing without O_APPEND (Redact refuses others). The bytes
	// read back are the same; the file takes only the disk its kept bytes need.
	Sparse bool
}

// Zeroed counts bytes the redactor zeroed, by reason.
type Zeroed struct {
	Anonymous int64 `json:"anonymous"` // contents of anonymous mappings (heap, mmap, ...)
	Stack     int64 `json:"stack"`     // stack segments (all, or below the red zone with KeepStacks)
	Registers int64 `json:"registers"` // general registers and FPU/SIMD state in the notes
	Matches   int64 `json:"matches"`   // detector matches in what was kept
	Other     int64 `json:"other"`     // padding and gaps not covered by any header or segment
}

// Summary describes one redaction.
type Summary struct {
	Info     Info           `json:"info"`
	Zeroed   Zeroed         `json:"zeroed"`
	Findings map[string]int `json:"findings"` // detector findings scrubbed, by detect kind
	Threads  int            `json:"threads"`
	Segments int            `json:"segments"` // PT_LOAD program headers
	Bytes    int64          `json:"bytes"`    // bytes written
}

// ByKind returns the zeroed byte counts keyed by reason, for event reports.
func (z Zeroed) ByKind() map[string]uint64 {
	return map[string]uint64{"anonymous": uint64(z.Anonymous), "stack": uint64(z.Stack),
		"registers": uint64(z.Registers), "matches": uint64(z.Matches), "other": uint64(z.Other)}
}

// Redact reads an x86-64 Linux ELF core from in, once and front to back, and writes to out a core
// of the same layout with secrets removed (see the package documentation for the exact rules).
//
// Output is written progressively, as soon as the detector has settled the bytes. On error, out
// holds a partial, possibly unredacted-looking prefix that must be discarded: write to a
// temporary file and pass it on only when Redact and then Verify succeed.
func Redact(ctx context.Context, in io.Reader, out io.Writer, opts Options) (Summary, error) {
	sum := Summary{Findings: map[string]int{}}
	if opts.Detector == nil {
		return sum, errors.New("dumps: Options.Detector is required")
	}
	r := newInput(ctx, in)
	s := newScrubber(out, opts.Detector, &sum)
	if f, ok := out.(*os.File); ok && opts.Sparse {
		if err := checkSparse(f); err != nil {
			return sum, fmt.Errorf("redact core dump: %w", err)
		}
		s.q.sparse = f
	}
	err := redact(r, s, &sum, opts)
	sum.Bytes = s.q.flushed
	if err != nil {
		return sum, fmt.Errorf("redact core dump at input offset %d: %w (discard the output)", r.off, err)
	}
	return sum, nil
}

func redact(r *input, s *scrubber, sum *Summary, opts Options) error {
	h, err := readHead(r, s)
	if err != nil {
		return err
	}
	s.protectEnd = int64(h.phEnd)
	sum.Info.Segments = h.segs
	gap := func(to uint64, what string) error {
		n := int64(to) - r.off
		if n <= 0 {
			return nil
		}
		if err := r.skip(n, what); err != nil {
			return err
		}
		sum.Zeroed.Other += n
		return s.zero(n)
	}
	st := &noteState{info: &sum.Info}
	for _, i := range h.notes {
		seg := h.segs[i]
		if err := gap(seg.Offset, "padding before the notes"); err != nil {
			return err
		}
		if err := r.notes(seg, st, s); err != nil {
			return err
		}
	}
	sum.Zeroed.Registers = st.regZeroed
	sum.Threads = len(sum.Info.Threads)
	fillInfo(&sum.Info)
	for _, sg := range h.segs {
		if sg.Type == ptLoad {
			sum.Segments++
		}
	}
	p := newPlan(&sum.Info, opts)
	for _, i := range h.loads {
		seg := h.segs[i]
		if err := gap(seg.Offset, "padding before a segment"); err != nil {
			return err
		}
		what := fmt.Sprintf("the PT_LOAD segment at %#x", seg.Vaddr)
		for _, sp := range p.spans(seg) {
			if sp.keep {
				if err := r.stream(sp.n, what, s.data); err != nil {
					return err
				}
				continue
			}
			if err := r.skip(sp.n, what); err != nil {
				return err
			}
			if sp.stack {
				sum.Zeroed.Stack += sp.n
			} else {
				sum.Zeroed.Anonymous += sp.n
			}
			if err := s.zero(sp.n); err != nil {
				return err
			}
		}
	}
	n, err := r.rest(MaxTrailing)
	if err != nil {
		return err
	}
	sum.Zeroed.Other += n
	if err := s.zero(n); err != nil {
		return err
	}
	return s.finish()
}

// fillInfo fills PID and signal from the first thread when NT_PRPSINFO or NT_SIGINFO is missing.
func fillInfo(info *Info) {
	if len(info.Threads) == 0 {
		return
	}
	if info.PID == 0 {
		info.PID = info.Threads[0].TID
	}
	if info.Signal == 0 {
		info.Signal = info.Threads[0].Signal
	}
}

// scrubber is the redactor's output side: a held-back queue and the detector feeding it.
type scrubber struct {
	q          *outQueue
	f          *feeder
	off        int64
	protectEnd int64 // findings before this offset (ELF and program headers) are refused
	sum        *Summary
}

func newScrubber(out io.Writer, det *detect.Detector, sum *Summary) *scrubber {
	s := &scrubber{q: newOutQueue(out), sum: sum}
	s.f = newFeeder(det, s.found)
	return s
}

func (s *scrubber) found(fd detect.Finding, start, end int64) error {
	if start < s.protectEnd {
		return fmt.Errorf("key material (%s) detected in the ELF or program headers at offset %d: cannot scrub it and keep a valid core", fd.Kind, start)
	}
	n, err := s.q.scrub(start, end)
	if err != nil {
		return err
	}
	s.sum.Zeroed.Matches += n
	s.sum.Findings[fd.Kind]++
	return nil
}

func (s *scrubber) data(p []byte) error { return splitZeroPages(p, s.off, s.dataRun, s.zero) }

func (s *scrubber) dataRun(p []byte) error {
	s.q.addData(p)
	s.off += int64(len(p))
	if err := s.f.data(p); err != nil {
		return err
	}
	return s.q.flush(s.f.settled())
}

func (s *scrubber) zero(n int64) error {
	s.q.addZeros(n)
	s.off += n
	s.f.zero(n)
	return nil
}

func (s *scrubber) finish() error {
	if err := s.f.close(); err != nil {
		return err
	}
	if err := s.q.flush(s.q.end); err != nil {
		return err
	}
	return s.q.finishSparse()
}

// ival is a half-open address interval.
type ival struct{ a, b uint64 }

func mergeIvals(v []ival) []ival {
	v = slices.DeleteFunc(v, func(x ival) bool { return x.b <= x.a })
	slices.SortFunc(v, func(x, y ival) int {
		switch {
		case x.a < y.a:
			return -1
		case x.a > y.a:
			return 1
		}
		return 0
	})
	out := v[:0]
	for _, x := range v {
		if n := len(out); n > 0 && x.a <= out[n-1].b {
			out[n-1].b = max(out[n-1].b, x.b)
			continue
		}
		out = append(out, x)
	}
	return out
}

// overlapping appends to dst the parts of the sorted, disjoint intervals v inside [a, b).
func overlapping(dst, v []ival, a, b uint64) []ival {
	i := sort.Search(len(v), func(i int) bool { return v[i].b > a })
	for ; i < len(v) && v[i].a < b; i++ {
		dst = append(dst, ival{max(a, v[i].a), min(b, v[i].b)})
	}
	return dst
}

// plan decides, per PT_LOAD, which bytes are kept.
type plan struct {
	files  []ival   // file-backed memory (NT_FILE mappings that are not anonymous)
	stacks []ival   // live stacks kept with KeepStacks
	rsps   []uint64 // every thread's stack pointer, sorted
	vdso   uint64
}

func newPlan(info *Info, opts Options) *plan {
	p := &plan{vdso: info.VDSO}
	for _, m := range info.Mappings {
		if !m.Anonymous() {
			p.files = append(p.files, ival{m.Start, m.End})
		}
	}
	p.files = mergeIvals(p.files)
	limit := opts.StackLimit
	if limit == 0 {
		limit = DefaultStackLimit
	}
	for _, t := range info.Threads {
		p.rsps = append(p.rsps, t.RSP)
		if opts.KeepStacks {
			a := t.RSP - min(t.RSP, redZone)
			b := t.RSP + min(limit, ^uint64(0)-t.RSP)
			p.stacks = append(p.stacks, ival{a, b})
		}
	}
	slices.Sort(p.rsps)
	p.stacks = mergeIvals(p.stacks)
	return p
}

// span is n consecutive file bytes of a segment, kept or zeroed.
type span struct {
	n     int64
	keep  bool
	stack bool // zeroed bytes of a segment holding a thread's stack pointer
}

func (p *plan) spans(seg Segment) []span {
	a, b := seg.Vaddr, seg.Vaddr+seg.FileSize
	if b < a { // the data runs past the top of the address space: treat it all as anonymous
		b = ^uint64(0)
	}
	var keep []ival
	if p.vdso != 0 && seg.Vaddr == p.vdso && !seg.Writable() {
		keep = append(keep, ival{a, b})
	}
	keep = overlapping(keep, p.files, a, b)
	keep = overlapping(keep, p.stacks, a, b)
	keep = mergeIvals(keep)
	i := sort.Search(len(p.rsps), func(i int) bool { return p.rsps[i] >= seg.Vaddr })
	stack := i < len(p.rsps) && p.rsps[i]-seg.Vaddr < seg.MemSize
	var out []span
	pos := a
	for _, k := range keep {
		if k.a > pos {
			out = append(out, span{n: int64(k.a - pos), stack: stack})
		}
		out = append(out, span{n: int64(k.b - k.a), keep: true})
		pos = k.b
	}
	if pos < b {
		out = append(out, span{n: int64(b - pos), stack: stack})
	}
	// Account for data past the top of the address space (b was clamped).
	if total := int64(seg.FileSize); sumSpans(out) < total {
		out = append(out, span{n: total - sumSpans(out), stack: stack})
	}
	return out
}

func sumSpans(v []span) int64 {
	var n int64
	for _, s := range v {
		n += s.n
	}
	return n
}
