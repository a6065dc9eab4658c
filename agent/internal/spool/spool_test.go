package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const (
	kindLoss   uint8 = 0
	kindDeny   uint8 = 1
	kindAllow  uint8 = 2
	kindHealth uint8 = 3
)

// encodeLoss is a test loss encoding: "LOSS" u64 unknown, then (u8 kind, u64 count) pairs.
func encodeLoss(seq uint64, l Loss, dst []byte) ([]byte, error) {
	dst = append(dst, "LOSS"...)
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	dst = binary.LittleEndian.AppendUint64(dst, l.Unknown)
	kinds := make([]int, 0, len(l.ByKind))
	for k := range l.ByKind {
		kinds = append(kinds, int(k))
	}
	sort.Ints(kinds)
	for _, k := range kinds {
		dst = append(dst, byte(k))
		dst = binary.LittleEndian.AppendUint64(dst, l.ByKind[uint8(k)])
	}
	return dst, nil
}

func decodeLoss(t *testing.T, p []byte) (seq uint64, l Loss) {
	t.Helper()
	if !bytes.HasPrefix(p, []byte("LOSS")) {
		t.Fatalf("not a loss payload: %q", p)
	}
	p = p[4:]
	seq = binary.LittleEndian.Uint64(p)
	l.Unknown = binary.LittleEndian.Uint64(p[8:])
	l.ByKind = map[uint8]uint64{}
	for p = p[16:]; len(p) > 0; p = p[9:] {
		l.ByKind[p[0]] += binary.LittleEndian.Uint64(p[1:])
	}
	return seq, l
}

func testConfig(dir string) Config {
	return Config{Dir: dir, EncodeLoss: encodeLoss, LossKind: kindLoss}
}

func open(t *testing.T, cfg Config) *Spool {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// payloadFor is a test payload that embeds its sequence number, as the real event encoding does.
func payloadFor(seq uint64, kind uint8, size int) []byte {
	p := fmt.Appendf(nil, "seq=%d kind=%d|", seq, kind)
	for len(p) < size {
		p = append(p, byte('a'+seq%26))
	}
	return p
}

func appendN(t *testing.T, s *Spool, n int, kind uint8, prio Priority, size int) []uint64 {
	t.Helper()
	var seqs []uint64
	for range n {
		seq, ok, err := s.Append(kind, prio, func(seq uint64, dst []byte) ([]byte, error) {
			return append(dst, payloadFor(seq, kind, size)...), nil
		})
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		if ok {
			seqs = append(seqs, seq)
		}
	}
	return seqs
}

type readRec struct {
	seq  uint64
	kind uint8
	prio Priority
	data []byte
}

func readAll(t *testing.T, s *Spool, from uint64) []readRec {
	t.Helper()
	r := s.NewReader(from)
	defer r.Close()
	var out []readRec
	for {
		n, err := r.Next(1000, 1<<20, func(rec Record) error {
			out = append(out, readRec{rec.Seq, rec.Kind, rec.Priority, bytes.Clone(rec.Payload)})
			return nil
		})
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if n == 0 {
			return out
		}
	}
}

// checkPayloads verifies that each record carries the payload written for its sequence number.
func checkPayloads(t *testing.T, recs []readRec) {
	t.Helper()
	var prev uint64
	for _, r := range recs {
		if r.seq <= prev {
			t.Fatalf("sequence %d after %d", r.seq, prev)
		}
		prev = r.seq
		if r.kind == kindLoss {
			continue
		}
		want := fmt.Sprintf("seq=%d kind=%d|", r.seq, r.kind)
		if !bytes.HasPrefix(r.data, []byte(want)) {
			t.Fatalf("record %d payload %q, want prefix %q", r.seq, r.data[:min(len(r.data), 40)], want)
		}
	}
}

func TestAppendSyncReadAckReopen(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.MaxBytes = 8 << 20
	cfg.SegmentBytes = 256 << 10
	s := open(t, cfg)

	seqs := appendN(t, s, 100, kindAllow, PriorityLow, 200)
	if len(readAll(t, s, 1)) != 0 {
		t.Fatal("records readable before Sync")
	}
	// Sealing a full segment syncs it; the records of the active one wait for Sync.
	seqs = append(seqs, appendN(t, s, 4900, kindAllow, PriorityLow, 200)...)
	if n := len(readAll(t, s, 1)); n == 0 || n == 5000 {
		t.Fatalf("%d of 5000 records readable before Sync; want those of sealed segments only", n)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, s, 1)
	if len(recs) != 5000 || recs[0].seq != 1 || recs[4999].seq != 5000 || seqs[4999] != 5000 {
		t.Fatalf("read %d records, want 1..5000", len(recs))
	}
	checkPayloads(t, recs)
	if st := s.Stats(); st.Segments < 4 || st.Records != 5000 || st.DurableSeq != 5000 {
		t.Fatalf("stats after 5000 appends: %+v", st)
	}

	if err := s.Ack(2500); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if before.Records != 2500 || before.AckedSeq != 2500 {
		t.Fatalf("stats after ack 2500: %+v", before)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, cfg)
	defer s.Close()
	st := s.Stats()
	if st.NextSeq != 5001 || st.AckedSeq != 2500 {
		t.Fatalf("after reopen NextSeq=%d AckedSeq=%d, want 5001, 2500", st.NextSeq, st.AckedSeq)
	}
	if st.Bytes >= before.Bytes+1 || st.Bytes < int64(2500*(200+RecordOverhead)) {
		t.Fatalf("after reopen %d bytes on disk; before %d", st.Bytes, before.Bytes)
	}
	appendN(t, s, 100, kindDeny, PriorityKeep, 50)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	recs = readAll(t, s, st.AckedSeq+1)
	if len(recs) != 2600 || recs[0].seq != 2501 || recs[len(recs)-1].seq != 5100 {
		t.Fatalf("read %d records from %d..%d, want 2501..5100", len(recs), recs[0].seq, recs[len(recs)-1].seq)
	}
	checkPayloads(t, recs)

	if err := s.Ack(5100); err != nil {
		t.Fatal(err)
	}
	st = s.Stats()
	if st.Segments != 1 || st.Records != 0 || st.Bytes > cfg.SegmentBytes {
		t.Fatalf("after acknowledging everything: %+v", st)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "seg-*"))
	if len(files) != 1 {
		t.Fatalf("segment files left after full ack: %v", files)
	}
}

