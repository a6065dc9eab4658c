package store

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// termFilters are filters on every term field, matching some events of termEvents and not others.
func termFilters() []*pb.EventFilter {
	return []*pb.EventFilter{
		{Process: "gdb"}, {Process: "/usr/bin/perf"}, {Process: "signer"}, {Pid: 101}, {Pid: 42},
		{Rule: "signer"}, {Rule: "none"},
		{Decisions: []pb.Decision{pb.Decision_DECISION_ALLOWED_AUDIT}},
		{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_MEMORY_ACCESS}}, {Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_CORE_DUMP}},
		{MinSeverity: pb.Severity_SEVERITY_CRITICAL},
		{Hosts: []string{"b"}, Process: "perf", Decisions: []pb.Decision{pb.Decision_DECISION_ALLOWED_AUDIT}},
	}
}

// appendTermEvents stores 5,000 events of two hosts over several blocks: mostly gdb denied, every
// 700th perf allowed (audit).
func appendTermEvents(t *testing.T, s *Store) {
	t.Helper()
	for _, host := range []string{"a", "b"} {
		for from := uint64(1); from <= 2500; from += 500 {
			var evs []*pb.Event
			for seq := from; seq < from+500; seq++ {
				if seq%700 == 0 {
					evs = append(evs, memEvent(host, seq, "perf", pb.Decision_DECISION_ALLOWED_AUDIT))
				} else {
					evs = append(evs, memEvent(host, seq, "gdb", pb.Decision_DECISION_DENIED))
				}
			}
			if _, err := s.Append(context.Background(), host, evs, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// listAll pages through every event matching f, newest first.
func listAll(t *testing.T, s *Store, f *pb.EventFilter) []string {
	t.Helper()
	var out []string
	var after *Cursor
	for {
		waitSlots(t, s) // the query budget's rest after the page before
		evs, next, err := s.List(context.Background(), f, 700, after, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			out = append(out, e.GetEvent().GetHost()+"/"+e.GetEvent().GetKind().(*pb.Event_MemoryAccess).MemoryAccess.GetAccessor().GetComm())
		}
		if next == nil {
			return out
		}
		after = next
	}
}

// A filter answers the same events whether the query reads the blocks its terms name or walks the
// time index (many blocks), and grouped counts agree too.
func TestTermsPlansAgree(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		appendTermEvents(t, s)
		for _, f := range termFilters() {
			s.maxScanBlocks = maxScanBlocks
			blocks := listAll(t, s, f)
			groupsBlocks, err := s.GroupEvents(context.Background(), f, 10)
			if err != nil {
				t.Fatal(err)
			}
			s.maxScanBlocks = 0 // every filter with terms walks the time index
			walked := listAll(t, s, f)
			groupsWalked, err := s.GroupEvents(context.Background(), f, 10)
			if err != nil {
				t.Fatal(err)
			}
			var want int
			w := filterWhere(f)
			if err := s.DB().QueryRow(`SELECT COUNT(*) FROM events WHERE `+w.sql(), w.args...).Scan(&want); err != nil {
				t.Fatal(err)
			}
			if len(blocks) != want || len(walked) != want || len(groupsBlocks) != len(groupsWalked) {
				t.Errorf("%v: %d events by blocks, %d by the time index, %d rows match; %d groups vs %d", f, len(blocks), len(walked), want, len(groupsBlocks), len(groupsWalked))
			}
			t.Logf("%v: %d events", f, want)
		}
	})
}

// Schema version 9 fills in the terms of the rows stored before it: a database as version 8 left it
// (per-column indexes, no event_terms) answers every filter as before after the upgrade.
func TestTermsMigration(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			dsn := filepath.Join(t.TempDir(), "events.db")
			indexes := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'events_%'`
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(t)
				indexes = `SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'events' AND indexname LIKE 'events_%' AND indexname NOT LIKE '%key' AND indexname NOT LIKE '%pkey'`
			}
			testTermsMigration(t, dsn, indexes)
		})
	}
}

func testTermsMigration(t *testing.T, dsn, indexes string) {
	s := open(t, dsn)
	appendTermEvents(t, s)
	want := map[int][]string{}
	for i, f := range termFilters() {
		want[i] = listAll(t, s, f)
	}
	// Back to version 8: the terms gone, the indexes back.
	for _, q := range []string{`DROP TABLE event_terms`, `DELETE FROM schema_migrations WHERE version = 9`} {
		if _, err := s.DB().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	for _, ix := range droppedForTerms {
		if _, err := s.DB().Exec(`CREATE INDEX ` + ix + ` ON events (time_ns)`); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = open(t, dsn)
	if v, err := s.SchemaVersion(context.Background()); err != nil || v != 9 {
		t.Fatalf("schema version %d (%v), want 9", v, err)
	}
	var n int
	if err := s.DB().QueryRow(indexes).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d indexes events_* after the upgrade, want 3 (time, host_time, host_receive)", n)
	}
	for i, f := range termFilters() {
		if got := listAll(t, s, f); len(got) != len(want[i]) || len(got) > 0 && got[0] != want[i][0] {
			t.Errorf("%v after the upgrade: %d events, want %d", f, len(got), len(want[i]))
		}
	}
	if reps, err := s.Verify(context.Background(), nil); err != nil || len(reps) != 2 || !reps[0].GetOk() || !reps[1].GetOk() {
		t.Errorf("verify after the upgrade: %v, %v", reps, err)
	}
}

// Retention drops the terms of blocks it emptied, and later appends still find theirs.
func TestTermsRetention(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		appendTermEvents(t, s)
		ctx := context.Background()
		var before, after int
		if err := s.DB().QueryRow(`SELECT COUNT(DISTINCT block) FROM event_terms`).Scan(&before); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"a", "b"} {
			if _, err := s.DB().Exec(`UPDATE events SET receive_ns = 0 WHERE host = $1 AND seq <= 2000`, h); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.DeleteBefore(ctx, base); err != nil {
			t.Fatal(err)
		}
		if err := s.DB().QueryRow(`SELECT COUNT(DISTINCT block) FROM event_terms`).Scan(&after); err != nil {
			t.Fatal(err)
		}
		if after >= before {
			t.Errorf("terms of %d blocks after retention, %d before: want fewer", after, before)
		}
		if got := listAll(t, s, &pb.EventFilter{Process: "perf"}); len(got) != 2 {
			t.Errorf("perf after retention: %d events, want 2 (seq 2100 of each host)", len(got))
		}
	})
}

// verify reports events whose filter terms were deleted (they would vanish from filtered queries).
func TestVerifyDetectsMissingTerms(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		appendTermEvents(t, s)
		ctx := context.Background()
		check := func(wantProblems bool) {
			t.Helper()
			reps, err := s.Verify(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var problems []string
			for _, r := range reps {
				for _, p := range r.GetProblems() {
					problems = append(problems, r.GetHost()+": "+p.GetDetail())
				}
			}
			if (len(problems) > 0) != wantProblems {
				t.Fatalf("problems %v, want some: %v", problems, wantProblems)
			}
			if wantProblems && !strings.Contains(problems[0], `filter term "perf" is missing`) {
				t.Errorf("problem %q, want the missing term named", problems[0])
			}
			t.Logf("%d problems %v", len(problems), problems)
		}
		check(false)
		if _, err := s.DB().Exec(`DELETE FROM event_terms WHERE value = 'perf'`); err != nil {
			t.Fatal(err)
		}
		if got := listAll(t, s, &pb.EventFilter{Process: "perf"}); len(got) != 0 {
			t.Fatalf("perf after its terms were deleted: %d events (the attack hides them)", len(got))
		}
		check(true)
	})
}
