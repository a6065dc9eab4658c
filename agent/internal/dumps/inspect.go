package dumps

import (
	"bytes"
	"context"
	"fmt"
	"io"
)

// Inspect reads only the ELF header, the program headers and the notes of a core and returns what
// they say. It validates them as Redact does and reads no further than the end of the last note.
func Inspect(r io.Reader) (Info, error) {
	info, _, err := inspect(newInput(context.Background(), r))
	return info, err
}

func inspect(in *input) (Info, *header, error) {
	var info Info
	h, err := readHead(in, discard{})
	if err != nil {
		return info, nil, fmt.Errorf("inspect core dump: %w", err)
	}
	info.Segments = h.segs
	st := &noteState{info: &info}
	for _, i := range h.notes {
		seg := h.segs[i]
		if gap := int64(seg.Offset) - in.off; gap > 0 {
			if err := in.skip(gap, "padding before the notes"); err != nil {
				return info, nil, fmt.Errorf("inspect core dump: %w", err)
			}
		}
		if err := in.notes(seg, st, discard{}); err != nil {
			return info, nil, fmt.Errorf("inspect core dump at offset %d: %w", in.off, err)
		}
	}
	fillInfo(&info)
	return info, h, nil
}

// Peek inspects the head of a core arriving on r (a pipe) and returns a reader that yields the
// whole core again, byte for byte: the head it consumed (held in memory: headers and notes, at
// most a few MiB plus MaxNoteBytes) followed by the rest of r. A handler can thus decide from the
// notes and then Redact, or copy the dump unchanged, without buffering the dump. On error the
// returned reader still replays everything consumed, so an unparseable dump can be passed on or
// drained.
func Peek(r io.Reader) (Info, io.Reader, error) {
	var head bytes.Buffer
	in := newInput(context.Background(), r)
	in.tee = &head
	info, _, err := inspect(in)
	return info, io.MultiReader(&head, r), err
}