func TestSecondOpenRefused(t *testing.T) {
	cfg := testConfig(t.TempDir())
	s := open(t, cfg)
	defer s.Close()
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open of the same directory: err = %v, want 'in use'", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no dir", func(c *Config) { c.Dir = "" }, "no directory"},
		{"no loss encoder", func(c *Config) { c.EncodeLoss = nil }, "loss encoder"},
		{"cap below two segments", func(c *Config) { c.MaxBytes = 100 << 10; c.SegmentBytes = 64 << 10 }, "too small"},
		{"record limit too small", func(c *Config) { c.MaxRecordBytes = 10 }, "maximum record size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t.TempDir())
			tc.mod(&cfg)
			_, err := Open(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestRecordTooLarge(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MaxRecordBytes = 4096
	s := open(t, cfg)
	defer s.Close()
	_, _, err := s.Append(kindAllow, PriorityLow, func(_ uint64, dst []byte) ([]byte, error) {
		return append(dst, make([]byte, 5000)...), nil
	})
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("err = %v", err)
	}
	if st := s.Stats(); st.NextSeq != 1 {
		t.Fatalf("a refused record consumed a sequence number: %+v", st)
	}
}

// segFiles returns the segment files in order.
func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// recordEnds returns the file offsets at which each complete record in a segment ends.
func recordEnds(t *testing.T, path string) []int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ends []int64
	off := int64(len(segmentMagic))
	for off < int64(len(data)) {
		off += frameHeaderSize + int64(binary.LittleEndian.Uint32(data[off:]))
		ends = append(ends, off)
	}
	return ends
}

