package spool

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a small tmpfs for the test: a real filesystem that really fills up.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs: %v", err)
		}
	})
	return dir
}

// fill writes a file until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("create filler: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return
		}
	}
}

// A spool on a filesystem that fills up loses events, but none in silence: every event that was
// not kept is counted in a loss record, which is delivered once space is back, and the spool takes
// writes again by itself, without a restart.
func TestDiskFullCountedAndResumes(t *testing.T) {
	mnt := mountTmpfs(t, "2m")
	cfg := testConfig(filepath.Join(mnt, "spool"))
	cfg.MaxBytes = 64 << 20 // the filesystem, not the cap, is the limit here
	cfg.SegmentBytes = 256 << 10
	cfg.RetryInterval = 20 * time.Millisecond
	s := open(t, cfg)
	t.Cleanup(func() { s.Close() })

	const before, during, after = 1000, 30000, 1000
	total := 0
	appendSome := func(n int, syncEvery int) {
		for i := range n {
			_, ok, err := s.Append(kindAllow, PriorityNormal, func(seq uint64, dst []byte) ([]byte, error) {
				return append(dst, payloadFor(seq, kindAllow, 200)...), nil
			})
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			total++
			_ = ok // stored now, but maybe not durable: a later failed fsync takes it back
			if i%syncEvery == syncEvery-1 {
				s.Sync() // fails while the disk is full; that is the point
			}
		}
		s.Sync()
	}
	appendSome(before, 100)
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync before filling: %v", err)
	}
	filler := filepath.Join(mnt, "filler")
	fill(t, filler)
	appendSome(during, 100)
	st := s.Stats()
	if st.Failing == "" || st.LostIO == 0 || st.IOErrors == 0 {
		t.Fatalf("after filling the disk: Failing=%q LostIO=%d IOErrors=%d; want a failing spool that counts", st.Failing, st.LostIO, st.IOErrors)
	}
	t.Logf("disk full: %d events appended, %d counted lost, error %q", total, st.LostIO, st.Failing)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * cfg.RetryInterval)
	appendSome(after, 100)
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync after freeing space: %v", err)
	}
	st = s.Stats()
	if st.Failing != "" {
		t.Fatalf("still failing after space came back: %s", st.Failing)
	}

	recs := readAll(t, s, 1)
	var events, lost uint64
	var prev uint64
	for _, r := range recs {
		if r.seq <= prev {
			t.Fatalf("seq %d after %d", r.seq, prev)
		}
		prev = r.seq
		if r.kind == kindLoss {
			_, l := decodeLoss(t, r.data)
			lost += l.Total()
			continue
		}
		events++
	}
	checkPayloads(t, nonLoss(recs))
	if events+lost != uint64(total) {
		t.Errorf("%d events read + %d reported lost = %d, want %d appended: %d lost in silence",
			events, lost, events+lost, total, int64(total)-int64(events+lost))
	}
	if lost != st.LostIO {
		t.Errorf("loss records report %d, Stats.LostIO %d", lost, st.LostIO)
	}
	if events < before+after {
		t.Errorf("only %d events kept; the ones before the disk filled and after it was freed (%d) must all be kept", events, before+after)
	}

	// And it survives a restart with everything in place.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open(t, cfg)
	if got := len(readAll(t, s, 1)); got != len(recs) {
		t.Errorf("after reopen %d records, before %d", got, len(recs))
	}
}

// Close on a still-full disk either gets the loss record onto the disk (the slack of the segment's
// last page may hold it) or says that it could not: never neither.
func TestCloseWhileDiskFull(t *testing.T) {
	mnt := mountTmpfs(t, "1m")
	cfg := testConfig(filepath.Join(mnt, "spool"))
	cfg.MaxBytes = 64 << 20
	cfg.SegmentBytes = 128 << 10
	s := open(t, cfg)
	fill(t, filepath.Join(mnt, "filler"))
	appendN(t, s, 5000, kindDeny, PriorityKeep, 300)
	s.Sync()
	lost := s.Stats().LostIO
	if lost == 0 {
		t.Fatalf("nothing counted lost on a full disk: %+v", s.Stats())
	}
	if err := s.Close(); err != nil {
		t.Logf("Close reports the loss it could not record: %v", err)
		return
	}
	s = open(t, cfg)
	defer s.Close()
	var reported, events uint64
	for _, r := range readAll(t, s, 1) {
		if r.kind == kindLoss {
			_, l := decodeLoss(t, r.data)
			reported += l.Total()
		} else {
			events++
		}
	}
	if reported != lost || events+reported != 5000 {
		t.Errorf("Close returned nil; on disk %d events and %d reported lost (Stats.LostIO %d), want 5000 in all", events, reported, lost)
	}
}

func nonLoss(recs []readRec) []readRec {
	var out []readRec
	for _, r := range recs {
		if r.kind != kindLoss {
			out = append(out, r)
		}
	}
	return out
}
