package spool

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Reader reads durable records in sequence order. A Reader is used by one goroutine at a time;
// a spool may have several.
type Reader struct {
	s   *Spool
	pos uint64 // next sequence number wanted

	// The open segment and where the reader is in it.
	f    *os.File
	base uint64
	gen  uint64
	off  int64
	br   *bufio.Reader
	rr   recordReader
}

// NewReader returns a reader positioned at the first durable record with sequence number >= from.
func (s *Spool) NewReader(from uint64) *Reader {
	return &Reader{s: s, pos: max(from, 1), br: bufio.NewReaderSize(nil, 256<<10)}
}

// Seek repositions the reader at the first record with sequence number >= seq.
func (r *Reader) Seek(seq uint64) { r.pos = max(seq, 1) }

// Pos is the sequence number the reader will look for next.
func (r *Reader) Pos() uint64 { return r.pos }

// Close releases the reader's open file.
func (r *Reader) Close() error {
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

// Next calls fn for up to maxRecords durable records (and about maxBytes of payload) from the
// reader's position on, and returns how many it passed. It does not wait: 0 means nothing is
// durable beyond the position yet (wait on Spool.Changed). Records that were evicted are skipped,
// so sequence numbers may jump.
func (r *Reader) Next(maxRecords, maxBytes int, fn func(Record) error) (int, error) {
	n, bytes := 0, 0
	for n < maxRecords && bytes < maxBytes {
		s := r.s
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return n, ErrClosed
		}
		var g *segment
		for _, x := range s.segs {
			if x.count > 0 && x.durableSeq >= r.pos && x.durable > int64(len(segmentMagic)) {
				g = x
				break
			}
		}
		if g == nil {
			s.mu.Unlock()
			return n, nil
		}
		base, gen, end, last := g.base, g.gen, g.durable, g.durableSeq
		seekOff, seekPrev := g.seek(r.pos)
		s.mu.Unlock()

		if r.f == nil || r.base != base || r.gen != gen {
			r.Close()
			f, err := os.Open(g.path)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue // acknowledged or emptied meanwhile: look again
				}
				return n, fmt.Errorf("spool: open segment to read: %w", err)
			}
			r.f, r.base, r.gen = f, base, gen
			r.rr.prevSeq = ^uint64(0) // force a seek below
		}
		if r.rr.prevSeq >= r.pos || seekPrev > r.rr.prevSeq {
			r.off = seekOff
			r.rr = recordReader{maxBody: s.cfg.MaxRecordBytes, prevSeq: max(seekPrev, base-1), midway: true}
		}
		r.br.Reset(io.NewSectionReader(r.f, r.off, end-r.off))
		r.rr.r = r.br
		r.rr.off = r.off
		for n < maxRecords && bytes < maxBytes && r.off < end {
			rec, size, err := r.rr.next()
			if err == io.EOF {
				r.off = end
				break
			}
			if err != nil {
				s.mu.Lock()
				stale := true
				for _, x := range s.segs {
					if x.base == base {
						stale = x.gen != gen
					}
				}
				s.mu.Unlock()
				if stale {
					// The segment was compacted or deleted after we looked: start over.
					r.Close()
					break
				}
				// Damage in fsynced data (never a torn tail: readers stop at the durable offset).
				// Skip the rest of the segment so delivery goes on, and report the loss.
				lost := last - max(r.rr.prevSeq, r.pos-1)
				s.mu.Lock()
				s.corrupt += lost
				s.pending.Unknown += lost
				if lost > 0 {
					s.pending.gone(last-lost+1, last)
				}
				s.pending.widen(time.Now())
				s.mu.Unlock()
				s.log.Error("spool: damaged record in a durable segment; skipping the rest of the segment",
					"file", g.path, "lost", lost, "reason", err)
				r.pos = last + 1
				r.off = end
				break
			}
			r.off += size
			if rec.Seq < r.pos {
				continue
			}
			if err := fn(rec); err != nil {
				return n, err
			}
			r.pos = rec.Seq + 1
			n++
			bytes += len(rec.Payload)
		}
		if r.f != nil && r.off >= end && r.pos <= last {
			r.pos = last + 1
		}
	}
	return n, nil
}
