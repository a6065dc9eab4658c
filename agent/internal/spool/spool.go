// Package spool is the agent's durable on-disk event spool.
//
// Every event the agent exports is appended here before it is sent, and stays until the collector
// acknowledges it. The spool is a directory of append-only segment files of checksummed records;
// a torn tail left by a crash is detected and truncated when the spool is opened. The spool assigns
// each record its per-host sequence number at append time; the numbering is persistent and continues
// across agent restarts.
//
// Appends are buffered; Sync makes everything appended so far durable with one fsync (the caller
// batches). Readers only ever see durable records, so nothing is sent that a crash could take back
// and renumber.
//
// The spool has a size cap. When an append does not fit, the spool first discards records the
// collector already acknowledged, then evicts the lowest-priority records, oldest first, and never
// records of PriorityKeep (denials, core dumps, loss reports). If only more valuable records remain,
// the new record is refused. Every eviction and refusal is counted per kind and written into the
// spool as a loss record (encoded by Config.EncodeLoss), so no drop goes unreported.
//
// A disk that refuses writes (full filesystem, I/O error) does not lose records in silence either:
// the records not yet fsynced and every record appended while writing fails are counted, and the
// spool retries by itself every Config.RetryInterval; when the disk takes writes again the first
// record written is the loss record (see failure.go).
//
// Memory use is bounded: a few hundred bytes per segment plus a sparse offset index (one entry per
// 64 KiB of records), independent of the number of records.
package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Priority is the value of a record when the spool is full: lower priorities are evicted first.
type Priority uint8

const (
	// PriorityLow is for events that are useful but expendable: allowed-by-policy accesses, routine
	// status.
	PriorityLow Priority = iota
	// PriorityNormal is for ordinary security-relevant events.
	PriorityNormal
	// PriorityHigh is for events an investigator would miss: audit-mode would-be denials,
	// protection changes.
	PriorityHigh
	// PriorityKeep records are never evicted: denials, core-dump events, loss reports.
	PriorityKeep

	numClasses = int(PriorityKeep) + 1
)

// Defaults for Config.
const (
	DefaultMaxBytes       = 256 << 20
	DefaultMaxRecordBytes = 1 << 20
	maxSegmentBytes       = 16 << 20
	minSegmentBytes       = 64 << 10
	indexInterval         = 64 << 10
	writeBufferSize       = 256 << 10
	lossInterval          = time.Second
	// DefaultRetryInterval is how often a spool whose disk failed tries writing again.
	DefaultRetryInterval = time.Second
)

// Loss is what the spool had to drop since its last loss record.
type Loss struct {
	// ByKind counts records evicted or refused, by the kind given at append time.
	ByKind map[uint8]uint64
	// Unknown counts records destroyed by on-disk damage whose kind cannot be known.
	Unknown uint64
	// Start and End bound the time of the drops.
	Start, End time.Time
	// Gone lists the sequence numbers that were assigned and then evicted or destroyed, merged
	// into ranges, in the order they went. At most MaxLossRanges ranges are listed (the counts above
	// are always complete). Refused records never got a sequence number.
	Gone []SeqRange
}

// SeqRange is an inclusive range of sequence numbers.
type SeqRange struct{ First, Last uint64 }

// MaxLossRanges bounds Loss.Gone.
const MaxLossRanges = 1024

func (l *Loss) gone(first, last uint64) {
	if n := len(l.Gone); n > 0 && l.Gone[n-1].Last+1 >= first && l.Gone[n-1].Last < last {
		l.Gone[n-1].Last = last
		return
	}
	if len(l.Gone) < MaxLossRanges {
		l.Gone = append(l.Gone, SeqRange{first, last})
	}
}

// Total is the number of records lost.
func (l Loss) Total() uint64 {
	t := l.Unknown
	for _, n := range l.ByKind {
		t += n
	}
	return t
}

func (l *Loss) add(kind uint8, n uint64, now time.Time) {
	if l.ByKind == nil {
		l.ByKind = map[uint8]uint64{}
	}
	l.ByKind[kind] += n
	l.widen(now)
}

func (l *Loss) widen(now time.Time) {
	if l.Start.IsZero() || now.Before(l.Start) {
		l.Start = now
	}
	if now.After(l.End) {
		l.End = now
	}
}

