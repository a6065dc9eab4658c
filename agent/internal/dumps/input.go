package dumps

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// input reads the core once, front to back, never seeking.
type input struct {
	ctx   context.Context
	r     io.Reader
	off   int64
	buf   []byte // streaming buffer
	small []byte // buffer for full()
	tee   io.Writer
}

func newInput(ctx context.Context, r io.Reader) *input {
	return &input{ctx: ctx, r: r, buf: make([]byte, 256<<10)}
}

func (in *input) readErr(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated: the input ends at offset %d, inside %s", in.off, what)
	}
	return fmt.Errorf("read input at offset %d (%s): %w", in.off, what, err)
}

func (in *input) read(b []byte, what string) error {
	if err := in.ctx.Err(); err != nil {
		return err
	}
	n, err := io.ReadFull(in.r, b)
	in.off += int64(n)
	if in.tee != nil && n > 0 {
		if _, werr := in.tee.Write(b[:n]); werr != nil {
			return werr
		}
	}
	if err != nil {
		return in.readErr(err, what)
	}
	return nil
}

// full reads exactly n bytes; the slice is valid until the next call.
func (in *input) full(n int, what string) ([]byte, error) {
	if cap(in.small) > 1<<20 && n <= 1<<20 {
		in.small = nil // give back a large NT_FILE buffer
	}
	if cap(in.small) < n {
		in.small = make([]byte, n)
	}
	b := in.small[:n]
	return b, in.read(b, what)
}

// stream reads n bytes and passes them to fn in pieces.
func (in *input) stream(n int64, what string, fn func([]byte) error) error {
	for n > 0 {
		k := min(n, int64(len(in.buf)))
		b := in.buf[:k]
		if err := in.read(b, what); err != nil {
			return err
		}
		if err := fn(b); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// skip reads and drops n bytes.
func (in *input) skip(n int64, what string) error {
	return in.stream(n, what, func([]byte) error { return nil })
}

// rest reads to the end of the input, at most limit bytes, and returns how many there were.
func (in *input) rest(limit int64) (int64, error) {
	var total int64
	for {
		if err := in.ctx.Err(); err != nil {
			return total, err
		}
		n, err := in.r.Read(in.buf)
		total += int64(n)
		in.off += int64(n)
		if total > limit {
			return total, fmt.Errorf("more than %d bytes after the last segment: not a kernel core", limit)
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("read input at offset %d: %w", in.off, err)
		}
	}
}

// readHead reads the ELF header and program headers, passing their bytes (and any gap between
// them, zeroed) to out.
func readHead(in *input, out sink) (*header, error) {
	eh, err := in.full(ehdrSize, "the ELF header")
	if err != nil {
		return nil, err
	}
	phoff, phnum, err := parseEhdr(eh)
	if err != nil {
		return nil, err
	}
	if err := out.data(eh); err != nil {
		return nil, err
	}
	h := &header{phoff: phoff, phEnd: phoff + uint64(phnum)*phdrSize}
	if gap := int64(phoff) - in.off; gap > 0 {
		if err := in.skip(gap, "the gap before the program headers"); err != nil {
			return nil, err
		}
		if err := out.zero(gap); err != nil {
			return nil, err
		}
	}
	ph, err := in.full(phnum*phdrSize, "the program headers")
	if err != nil {
		return nil, err
	}
	if err := parsePhdrs(h, ph); err != nil {
		return nil, err
	}
	if err := out.data(ph); err != nil {
		return nil, err
	}
	return h, nil
}

// discard is a sink that drops everything (Inspect).
type discard struct{}

func (discard) data([]byte) error { return nil }
func (discard) zero(int64) error  { return nil }