// TestTornTailRecovery cuts or damages the newest segment the way a crash can, and checks that
// Open keeps exactly the complete records before the damage and continues the numbering.
func TestTornTailRecovery(t *testing.T) {
	type damage func(t *testing.T, path string, ends []int64, rng *rand.Rand) (keep int)
	truncateAt := func(off int64, keep int) damage {
		return func(t *testing.T, path string, ends []int64, _ *rand.Rand) int {
			if err := os.Truncate(path, off); err != nil {
				t.Fatal(err)
			}
			return keep
		}
	}
	cases := []struct {
		name string
		dmg  func(ends []int64) damage
	}{
		{"clean", func(ends []int64) damage { return truncateAt(ends[len(ends)-1], len(ends)) }},
		{"cut inside last header", func(ends []int64) damage { return truncateAt(ends[len(ends)-2]+3, len(ends)-1) }},
		{"cut inside last body", func(ends []int64) damage { return truncateAt(ends[len(ends)-1]-1, len(ends)-1) }},
		{"cut inside segment header", func(ends []int64) damage { return truncateAt(5, 0) }},
		{"cut to empty file", func(ends []int64) damage { return truncateAt(0, 0) }},
		{"random cut", func(ends []int64) damage {
			return func(t *testing.T, path string, ends []int64, rng *rand.Rand) int {
				off := int64(len(segmentMagic)) + rng.Int64N(ends[len(ends)-1]-int64(len(segmentMagic)))
				if err := os.Truncate(path, off); err != nil {
					t.Fatal(err)
				}
				return sort.Search(len(ends), func(i int) bool { return ends[i] > off })
			}
		}},
		{"zero-filled tail", func(ends []int64) damage {
			return func(t *testing.T, path string, ends []int64, _ *rand.Rand) int {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(make([]byte, 4096))
				f.Close()
				return len(ends)
			}
		}},
		{"garbage tail", func(ends []int64) damage {
			return func(t *testing.T, path string, ends []int64, rng *rand.Rand) int {
				junk := make([]byte, 3000)
				for i := range junk {
					junk[i] = byte(rng.UintN(256))
				}
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(junk)
				f.Close()
				return len(ends)
			}
		}},
		{"bit flip in last record", func(ends []int64) damage {
			return func(t *testing.T, path string, ends []int64, _ *rand.Rand) int {
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				var b [1]byte
				off := ends[len(ends)-1] - 10
				f.ReadAt(b[:], off)
				b[0] ^= 0x40
				f.WriteAt(b[:], off)
				f.Close()
				return len(ends) - 1
			}
		}},
	}
	for i, tc := range cases {
		for rep := range 3 {
			t.Run(fmt.Sprintf("%s/%d", tc.name, rep), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(i), uint64(rep)))
				dir := t.TempDir()
				cfg := testConfig(dir)
				cfg.MaxBytes = 1 << 20
				cfg.SegmentBytes = 32 << 10
				s := open(t, cfg)
				n := 300 + rng.IntN(300)
				for j := 0; j < n; j += 37 {
					appendN(t, s, min(37, n-j), kindAllow, PriorityLow, 20+rng.IntN(300))
					if err := s.Sync(); err != nil {
						t.Fatal(err)
					}
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				files := segFiles(t, dir)
				last := files[len(files)-1]
				ends := recordEnds(t, last)
				if len(ends) < 2 {
					t.Fatalf("newest segment has %d records; test needs more", len(ends))
				}
				firstInLast := uint64(n - len(ends) + 1)
				keep := tc.dmg(ends)(t, last, ends, rng)
				wantLast := firstInLast + uint64(keep) - 1

				s = open(t, cfg)
				defer s.Close()
				st := s.Stats()
				if st.NextSeq != wantLast+1 || st.DurableSeq != wantLast {
					t.Fatalf("after damage: NextSeq=%d DurableSeq=%d, want next %d", st.NextSeq, st.DurableSeq, wantLast+1)
				}
				recs := readAll(t, s, 1)
				if uint64(len(recs)) != wantLast {
					t.Fatalf("read %d records, want %d", len(recs), wantLast)
				}
				checkPayloads(t, recs)
				// The spool goes on from where the valid records end.
				appendN(t, s, 50, kindDeny, PriorityKeep, 40)
				if err := s.Sync(); err != nil {
					t.Fatal(err)
				}
				recs = readAll(t, s, 1)
				if uint64(len(recs)) != wantLast+50 || recs[len(recs)-1].seq != wantLast+50 {
					t.Fatalf("after appending 50: %d records", len(recs))
				}
				checkPayloads(t, recs)
				if fi, err := os.Stat(last); err == nil && keep > 0 && fi.Size() < ends[keep-1] {
					t.Fatalf("segment shorter than its valid records")
				}
			})
		}
	}
}

