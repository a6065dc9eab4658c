package spool

import (
	"errors"
	"fmt"
)

// errPast stops a scan once it is past the range asked for.
var errPast = errors.New("past the range")

// Missing returns the ranges of sequence numbers in from..to (inclusive) that the spool does not
// hold (any more), at most MaxLossRanges of them, and how many numbers are missing in all (always
// exact). The records it holds there, acknowledged or not, are readable with a Reader.
func (s *Spool) Missing(from, to uint64) ([]SeqRange, uint64, error) {
	if from == 0 || to < from {
		return nil, 0, nil
	}
	var l Loss
	var total uint64
	expect := from
	r := s.NewReader(from)
	defer r.Close()
	for expect <= to {
		n, err := r.Next(4096, 16<<20, func(rec Record) error {
			if rec.Seq > to {
				return errPast
			}
			if rec.Seq > expect {
				l.gone(expect, rec.Seq-1)
				total += rec.Seq - expect
			}
			expect = rec.Seq + 1
			return nil
		})
		if err != nil && !errors.Is(err, errPast) {
			return nil, 0, fmt.Errorf("spool: scan for missing records: %w", err)
		}
		if n == 0 || errors.Is(err, errPast) {
			break
		}
	}
	if expect <= to {
		l.gone(expect, to)
		total += to - expect + 1
	}
	return l.Gone, total, nil
}

// Regress moves the acknowledgement back to seq, durably: the collector lost records it had
// acknowledged. Records above seq that the spool still holds count as unacknowledged again (they
// are sent again); the rest are gone, and the caller reports them (Missing says which).
func (s *Spool) Regress(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if seq >= s.acked {
		return nil
	}
	return s.writeAck(seq, true)
}
