package dumps

import (
	"fmt"
	"io"
	"sort"
)

// outQueue holds output bytes back until the detector has settled them, so that a match is
// overwritten before any of its bytes leave. Zero runs are held as lengths, data as bytes in one
// buffer that is compacted as it drains; the data held is bounded by what the detector has not
// settled (about detect.DefaultChunk + 2·detect.MaxMatch) plus one read.
type outQueue struct {
	w       io.Writer
	pieces  []piece
	head    int   // first unwritten piece
	flushed int64 // file offset written so far
	end     int64 // file offset after the last queued byte

	hold     []byte // data bytes; hold[0] is data byte number holdBase
	holdBase int64
	dataOut  int64 // data bytes written (or dropped) so far
	dataIn   int64 // data bytes queued so far
}

// piece is n bytes at file offset off: zeros when isZero, else data bytes numbered from dpos.
type piece struct {
	off, n int64
	dpos   int64
	isZero bool
}

func newOutQueue(w io.Writer) *outQueue {
	return &outQueue{w: w, hold: make([]byte, 0, 4<<20)}
}

func (q *outQueue) addZeros(n int64) {
	if n <= 0 {
		return
	}
	if l := len(q.pieces) - 1; l >= q.head && q.pieces[l].isZero {
		q.pieces[l].n += n
	} else {
		q.pieces = append(q.pieces, piece{off: q.end, n: n, isZero: true})
	}
	q.end += n
}

func (q *outQueue) addData(p []byte) {
	if len(p) == 0 {
		return
	}
	if len(q.hold)+len(p) > cap(q.hold) && q.dataOut > q.holdBase {
		// Compact: drop bytes already written.
		k := int(q.dataOut - q.holdBase)
		n := copy(q.hold, q.hold[k:])
		q.hold = q.hold[:n]
		q.holdBase = q.dataOut
	}
	q.hold = append(q.hold, p...)
	q.pieces = append(q.pieces, piece{off: q.end, n: int64(len(p)), dpos: q.dataIn})
	q.dataIn += int64(len(p))
	q.end += int64(len(p))
}

// scrub zeroes the queued data bytes in [start, end) and returns how many data bytes it zeroed.
// Bytes already written cannot be scrubbed: that is an error (it would mean a match leaked).
func (q *outQueue) scrub(start, end int64) (int64, error) {
	if start < q.flushed {
		return 0, fmt.Errorf("internal error: a key match at file offset %d was reported after bytes up to %d were written; the output must be discarded", start, q.flushed)
	}
	ps := q.pieces[q.head:]
	i := sort.Search(len(ps), func(i int) bool { return ps[i].off+ps[i].n > start })
	var zeroed int64
	for ; i < len(ps) && ps[i].off < end; i++ {
		p := ps[i]
		if p.isZero {
			continue
		}
		a := max(start, p.off) - p.off
		b := min(end, p.off+p.n) - p.off
		d := p.dpos - q.holdBase
		clear(q.hold[d+a : d+b])
		zeroed += b - a
	}
	return zeroed, nil
}

// flush writes every queued byte before file offset upTo.
func (q *outQueue) flush(upTo int64) error {
	for q.head < len(q.pieces) && q.flushed < upTo {
		p := &q.pieces[q.head]
		k := min(p.n, upTo-p.off) // bytes of this piece to write now
		if p.isZero {
			for left := k; left > 0; {
				m := min(left, int64(len(zeros)))
				if _, err := q.w.Write(zeros[:m]); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				left -= m
			}
		} else {
			d := p.dpos - q.holdBase
			if _, err := q.w.Write(q.hold[d : d+k]); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			q.dataOut = p.dpos + k
			p.dpos += k
		}
		q.flushed += k
		p.off += k
		p.n -= k
		if p.n == 0 {
			q.head++
		}
	}
	if q.head == len(q.pieces) {
		q.pieces, q.head = q.pieces[:0], 0
	} else if q.head > 1024 && q.head*2 > len(q.pieces) {
		q.pieces = append(q.pieces[:0], q.pieces[q.head:]...)
		q.head = 0
	}
	return nil
}