// Config configures a spool. Dir and EncodeLoss are required.
type Config struct {
	// Dir holds the segment files; created (mode 0700) if missing. One process at a time.
	Dir string
	// MaxBytes caps the spool's size on disk. Default DefaultMaxBytes. Loss records may exceed it
	// by up to 1% (at least 64 KiB) so that a drop can always be reported.
	MaxBytes int64
	// SegmentBytes is the size at which the current segment is sealed and a new one started.
	// Default MaxBytes/16, clamped to [64 KiB, 16 MiB].
	SegmentBytes int64
	// MaxRecordBytes is the largest record accepted (payload + RecordOverhead).
	// Default DefaultMaxRecordBytes; never more than half a segment.
	MaxRecordBytes int
	// EncodeLoss encodes a loss record's payload with the sequence number the spool assigned to it.
	EncodeLoss func(seq uint64, loss Loss, dst []byte) ([]byte, error)
	// LossKind is the kind stored with loss records.
	LossKind uint8
	// Logger receives recovery and eviction reports. Default: discard.
	Logger *slog.Logger
	// RetryInterval is how often a spool whose writes failed (disk full, I/O error) tries again.
	// Default DefaultRetryInterval.
	RetryInterval time.Duration
}

// Stats is a snapshot of the spool's state.
type Stats struct {
	NextSeq    uint64 // sequence number the next record will get
	DurableSeq uint64 // highest sequence number that is fsynced and readable
	AckedSeq   uint64 // highest sequence number the collector acknowledged
	// Records is the number of unacknowledged records (exact unless records were evicted from the
	// oldest segment's acknowledged part; then an upper bound).
	Records int64
	Bytes   int64 // bytes on disk
	// MaxBytes is the configured cap.
	MaxBytes int64
	Segments int
	// OldestUnacked is the append time of the oldest unacknowledged record (to within 64 KiB of
	// records); zero if none.
	OldestUnacked time.Time
	// Evicted, Refused and Corrupt count records lost since Open: evicted to make room, refused
	// because the spool was full of more valuable records, destroyed by on-disk damage.
	Evicted, Refused, Corrupt uint64
	// Fresh is true until the spool has recorded a first acknowledgement: a new (or wiped) spool,
	// whose numbers say nothing about what the collector already holds for this host.
	Fresh bool
	// LossRecords counts loss records written since Open.
	LossRecords uint64
	// LostIO counts records lost since Open because the disk refused them (full, I/O error):
	// refused while writing failed, or written but not yet durable when a write or fsync failed.
	// They are reported in a loss record once the disk takes writes again.
	LostIO uint64
	// IOErrors counts the times writing failed since Open.
	IOErrors uint64
	// Failing is the write error the spool is waiting out, empty while it is healthy.
	Failing string
}

type indexEntry struct {
	seq  uint64
	off  int64
	time int64
}

// segment is the in-memory summary of one segment file.
type segment struct {
	base       uint64 // from the file name: every record's seq is >= base
	path       string
	size       int64 // bytes in the file, header included
	durable    int64 // bytes known fsynced (== size once sealed)
	first      uint64
	last       uint64
	durableSeq uint64 // last seq within durable bytes
	count      int64
	classCount [numClasses]int64
	classBytes [numClasses]int64
	index      []indexEntry
	gen        uint64 // bumped whenever the file is rewritten
	sealed     bool   // ends with a footer; no more appends
}

func (g *segment) note(seq uint64, off, size int64, t int64, prio Priority) {
	if g.count == 0 {
		g.first = seq
	}
	if len(g.index) == 0 || off-g.index[len(g.index)-1].off >= indexInterval {
		g.index = append(g.index, indexEntry{seq: seq, off: off, time: t})
	}
	g.last = seq
	g.count++
	g.classCount[prio]++
	g.classBytes[prio] += size
	g.size = off + size
}

// seek returns the file offset of the last index entry at or before seq.
func (g *segment) seek(seq uint64) (int64, uint64) {
	i := sort.Search(len(g.index), func(i int) bool { return g.index[i].seq > seq })
	if i == 0 {
		return int64(len(segmentMagic)), 0
	}
	return g.index[i-1].off, g.index[i-1].seq - 1
}