// TestRandomTruncationAnySegment cuts any segment file (not only the newest) at a random offset, as
// a damaged disk could, and checks that recovery keeps every intact record, reports the destroyed
// ones as lost, and keeps numbering after the highest sequence number seen.
func TestRandomTruncationAnySegment(t *testing.T) {
	for rep := range 20 {
		t.Run(fmt.Sprint(rep), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(42, uint64(rep)))
			dir := t.TempDir()
			cfg := testConfig(dir)
			cfg.MaxBytes = 1 << 20
			cfg.SegmentBytes = 16 << 10
			s := open(t, cfg)
			const n = 600
			appendN(t, s, n, kindAllow, PriorityLow, 100)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			files := segFiles(t, dir)
			victim := files[rng.IntN(len(files))]
			fi, _ := os.Stat(victim)
			cut := rng.Int64N(fi.Size())
			if err := os.Truncate(victim, cut); err != nil {
				t.Fatal(err)
			}

			s = open(t, cfg)
			defer s.Close()
			recs := readAll(t, s, 1)
			checkPayloads(t, recs)
			var lost, lossRecs uint64
			for _, r := range recs {
				if r.kind == kindLoss {
					_, l := decodeLoss(t, r.data)
					lost += l.Unknown
					lossRecs++
				}
			}
			if victim != files[len(files)-1] {
				// Loss of a sealed segment's records is reported at the next sync.
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s = open(t, cfg)
				recs = readAll(t, s, 1)
				checkPayloads(t, recs)
				for _, r := range recs {
					if r.kind == kindLoss {
						_, l := decodeLoss(t, r.data)
						lost += l.Unknown
						lossRecs++
					}
				}
			}
			data := uint64(len(recs)) - lossRecs
			if victim == files[len(files)-1] {
				// A cut newest segment is an unsynced tail: not a loss, the numbering resumes.
				if lost != 0 {
					t.Fatalf("tail cut reported as loss of %d", lost)
				}
				if recs[len(recs)-1].seq != data {
					t.Fatalf("last seq %d with %d records: numbering has gaps", recs[len(recs)-1].seq, data)
				}
			} else if data+lost != n {
				t.Fatalf("%d records survive + %d reported lost != %d written", data, lost, n)
			}
		})
	}
}

// TestFullSpoolPolicy fills a small spool with a mix of priorities and checks who survives.
func TestFullSpoolPolicy(t *testing.T) {
	type batch struct {
		n    int
		kind uint8
		prio Priority
	}
	cases := []struct {
		name    string
		batches []batch
		// survivors: kinds of which every record must still be in the spool.
		allKept []uint8
		// kinds that must have lost records.
		someLost []uint8
	}{
		{
			name:     "low evicted for keep",
			batches:  []batch{{600, kindAllow, PriorityLow}, {600, kindDeny, PriorityKeep}, {600, kindAllow, PriorityLow}, {600, kindDeny, PriorityKeep}},
			allKept:  []uint8{kindDeny},
			someLost: []uint8{kindAllow},
		},
		{
			name:     "lowest class goes first",
			batches:  []batch{{700, kindHealth, PriorityNormal}, {700, kindAllow, PriorityLow}, {600, kindDeny, PriorityKeep}},
			allKept:  []uint8{kindDeny, kindHealth},
			someLost: []uint8{kindAllow},
		},
		{
			name:     "same class evicts oldest",
			batches:  []batch{{3000, kindAllow, PriorityLow}},
			someLost: []uint8{kindAllow},
		},
		{
			name:     "low refused when full of keep",
			batches:  []batch{{2200, kindDeny, PriorityKeep}, {500, kindAllow, PriorityLow}},
			someLost: []uint8{kindAllow, kindDeny},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(dir)
			cfg.MaxBytes = 256 << 10
			cfg.SegmentBytes = 16 << 10
			s := open(t, cfg)
			written := map[uint8]int{}
			stored := map[uint8]map[uint64]bool{}
			for _, b := range tc.batches {
				for i := range b.n {
					seqs := appendN(t, s, 1, b.kind, b.prio, 150)
					written[b.kind]++
					if stored[b.kind] == nil {
						stored[b.kind] = map[uint64]bool{}
					}
					for _, q := range seqs {
						stored[b.kind][q] = true
					}
					if i%50 == 0 {
						if err := s.Sync(); err != nil {
							t.Fatal(err)
						}
					}
					if st := s.Stats(); st.Bytes > cfg.MaxBytes+s.reserve {
						t.Fatalf("spool grew to %d bytes, cap %d + reserve %d", st.Bytes, cfg.MaxBytes, s.reserve)
					}
				}
			}
			if err := s.Close(); err != nil { // writes pending loss if room
				t.Fatal(err)
			}
			s = open(t, cfg)
			defer s.Close()
			// Make room so a pending refusal can be written, then flush it.
			recs := readAll(t, s, 1)
			checkPayloads(t, recs)
			present := map[uint8]int{}
			lost := map[uint8]uint64{}
			for _, r := range recs {
				if r.kind == kindLoss {
					_, l := decodeLoss(t, r.data)
					for k, c := range l.ByKind {
						lost[k] += c
					}
					if r.prio != PriorityKeep {
						t.Fatalf("loss record with priority %d", r.prio)
					}
					continue
				}
				present[r.kind]++
			}
			for _, k := range tc.allKept {
				if present[k] != written[k] || lost[k] != 0 {
					t.Errorf("kind %d: %d of %d kept, %d reported lost; want all kept", k, present[k], written[k], lost[k])
				}
			}
			for _, k := range tc.someLost {
				if lost[k] == 0 {
					t.Errorf("kind %d: no loss reported (%d of %d kept)", k, present[k], written[k])
				}
			}
			// Accounting: every record written is either in the spool or reported lost.
			for k, w := range written {
				if uint64(present[k])+lost[k] != uint64(w) {
					t.Errorf("kind %d: %d present + %d reported lost != %d written", k, present[k], lost[k], w)
				}
			}
			st := s.Stats()
			if st.Bytes > cfg.MaxBytes+s.reserve {
				t.Errorf("spool is %d bytes, cap %d", st.Bytes, cfg.MaxBytes)
			}
		})
	}
}

