package spool

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const renumSuffix = ".renum"

// Renumber moves every unacknowledged record to new sequence numbers starting at first, keeping
// their order and any gaps between them, and continues numbering after them. It is for a spool that
// would otherwise reuse numbers the collector already holds (the spool directory was wiped, or
// restored from an old copy): first is then the collector's acknowledged number + 1, and must be
// above every number this spool assigned. reencode must return the payload rewritten to carry its
// new number, appended to dst. If records were appended meanwhile so that first is already taken,
// the records move above them instead; Renumber returns the number the first record got (or the next
// number to be assigned, if there were no unacknowledged records).
//
// Renumbering is crash-safe: new segments are written as *.renum files, moving the
// acknowledgement to first-1 is the commit point, and Open completes or discards an interrupted
// renumbering.
func (s *Spool) Renumber(first uint64, reencode func(newSeq uint64, payload, dst []byte) []byte) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	first = max(first, s.next)
	if s.segs[len(s.segs)-1].count > 0 {
		if err := s.rotate(); err != nil {
			return 0, err
		}
	}
	r := &renumbering{s: s, first: first, reencode: reencode}
	for _, g := range s.segs {
		if g.count == 0 || g.last <= s.acked {
			continue
		}
		if err := r.segment(g); err != nil {
			return r.fail(err)
		}
	}
	if err := r.closeOut(); err != nil {
		return r.fail(err)
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		return r.fail(err)
	}
	// Commit: every old number is below first, so acknowledging first-1 retires all old segments.
	if err := s.writeAck(first-1, true); err != nil {
		return r.fail(err)
	}
	s.log.Warn("spool: unacknowledged records renumbered", "first", first, "moved_by", r.delta)
	return first, s.reload()
}

// renumbering is the state of one Renumber: how far records move, and the *.renum segment being
// written.
type renumbering struct {
	s        *Spool
	first    uint64
	reencode func(newSeq uint64, payload, dst []byte) []byte

	delta   uint64
	payload []byte
	out     *os.File
	bw      *bufio.Writer
	outSize int64
	outLast uint64
	outN    int64
	created []string
}

// closeOut seals and fsyncs the *.renum segment being written, if any.
func (r *renumbering) closeOut() error {
	if r.out == nil {
		return nil
	}
	r.bw.Write(appendFooter(nil, r.outLast, r.outN))
	if err := r.bw.Flush(); err != nil {
		return fmt.Errorf("spool: write renumbered segment: %w", err)
	}
	if err := r.out.Sync(); err != nil {
		return fmt.Errorf("spool: sync renumbered segment: %w", err)
	}
	err := r.out.Close()
	r.out = nil
	return err
}

// fail abandons the renumbering: it closes and removes every *.renum segment written, and returns
// err.
func (r *renumbering) fail(err error) (uint64, error) {
	if r.out != nil {
		r.out.Close()
	}
	for _, p := range r.created {
		os.Remove(p)
	}
	return 0, err
}

// segment copies the unacknowledged records of g, renumbered, to the *.renum segments.
func (r *renumbering) segment(g *segment) error {
	f, err := os.Open(g.path)
	if err != nil {
		return fmt.Errorf("spool: open segment to renumber: %w", err)
	}
	defer f.Close()
	f.Seek(int64(len(segmentMagic)), io.SeekStart)
	rr := recordReader{r: bufio.NewReaderSize(f, 1<<20), maxBody: r.s.cfg.MaxRecordBytes, prevSeq: g.base - 1}
	for {
		rec, _, err := rr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("spool: read segment to renumber: %w", err)
		}
		if rec.Seq <= r.s.acked {
			continue
		}
		if err := r.record(rec); err != nil {
			return err
		}
	}
}

// record writes rec under its new number, starting a new *.renum segment when the current one is
// full.
func (r *renumbering) record(rec Record) error {
	s := r.s
	if r.delta == 0 {
		r.delta = r.first - rec.Seq
	}
	seq := rec.Seq + r.delta
	r.payload = r.reencode(seq, rec.Payload, r.payload[:0])
	size := int64(RecordOverhead + len(r.payload))
	if size > int64(s.cfg.MaxRecordBytes) {
		return fmt.Errorf("%w: renumbered record %d", ErrTooLarge, seq)
	}
	if r.out != nil && r.outSize+size > s.cfg.SegmentBytes {
		if err := r.closeOut(); err != nil {
			return err
		}
	}
	if r.out == nil {
		if err := r.create(seq); err != nil {
			return err
		}
	}
	s.scratch = appendRecord(s.scratch[:0], seq, rec.Time.UnixNano(), rec.Priority, rec.Kind, r.payload)
	r.bw.Write(s.scratch)
	r.outSize += int64(len(s.scratch))
	r.outLast = seq
	r.outN++
	return nil
}

// create starts the *.renum segment whose first record is seq.
func (r *renumbering) create(seq uint64) error {
	outPath := filepath.Join(r.s.cfg.Dir, segName(seq)+renumSuffix)
	out, err := os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create renumbered segment: %w", err)
	}
	r.out = out
	r.created = append(r.created, outPath)
	r.bw = bufio.NewWriterSize(out, writeBufferSize)
	r.bw.WriteString(segmentMagic)
	r.outSize, r.outN = int64(len(segmentMagic)), 0
	return nil
}

// writeAck records the acknowledged sequence number, fsyncing if asked.
func (s *Spool) writeAck(seq uint64, sync bool) error {
	var buf [16]byte
	binary.LittleEndian.PutUint64(buf[0:], seq)
	binary.LittleEndian.PutUint32(buf[8:], crc32.Checksum(buf[:8], castagnoli))
	copy(buf[12:], "KGAK")
	if _, err := s.ackFile.WriteAt(buf[:], 0); err != nil {
		return fmt.Errorf("spool: write acknowledgement: %w", err)
	}
	if sync {
		if err := s.ackFile.Sync(); err != nil {
			return fmt.Errorf("spool: sync acknowledgement: %w", err)
		}
		s.ackSync = seq
	}
	s.acked = seq
	s.fresh = false
	return nil
}

// MarkSynced records that the spool's numbering has been reconciled with the collector (after a
// first handshake, or a renumbering), so it is no longer Fresh, even before any acknowledgement.
func (s *Spool) MarkSynced() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.fresh {
		return nil
	}
	return s.writeAck(s.acked, true)
}

// reload drops the in-memory state and recovers it from disk.
func (s *Spool) reload() error {
	if s.active != nil {
		if err := s.w.Flush(); err != nil {
			return fmt.Errorf("spool: write records: %w", err)
		}
		s.active.Close()
		s.active = nil
	}
	s.ackFile.Close()
	s.ackFile = nil
	s.segs, s.used, s.acked, s.ackSync = nil, 0, 0, 0
	s.gen++
	if err := s.recover(); err != nil {
		s.closed = true
		s.closeFiles()
		return err
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// finishRenumber completes (acknowledgement committed) or discards an interrupted Renumber.
func (s *Spool) finishRenumber(names []string) error {
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	base, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(names[0], "seg-"), ".log"+renumSuffix), 10, 64)
	committed := base > 0 && s.acked >= base-1
	for _, n := range names {
		p := filepath.Join(s.cfg.Dir, n)
		var err error
		if committed {
			err = os.Rename(p, strings.TrimSuffix(p, renumSuffix))
		} else {
			err = os.Remove(p)
		}
		if err != nil {
			return fmt.Errorf("spool: finish interrupted renumbering: %w", err)
		}
	}
	s.log.Warn("spool: found an interrupted renumbering", "completed", committed, "segments", len(names))
	return syncDir(s.cfg.Dir)
}