// Spool is a durable on-disk event spool. Its methods are safe for concurrent use.
type Spool struct {
	cfg     Config
	log     *slog.Logger
	reserve int64

	mu       sync.Mutex
	closed   bool
	lock     *os.File
	ackFile  *os.File
	fresh    bool       // no acknowledgement recorded yet (see Stats.Fresh)
	segs     []*segment // ordered by base; the last one is active
	active   *os.File
	w        *bufio.Writer
	used     int64
	next     uint64
	acked    uint64
	ackSync  uint64 // acked value known fsynced
	durable  uint64
	scratch  []byte
	payload  []byte
	changed  chan struct{}
	pending  Loss // not yet written as a loss record
	evicted  uint64
	refused  uint64
	corrupt  uint64
	lossRecs uint64
	gen      uint64

	// Write-failure state (see failure.go).
	failErr  error         // the error that stopped writing; nil while healthy
	lastTry  time.Time     // last failure or repair attempt
	unsynced []unsyncedRec // records written to the active segment since the last fsync
	inFlight Loss          // counts in a loss record that is not durable yet
	ioLost   uint64
	ioErrors uint64
}

func (c *Config) setDefaults() error {
	if c.Dir == "" {
		return errors.New("spool: no directory configured: set the spool directory")
	}
	if c.EncodeLoss == nil {
		return errors.New("spool: no loss encoder configured")
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.SegmentBytes == 0 {
		c.SegmentBytes = min(max(c.MaxBytes/16, minSegmentBytes), maxSegmentBytes)
	}
	if c.MaxRecordBytes == 0 {
		c.MaxRecordBytes = DefaultMaxRecordBytes
	}
	c.MaxRecordBytes = int(min(int64(c.MaxRecordBytes), c.SegmentBytes/2))
	if c.SegmentBytes < 4096 || c.MaxBytes < 2*c.SegmentBytes {
		return fmt.Errorf("spool: size cap %d bytes with %d-byte segments is too small: give the spool at least two segments of at least 4 KiB", c.MaxBytes, c.SegmentBytes)
	}
	if c.MaxRecordBytes < RecordOverhead+1 {
		return fmt.Errorf("spool: maximum record size %d must be at least %d", c.MaxRecordBytes, RecordOverhead+1)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = DefaultRetryInterval
	}
	return nil
}

// Open opens (creating if needed) the spool in cfg.Dir, recovering from a crash: torn records at
// the end of segments are truncated, temporary files of an interrupted rewrite are removed, and
// segments the collector already acknowledged are deleted.
func Open(cfg Config) (*Spool, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: open lock file: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("spool: %s is in use by another process (is another agent running?): %w", cfg.Dir, err)
	}
	s := &Spool{
		cfg:     cfg,
		log:     cfg.Logger,
		reserve: max(cfg.MaxBytes/100, 64<<10),
		lock:    lock,
		changed: make(chan struct{}),
	}
	if err := s.recover(); err != nil {
		s.closeFiles()
		return nil, err
	}
	return s, nil
}

func segName(base uint64) string { return fmt.Sprintf("seg-%020d.log", base) }

// recover rebuilds the in-memory state from the spool directory: the acknowledgement, the
// segments (completing or discarding an interrupted renumbering, truncating damage), and the
// segment new records are appended to.
func (s *Spool) recover() error {
	if err := s.readAck(); err != nil {
		return err
	}
	if err := s.listSegments(); err != nil {
		return err
	}
	lastSeq, err := s.scanSegments()
	if err != nil {
		return err
	}
	if err := s.dropAcked(); err != nil {
		return err
	}

	s.next = max(s.acked, lastSeq) + 1
	if len(s.segs) > 0 {
		s.next = max(s.next, s.segs[len(s.segs)-1].base)
	}
	for _, g := range s.segs {
		g.durable = g.size
		g.durableSeq = g.last
		s.used += g.size
	}
	if err := s.openActive(); err != nil {
		return err
	}
	s.durable = s.next - 1
	if s.acked > s.durable {
		s.acked = s.durable
	}
	s.log.Info("spool: opened", "dir", s.cfg.Dir, "next_seq", s.next, "acked_seq", s.acked,
		"segments", len(s.segs), "bytes", s.used)
	return nil
}