// TestRefusalReportedAfterAck fills the spool with PriorityKeep records so that further records
// are refused, then acknowledges some, and checks the refusal turns into a loss record.
func TestRefusalReportedAfterAck(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MaxBytes = 128 << 10
	cfg.SegmentBytes = 16 << 10
	s := open(t, cfg)
	defer s.Close()
	appendN(t, s, 2000, kindDeny, PriorityKeep, 100)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Refused == 0 {
		t.Fatalf("no refusal with 2000 records in a 128 KiB spool: %+v", st)
	}
	if err := s.Ack(st.DurableSeq / 2); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 1, kindDeny, PriorityKeep, 100) // loss may now fit; Close writes it
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, cfg)
	var lost uint64
	for _, r := range readAll(t, s, 1) {
		if r.kind == kindLoss {
			_, l := decodeLoss(t, r.data)
			lost += l.ByKind[kindDeny]
		}
	}
	if lost != st.Refused {
		t.Fatalf("loss records report %d refused, stats said %d", lost, st.Refused)
	}
}

// TestReaderDuringEviction reads while appends evict and compact segments underneath the reader.
func TestReaderDuringEviction(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MaxBytes = 128 << 10
	cfg.SegmentBytes = 8 << 10
	s := open(t, cfg)
	defer s.Close()
	r := s.NewReader(1)
	defer r.Close()
	var prev uint64
	got := 0
	for i := range 40 {
		prio := PriorityLow
		kind := kindAllow
		if i%3 == 0 {
			prio, kind = PriorityKeep, kindDeny
		}
		appendN(t, s, 100, kind, prio, 120)
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Next(70, 1<<20, func(rec Record) error {
			if rec.Seq <= prev {
				t.Fatalf("reader went back: %d after %d", rec.Seq, prev)
			}
			if rec.Kind != kindLoss && !bytes.HasPrefix(rec.Payload, fmt.Appendf(nil, "seq=%d ", rec.Seq)) {
				t.Fatalf("record %d has payload %q", rec.Seq, rec.Payload[:20])
			}
			prev = rec.Seq
			got++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			if err := s.Ack(prev); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got == 0 || s.Stats().Corrupt != 0 {
		t.Fatalf("read %d records; stats %+v", got, s.Stats())
	}
}

func reencodeTest(newSeq uint64, payload, dst []byte) []byte {
	// Test payloads start "seq=N kind=K|": rewrite N.
	rest := payload[bytes.IndexByte(payload, ' '):]
	return append(fmt.Appendf(dst, "seq=%d", newSeq), rest...)
}

func copyDir(t *testing.T, from, to string, rename func(string) string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "LOCK" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, rename(e.Name())), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRenumber moves unacknowledged records above numbers a collector already holds, and checks
// that an interrupted renumbering is completed or discarded by Open depending on its commit point.
func TestRenumber(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.MaxBytes = 1 << 20
	cfg.SegmentBytes = 8 << 10
	s := open(t, cfg)
	appendN(t, s, 300, kindDeny, PriorityKeep, 60)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(100); err != nil {
		t.Fatal(err)
	}
	before := t.TempDir()
	copyDir(t, dir, before, func(n string) string { return n })

	if first, err := s.Renumber(10001, reencodeTest); err != nil || first != 10001 {
		t.Fatalf("Renumber(10001) = %d, %v", first, err)
	}
	check := func(s *Spool) {
		t.Helper()
		st := s.Stats()
		if st.AckedSeq != 10000 || st.NextSeq != 10201 {
			t.Fatalf("after renumbering: acked %d next %d, want 10000 and 10201", st.AckedSeq, st.NextSeq)
		}
		recs := readAll(t, s, 1)
		if len(recs) != 200 || recs[0].seq != 10001 || recs[199].seq != 10200 {
			t.Fatalf("after renumbering read %d records", len(recs))
		}
		checkPayloads(t, recs)
	}
	check(s)
	appendN(t, s, 1, kindDeny, PriorityKeep, 60)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if recs := readAll(t, s, 10201); len(recs) != 1 || recs[0].seq != 10201 {
		t.Fatalf("record after renumbering: %+v", recs)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	after := t.TempDir()
	copyDir(t, dir, after, func(n string) string { return n })

	// A target below numbers already assigned moves the records above them instead.
	s = open(t, cfg)
	if first, err := s.Renumber(50, reencodeTest); err != nil || first != 10202 {
		t.Fatalf("Renumber(50) after 10201 = %d, %v; want 10202", first, err)
	}
	if recs := readAll(t, s, 10202); len(recs) != 201 || recs[200].seq != 10402 {
		t.Fatalf("after second renumbering read %d records", len(recs))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	t.Run("interrupted before commit", func(t *testing.T) {
		d := t.TempDir()
		copyDir(t, before, d, func(n string) string { return n })
		// New segments written, acknowledgement not yet moved.
		copyDir(t, after, d, func(n string) string {
			if strings.HasPrefix(n, "seg-") {
				return n + renumSuffix
			}
			return "ignored-" + n
		})
		s := open(t, testConfig(d))
		defer s.Close()
		st := s.Stats()
		if st.AckedSeq != 100 || st.NextSeq != 301 {
			t.Fatalf("uncommitted renumbering not discarded: %+v", st)
		}
		if recs := readAll(t, s, 101); len(recs) != 200 || recs[0].seq != 101 {
			t.Fatalf("read %d records after discarding", len(recs))
		}
	})
	t.Run("interrupted after commit", func(t *testing.T) {
		d := t.TempDir()
		copyDir(t, before, d, func(n string) string { return n })
		copyDir(t, after, d, func(n string) string {
			if strings.HasPrefix(n, "seg-") {
				return n + renumSuffix
			}
			return n // the committed acknowledgement file
		})
		s := open(t, testConfig(d))
		defer s.Close()
		recs := readAll(t, s, 1)
		if len(recs) != 201 || recs[0].seq != 10001 || recs[200].seq != 10201 {
			for _, r := range recs {
				t.Logf("seq %d %q", r.seq, r.data[:12])
			}
			t.Fatalf("committed renumbering not completed: %d records", len(recs))
		}
		checkPayloads(t, recs)
		if st := s.Stats(); st.NextSeq != 10202 || st.AckedSeq != 10000 {
			t.Fatalf("after completing: %+v", st)
		}
	})
}

// BenchmarkAppendSync appends 300-byte records and syncs every 1000, as the export writer batches.
func BenchmarkAppendSync(b *testing.B) {
	cfg := testConfig(b.TempDir())
	cfg.MaxBytes = 4 << 30
	s, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	payload := make([]byte, 300)
	i := 0
	for b.Loop() {
		if _, _, err := s.Append(kindDeny, PriorityKeep, func(_ uint64, dst []byte) ([]byte, error) { return append(dst, payload...), nil }); err != nil {
			b.Fatal(err)
		}
		if i++; i%1000 == 0 {
			if err := s.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(int64(len(payload)))
}

// A new spool is Fresh until its numbering was reconciled with the collector (MarkSynced) or an
// acknowledgement was recorded, and stays reconciled across reopening.
func TestFreshUntilSynced(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(testConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Stats().Fresh {
		t.Fatal("a new spool is not Fresh")
	}
	if err := s.MarkSynced(); err != nil {
		t.Fatal(err)
	}
	if s.Stats().Fresh {
		t.Fatal("still Fresh after MarkSynced")
	}
	s.Close()
	s, err = Open(testConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Stats().Fresh {
		t.Fatal("Fresh again after reopening a synced spool")
	}
}
