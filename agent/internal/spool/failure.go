package spool

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Write failures.
//
// A full filesystem or an I/O error must not lose records in silence, nor leave the spool broken
// until a restart. When a write, fsync, rotation or compaction fails, fail puts the spool in a
// failed state: the records written since the last fsync are taken back from the in-memory summary
// (their bytes are cut from the file when writing resumes) and counted as lost, with their
// sequence numbers listed as gone; the counts of a loss record that was not durable yet are put
// back. While failed, every Append is refused and counted. Every Config.RetryInterval an Append,
// Sync or Close calls repair, which cuts the active segment back to its durable size (or creates
// a fresh one), resets the buffered writer (bufio keeps its first error) and writes and fsyncs the
// loss record before anything else. Sequence numbers are never reused: the numbers of records
// lost this way are skipped, as after an eviction.

// unsyncedRec is a record written to the active segment since the last successful fsync.
type unsyncedRec struct {
	seq  uint64
	size int64
	kind uint8
	prio Priority
	loss bool // the spool's own loss record: its counts are in inFlight
}

// merge adds o's counts and ranges to l.
func (l *Loss) merge(o Loss) {
	for k, n := range o.ByKind {
		if l.ByKind == nil {
			l.ByKind = map[uint8]uint64{}
		}
		l.ByKind[k] += n
	}
	l.Unknown += o.Unknown
	for _, t := range []time.Time{o.Start, o.End} {
		if !t.IsZero() {
			l.widen(t)
		}
	}
	for _, r := range o.Gone {
		l.gone(r.First, r.Last)
	}
}

// lostIO counts one record refused because the disk refuses writes.
func (s *Spool) lostIO(kind uint8, now time.Time) {
	s.ioLost++
	s.pending.add(kind, 1, now)
}

// fail records a write failure and takes back what was not durable. Called with s.mu held.
func (s *Spool) fail(err error, now time.Time) {
	if s.failErr == nil {
		s.ioErrors++
		s.log.Error("spool: writing failed; events are counted as lost and reported when the disk takes writes again",
			"err", err, "retry_every", s.cfg.RetryInterval)
	}
	s.failErr = err
	s.lastTry = now
	g := s.segs[len(s.segs)-1]
	for _, r := range s.unsynced {
		if !r.loss {
			s.ioLost++
			s.pending.add(r.kind, 1, now)
		}
		s.pending.gone(r.seq, r.seq)
		g.count--
		g.classCount[r.prio]--
		g.classBytes[r.prio] -= r.size
	}
	s.unsynced = s.unsynced[:0]
	s.pending.merge(s.inFlight)
	s.inFlight = Loss{}
	if g.size > g.durable {
		s.used -= g.size - g.durable
		g.size = g.durable
		g.last = g.durableSeq
		g.sealed = false // a footer that was not fsynced is cut with the rest
		for len(g.index) > 0 && g.index[len(g.index)-1].off >= g.durable {
			g.index = g.index[:len(g.index)-1]
		}
	}
}

// repair reports whether the spool takes writes, trying to resume a failed one at most every
// RetryInterval. Resuming writes the pending loss record and fsyncs it. Called with s.mu held.
func (s *Spool) repair(now time.Time) bool {
	if s.failErr == nil {
		return true
	}
	if !s.lastTry.IsZero() && now.Sub(s.lastTry) < s.cfg.RetryInterval {
		return false
	}
	s.lastTry = now
	if err := s.reopenActive(); err != nil {
		s.failErr = err
		return false
	}
	prev := s.failErr
	s.failErr = nil
	if err := s.writeLoss(now); err != nil {
		s.fail(err, now)
		return false
	}
	if err := s.syncLocked(); err != nil {
		s.fail(err, now)
		return false
	}
	if s.failErr == nil {
		s.log.Warn("spool: writing works again; the loss is recorded", "after", prev, "lost_since_open", s.ioLost)
	}
	return true
}

// reopenActive makes the active segment writable again: cut back to its durable size with a fresh
// buffered writer, or newly created if the failure came while rotating.
func (s *Spool) reopenActive() error {
	g := s.segs[len(s.segs)-1]
	if s.active == nil || g.sealed {
		if s.active != nil {
			s.active.Close()
			s.active = nil
		}
		// A leftover of a failed creation holds nothing durable.
		if err := os.Remove(filepath.Join(s.cfg.Dir, segName(s.next))); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("spool: remove half-made segment: %w", err)
		}
		return s.newActive(s.next)
	}
	if err := s.active.Truncate(g.durable); err != nil {
		return fmt.Errorf("spool: cut segment back to its durable size: %w", err)
	}
	if _, err := s.active.Seek(g.durable, io.SeekStart); err != nil {
		return fmt.Errorf("spool: seek segment: %w", err)
	}
	s.w.Reset(s.active)
	return nil
}

// Failing reports whether the spool is waiting for its disk to take writes again.
func (s *Spool) Failing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failErr != nil
}