// readAck opens (creating it if needed) the acknowledgement file and reads the acknowledged
// sequence number from it; a missing or damaged one leaves the spool fresh.
func (s *Spool) readAck() error {
	ack, err := os.OpenFile(filepath.Join(s.cfg.Dir, "acked"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("spool: open acknowledgement file: %w", err)
	}
	s.ackFile = ack
	var buf [16]byte
	s.fresh = true
	if n, _ := ack.ReadAt(buf[:], 0); n == 16 {
		seq := binary.LittleEndian.Uint64(buf[0:])
		if crc32.Checksum(buf[:8], castagnoli) == binary.LittleEndian.Uint32(buf[8:]) && string(buf[12:]) == "KGAK" {
			s.acked, s.ackSync = seq, seq
			s.fresh = false
		} else {
			s.log.Warn("spool: acknowledgement file is damaged; unacknowledged state is rebuilt and the collector discards resent duplicates")
		}
	}
	return nil
}

// listSegments finishes an interrupted renumbering, removes leftover temporary files and fills
// s.segs with the directory's segments, oldest first.
func (s *Spool) listSegments() error {
	dir := s.cfg.Dir
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("spool: read directory: %w", err)
	}
	var renum []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), renumSuffix) {
			renum = append(renum, e.Name())
		}
	}
	if len(renum) > 0 {
		if err := s.finishRenumber(renum); err != nil {
			return err
		}
		if entries, err = os.ReadDir(dir); err != nil {
			return fmt.Errorf("spool: read directory: %w", err)
		}
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("spool: remove leftover %s: %w", name, err)
			}
			continue
		}
		if !strings.HasPrefix(name, "seg-") || !strings.HasSuffix(name, ".log") {
			continue
		}
		base, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".log"), 10, 64)
		if err != nil || base == 0 {
			s.log.Warn("spool: ignoring unexpected file", "file", name)
			continue
		}
		s.segs = append(s.segs, &segment{base: base, path: filepath.Join(dir, name)})
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i].base < s.segs[j].base })
	return nil
}

// scanSegments scans every segment, counting as lost the records a damaged sealed segment no
// longer holds, and returns the last sequence number found.
func (s *Spool) scanSegments() (uint64, error) {
	now := time.Now()
	var lastSeq uint64
	for i, g := range s.segs {
		if err := s.scan(g, lastSeq); err != nil {
			return 0, err
		}
		if g.count > 0 {
			lastSeq = g.last
		}
		if i < len(s.segs)-1 && !g.sealed {
			// Every segment but the newest was sealed before the next one was created: this one
			// was damaged after it was fsynced. Records between its last good one and the next
			// segment are gone (an upper bound if some of them had been evicted and reported).
			// Numbers already acknowledged do not count: those records were delivered.
			if nb, from := s.segs[i+1].base, max(lastSeq, g.base-1, s.acked); nb > from+1 {
				lost := nb - 1 - from
				s.corrupt += lost
				s.pending.Unknown += lost
				s.pending.gone(nb-lost, nb-1)
				s.pending.widen(now)
				s.log.Error("spool: damaged segment truncated; records lost", "file", g.path, "lost", lost)
			}
		}
	}
	return lastSeq, nil
}

// dropAcked removes fully acknowledged sealed segments; it keeps the newest, which anchors the
// sequence numbering.
func (s *Spool) dropAcked() error {
	for len(s.segs) > 1 && (s.segs[0].count == 0 || s.segs[0].last <= s.acked) {
		if err := os.Remove(s.segs[0].path); err != nil {
			return fmt.Errorf("spool: remove acknowledged segment: %w", err)
		}
		s.segs = s.segs[1:]
	}
	return nil
}

// openActive opens the segment new records are appended to: the newest one if it is not sealed,
// else a new one starting at s.next.
func (s *Spool) openActive() error {
	if len(s.segs) == 0 || s.segs[len(s.segs)-1].sealed {
		// Empty directory, or a crash right after sealing the newest segment.
		return s.newActive(s.next)
	}
	g := s.segs[len(s.segs)-1]
	f, err := os.OpenFile(g.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("spool: open segment for append: %w", err)
	}
	if _, err := f.Seek(g.size, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("spool: seek segment: %w", err)
	}
	s.active = f
	s.w = bufio.NewWriterSize(f, writeBufferSize)
	return nil
}

