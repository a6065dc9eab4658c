package dumps

import (
	"fmt"
	"io"
	"os"
	"sort"

	"golang.org/x/sys/unix"
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

	sparse *os.File // when set, long zero runs are skipped with Seek (holes)
	hole   bool     // the last thing done was a skip: the file must be extended at the end
}

// sparseMin is the shortest zero run left as a hole in a sparse output.
const sparseMin = 64 << 10

// finishSparse extends a sparse output that ends in a hole and checks its size: a file opened
// with O_APPEND, say, ignores the seeks and comes out short.
func (q *outQueue) finishSparse() error {
	if q.sparse == nil {
		return nil
	}
	if q.hole {
		if err := q.sparse.Truncate(q.flushed); err != nil {
			return fmt.Errorf("extend the output over its final hole: %w", err)
		}
	}
	st, err := q.sparse.Stat()
	if err != nil {
		return err
	}
	if st.Size() != q.flushed {
		return fmt.Errorf("sparse output is %d bytes, want %d: it must be a regular file opened without O_APPEND and empty", st.Size(), q.flushed)
	}
	return nil
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
		if p.isZero && q.sparse != nil && k >= sparseMin {
			if _, err := q.sparse.Seek(k, io.SeekCurrent); err != nil {
				return fmt.Errorf("leave a hole in the output: %w", err)
			}
			q.hole = true
		} else if p.isZero {
			q.hole = false
			for left := k; left > 0; {
				m := min(left, int64(len(zeros)))
				if _, err := q.w.Write(zeros[:m]); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				left -= m
			}
		} else {
			q.hole = false
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

// checkSparse accepts an output for holes: a regular, empty file, written from offset 0, not
// opened with O_APPEND (where seeks do not move writes).
func checkSparse(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("sparse output: %w", err)
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("sparse output: %w", err)
	}
	off, err := f.Seek(0, io.SeekCurrent)
	switch {
	case err != nil:
		return fmt.Errorf("sparse output: %w", err)
	case !st.Mode().IsRegular() || st.Size() != 0 || off != 0:
		return fmt.Errorf("sparse output must be an empty regular file written from its start (%s, %d bytes, offset %d)", st.Mode(), st.Size(), off)
	case fl&unix.O_APPEND != 0:
		return fmt.Errorf("sparse output must not be opened with O_APPEND")
	}
	return nil
}