// scan reads a segment, rebuilds its summary and truncates anything after the last valid record
// (or after the footer of a sealed segment).
func (s *Spool) scan(g *segment, prevSeq uint64) error {
	f, err := os.OpenFile(g.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("spool: open segment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("spool: stat segment: %w", err)
	}
	var magic [len(segmentMagic)]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != segmentMagic {
		// A header that never made it to disk (crash right after creating the file) or a foreign
		// file: reset to an empty segment.
		s.log.Warn("spool: segment has no valid header; resetting it", "file", g.path, "bytes", fi.Size())
		if err := resetSegment(f); err != nil {
			return err
		}
		g.size = int64(len(segmentMagic))
		return nil
	}
	g.size = int64(len(segmentMagic))
	rr := recordReader{r: bufio.NewReaderSize(f, 1<<20), maxBody: s.cfg.MaxRecordBytes, off: g.size, prevSeq: max(prevSeq, g.base-1)}
	for {
		off := rr.off
		rec, size, err := rr.next()
		if err == io.EOF {
			if rr.sealed {
				g.sealed = true
				g.size = rr.off
			}
			if rr.off == fi.Size() {
				return nil
			}
			err = fmt.Errorf("%d bytes after the footer", fi.Size()-rr.off)
			off = rr.off
		}
		if err != nil {
			s.log.Warn("spool: truncating segment after its last valid record", "file", g.path,
				"offset", off, "dropped_bytes", fi.Size()-off, "reason", err)
			if err := f.Truncate(off); err != nil {
				return fmt.Errorf("spool: truncate torn segment: %w", err)
			}
			if err := f.Sync(); err != nil {
				return fmt.Errorf("spool: sync truncated segment: %w", err)
			}
			return nil
		}
		g.note(rec.Seq, off, size, rec.Time.UnixNano(), rec.Priority)
	}
}

func resetSegment(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("spool: reset segment: %w", err)
	}
	if _, err := f.WriteAt([]byte(segmentMagic), 0); err != nil {
		return fmt.Errorf("spool: reset segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("spool: reset segment: %w", err)
	}
	return nil
}

// newActive creates a new segment file and makes it the active one.
func (s *Spool) newActive(base uint64) error {
	path := filepath.Join(s.cfg.Dir, segName(base))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	fail := func(err error) error {
		// Leave no half-made segment behind: a retry creates it again.
		f.Close()
		os.Remove(path)
		return err
	}
	if _, err := f.Write([]byte(segmentMagic)); err != nil {
		return fail(fmt.Errorf("spool: write segment header: %w", err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("spool: sync new segment: %w", err))
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		return fail(err)
	}
	g := &segment{base: base, path: path, size: int64(len(segmentMagic))}
	g.durable = g.size
	s.segs = append(s.segs, g)
	s.used += g.size
	s.active = f
	if s.w == nil {
		s.w = bufio.NewWriterSize(f, writeBufferSize)
	} else {
		s.w.Reset(f)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: sync directory: %w", err)
	}
	return nil
}

// ErrClosed is returned by operations on a closed spool.
var ErrClosed = errors.New("spool: closed")

// ErrTooLarge is returned by Append for a record larger than Config.MaxRecordBytes.
var ErrTooLarge = errors.New("spool: record too large")

// Append stores a record. encode is called with the sequence number the record will get and must
// append the payload (which normally embeds that number) to dst. If the spool is full of records at
// least as valuable, the record is refused: Append returns stored=false, counts the loss and
// reports it in a later loss record. The same holds while the disk refuses writes (full
// filesystem, I/O error): the record and every record written since the last Sync are counted as
// lost, and the spool tries writing again every Config.RetryInterval; the first thing it writes
// when the disk takes writes again is the loss record. The record becomes durable and readable at
// the next Sync.
func (s *Spool) Append(kind uint8, prio Priority, encode func(seq uint64, dst []byte) ([]byte, error)) (seq uint64, stored bool, err error) {
	if prio > PriorityKeep {
		prio = PriorityKeep
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, false, ErrClosed
	}
	now := time.Now()
	if !s.repair(now) { // first: resuming writes a loss record, which takes a sequence number
		s.lostIO(kind, now)
		return 0, false, nil
	}
	seq = s.next
	s.payload, err = encode(seq, s.payload[:0])
	if err != nil {
		return 0, false, fmt.Errorf("spool: encode record: %w", err)
	}
	size := int64(RecordOverhead + len(s.payload))
	if size > int64(s.cfg.MaxRecordBytes) {
		return 0, false, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, s.cfg.MaxRecordBytes)
	}
	evictedBefore := s.evicted
	ok, err := s.makeRoom(size, prio, now)
	if err != nil {
		s.fail(err, now)
		s.lostIO(kind, now)
		return 0, false, nil
	}
	if !ok {
		s.refused++
		s.pending.add(kind, 1, now)
		return 0, false, nil
	}
	if err := s.write(seq, now.UnixNano(), prio, kind, s.payload); err != nil {
		s.fail(err, now)
		s.lostIO(kind, now)
		return 0, false, nil
	}
	if s.evicted != evictedBefore {
		// Evicted records are gone from disk: report them right away.
		if err := s.writeLoss(now); err != nil {
			s.fail(err, now) // counts this record too: it was not durable yet
			return 0, false, nil
		}
	}
	return seq, true, nil
}

// write appends one record to the active segment, rotating it when full.
func (s *Spool) write(seq uint64, t int64, prio Priority, kind uint8, payload []byte) error {
	return s.writeRec(seq, t, prio, kind, payload, false)
}

// writeRec is write; isLoss marks the spool's own loss records.
func (s *Spool) writeRec(seq uint64, t int64, prio Priority, kind uint8, payload []byte, isLoss bool) error {
	g := s.segs[len(s.segs)-1]
	if g.size+int64(RecordOverhead+len(payload)) > s.cfg.SegmentBytes && g.count > 0 {
		if err := s.rotate(); err != nil {
			return err
		}
		g = s.segs[len(s.segs)-1]
	}
	s.scratch = appendRecord(s.scratch[:0], seq, t, prio, kind, payload)
	if _, err := s.w.Write(s.scratch); err != nil {
		return fmt.Errorf("spool: write record: %w", err)
	}
	s.used += int64(len(s.scratch))
	g.note(seq, g.size, int64(len(s.scratch)), t, prio)
	s.unsynced = append(s.unsynced, unsyncedRec{seq: seq, kind: kind, prio: prio, size: int64(len(s.scratch)), loss: kind == s.cfg.LossKind && prio == PriorityKeep && isLoss})
	s.next = seq + 1
	return nil
}

// writeLoss appends the pending loss as a loss record, allowed into the reserve above MaxBytes.
func (s *Spool) writeLoss(now time.Time) error {
	for {
		if s.pending.Total() == 0 {
			return nil
		}
		seq := s.next
		p, err := s.cfg.EncodeLoss(seq, s.pending, s.payload[:0])
		if err != nil {
			return fmt.Errorf("spool: encode loss record: %w", err)
		}
		s.payload = p
		size := int64(RecordOverhead + len(p))
		if size > int64(s.cfg.MaxRecordBytes) {
			return fmt.Errorf("%w: loss record of %d bytes", ErrTooLarge, size)
		}
		if s.used+size > s.cfg.MaxBytes+s.reserve {
			evicted := s.evicted
			ok, err := s.makeRoom(size-s.reserve, PriorityKeep, now)
			if err != nil || !ok {
				// No room even in the reserve: keep counting; the loss record is written once an
				// acknowledgement frees space.
				return err
			}
			if s.evicted != evicted {
				continue // more records were evicted: encode them too
			}
		}
		if err := s.writeRec(seq, now.UnixNano(), PriorityKeep, s.cfg.LossKind, p, true); err != nil {
			return err
		}
		s.lossRecs++
		s.log.Warn("spool: records dropped and reported", "lost", s.pending.Total(), "loss_seq", seq)
		// Until the loss record is durable its counts stay on hand: a failed fsync puts them back.
		s.inFlight.merge(s.pending)
		s.pending = Loss{}
		return nil
	}
}

// makeRoom frees space for a record of size bytes and priority prio. It returns false if only
// records more valuable than prio (or PriorityKeep records) are left to evict.
func (s *Spool) makeRoom(size int64, prio Priority, now time.Time) (bool, error) {
	for s.used+size > s.cfg.MaxBytes {
		// 1. Acknowledged records still on disk in the oldest segment.
		if old := s.segs[0]; old.count > 0 && old.first <= s.acked {
			if old == s.segs[len(s.segs)-1] {
				if err := s.rotate(); err != nil {
					return false, err
				}
			}
			if err := s.rewrite(s.segs[0], -1, now); err != nil {
				return false, err
			}
			continue
		}
		// 2. The lowest class present, oldest first.
		class := -1
		for c := 0; c < int(PriorityKeep) && class < 0; c++ {
			for _, g := range s.segs {
				if g.classCount[c] > 0 {
					class = c
					break
				}
			}
		}
		if class < 0 || Priority(class) > prio {
			return false, nil
		}
		var victim *segment
		for _, g := range s.segs {
			if g.classCount[class] > 0 {
				victim = g
				break
			}
		}
		if victim == s.segs[len(s.segs)-1] {
			if err := s.rotate(); err != nil {
				return false, err
			}
		}
		if err := s.rewrite(victim, class, now); err != nil {
			return false, err
		}
	}
	return true, nil
}

// rotate seals the active segment (making it durable) and starts a new one.
func (s *Spool) rotate() error {
	g := s.segs[len(s.segs)-1]
	s.scratch = appendFooter(s.scratch[:0], g.last, g.count)
	if _, err := s.w.Write(s.scratch); err != nil {
		return fmt.Errorf("spool: write segment footer: %w", err)
	}
	g.size += footerSize
	s.used += footerSize
	g.sealed = true
	if err := s.syncLocked(); err != nil {
		return err
	}
	if err := s.active.Close(); err != nil {
		return fmt.Errorf("spool: close sealed segment: %w", err)
	}
	s.active = nil
	return s.newActive(s.next)
}

// rewrite replaces a sealed segment by a copy without its acknowledged records and, if drop >= 0,
// without its records of priority class drop, which are counted as evicted.
func (s *Spool) rewrite(g *segment, drop int, now time.Time) error {
	src, err := os.Open(g.path)
	if err != nil {
		return fmt.Errorf("spool: open segment to compact: %w", err)
	}
	defer src.Close()
	if _, err := src.Seek(int64(len(segmentMagic)), io.SeekStart); err != nil {
		return fmt.Errorf("spool: seek segment to compact: %w", err)
	}
	tmpPath := g.path + ".tmp"
	dst, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create compacted segment: %w", err)
	}
	defer func() {
		if dst != nil {
			dst.Close()
			os.Remove(tmpPath)
		}
	}()
	bw := bufio.NewWriterSize(dst, writeBufferSize)
	bw.WriteString(segmentMagic)
	ng := &segment{base: g.base, path: g.path, size: int64(len(segmentMagic)), gen: g.gen + 1}
	rr := recordReader{r: bufio.NewReaderSize(src, 1<<20), maxBody: s.cfg.MaxRecordBytes, off: int64(len(segmentMagic)), prevSeq: g.base - 1}
	var evicted uint64
	lastSeen := g.base - 1
	for {
		rec, size, err := rr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			// Damage inside a fsynced segment. Whatever follows is lost; count it.
			lost := g.last - lastSeen
			s.corrupt += lost
			s.pending.Unknown += lost
			if lost > 0 {
				s.pending.gone(lastSeen+1, g.last)
			}
			s.pending.widen(now)
			s.log.Error("spool: damaged segment found while compacting; records lost", "file", g.path, "lost", lost, "reason", err)
			break
		}
		lastSeen = rec.Seq
		if rec.Seq <= s.acked {
			continue
		}
		if int(rec.Priority) == drop {
			s.pending.add(rec.Kind, 1, now)
			s.pending.gone(rec.Seq, rec.Seq)
			evicted++
			continue
		}
		s.scratch = appendRecord(s.scratch[:0], rec.Seq, rec.Time.UnixNano(), rec.Priority, rec.Kind, rec.Payload)
		if _, err := bw.Write(s.scratch); err != nil {
			return fmt.Errorf("spool: write compacted segment: %w", err)
		}
		ng.note(rec.Seq, ng.size, size, rec.Time.UnixNano(), rec.Priority)
	}
	s.evicted += evicted
	i := s.indexOf(g)
	if ng.count == 0 {
		dst.Close()
		dst = nil
		os.Remove(tmpPath)
		if err := os.Remove(g.path); err != nil {
			return fmt.Errorf("spool: remove emptied segment: %w", err)
		}
		s.segs = append(s.segs[:i], s.segs[i+1:]...)
		s.used -= g.size
		s.gen++
		return nil
	}
	bw.Write(appendFooter(s.scratch[:0], ng.last, ng.count))
	ng.size += footerSize
	ng.sealed = true
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("spool: write compacted segment: %w", err)
	}
	if err := dst.Sync(); err != nil {
		return fmt.Errorf("spool: sync compacted segment: %w", err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("spool: close compacted segment: %w", err)
	}
	dst = nil
	if err := os.Rename(tmpPath, g.path); err != nil {
		return fmt.Errorf("spool: replace compacted segment: %w", err)
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		return err
	}
	ng.durable = ng.size
	ng.durableSeq = ng.last
	s.used += ng.size - g.size
	s.segs[i] = ng
	s.gen++
	return nil
}

func (s *Spool) indexOf(g *segment) int {
	for i, x := range s.segs {
		if x == g {
			return i
		}
	}
	panic("spool: segment not in list")
}

// Sync makes every record appended so far durable and visible to readers, writing a loss record
// first if refusals are pending for more than a second.
func (s *Spool) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	now := time.Now()
	if !s.repair(now) {
		return fmt.Errorf("%w (%d records lost so far; they are reported once writing works again)", s.failErr, s.ioLost)
	}
	if s.pending.Total() > 0 && now.Sub(s.pending.Start) >= lossInterval {
		if err := s.writeLoss(now); err != nil {
			s.fail(err, now)
			return err
		}
	}
	if err := s.syncLocked(); err != nil {
		s.fail(err, now)
		return err
	}
	return nil
}

func (s *Spool) syncLocked() error {
	g := s.segs[len(s.segs)-1]
	if g.durable == g.size && s.w.Buffered() == 0 {
		return nil
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spool: write records: %w", err)
	}
	if err := syscall.Fdatasync(int(s.active.Fd())); err != nil {
		return fmt.Errorf("spool: fsync segment: %w", err)
	}
	g.durable = g.size
	g.durableSeq = g.last
	s.unsynced = s.unsynced[:0]
	s.inFlight = Loss{}
	if s.next-1 > s.durable {
		s.durable = s.next - 1
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return nil
}

// Changed returns a channel that is closed when records become durable after the call.
func (s *Spool) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Ack records that the collector durably stored every record up to and including seq, and deletes
// segments that hold nothing newer. Acknowledgements never move backwards.
func (s *Spool) Ack(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if seq <= s.acked {
		return nil
	}
	if seq > s.durable {
		s.log.Warn("spool: acknowledgement beyond the last durable record ignored", "ack", seq, "durable", s.durable)
		seq = s.durable
	}
	if err := s.writeAck(seq, false); err != nil {
		return err
	}
	n := 0
	for n < len(s.segs)-1 && s.segs[n].last <= seq {
		n++
	}
	if n == 0 {
		return nil
	}
	// The acknowledgement must be on disk before the records it covers disappear.
	if err := s.writeAck(seq, true); err != nil {
		return err
	}
	for _, g := range s.segs[:n] {
		if err := os.Remove(g.path); err != nil {
			return fmt.Errorf("spool: remove acknowledged segment: %w", err)
		}
		s.used -= g.size
	}
	s.segs = append(s.segs[:0], s.segs[n:]...)
	s.gen++
	return nil
}

// Stats returns a snapshot of the spool's state.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		NextSeq: s.next, DurableSeq: s.durable, AckedSeq: s.acked,
		Bytes: s.used, MaxBytes: s.cfg.MaxBytes, Segments: len(s.segs),
		Evicted: s.evicted, Refused: s.refused, Corrupt: s.corrupt, LossRecords: s.lossRecs, Fresh: s.fresh,
		LostIO: s.ioLost, IOErrors: s.ioErrors,
	}
	if s.failErr != nil {
		st.Failing = s.failErr.Error()
	}
	for _, g := range s.segs {
		if g.count == 0 || g.last <= s.acked {
			continue
		}
		if g.first > s.acked {
			st.Records += g.count
			if st.OldestUnacked.IsZero() && len(g.index) > 0 {
				st.OldestUnacked = time.Unix(0, g.index[0].time)
			}
			continue
		}
		// Partly acknowledged: assume no gaps after the acknowledgement.
		st.Records += int64(g.last - s.acked)
		i := sort.Search(len(g.index), func(i int) bool { return g.index[i].seq > s.acked })
		if i > 0 {
			i--
		}
		if st.OldestUnacked.IsZero() && len(g.index) > 0 {
			st.OldestUnacked = time.Unix(0, g.index[i].time)
		}
	}
	return st
}

// Close writes any pending loss record, syncs and releases the spool directory.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	now := time.Now()
	s.lastTry = time.Time{} // one last try, whenever the previous one was
	var err error
	if !s.repair(now) {
		err = fmt.Errorf("%w: %d lost records could not be reported: free space on the spool's filesystem before restarting", s.failErr, s.pending.Total())
		s.log.Error("spool: closing while the disk refuses writes; the loss record could not be written", "lost", s.pending.Total(), "err", s.failErr)
	} else {
		if s.pending.Total() > 0 {
			err = s.writeLoss(now)
		}
		if e := s.syncLocked(); err == nil {
			err = e
		}
	}
	s.closed = true
	s.closeFiles()
	return err
}

func (s *Spool) closeFiles() {
	if s.active != nil {
		s.active.Close()
	}
	if s.ackFile != nil {
		s.ackFile.Close()
	}
	if s.lock != nil {
		s.lock.Close() // releases the flock
	}
}
