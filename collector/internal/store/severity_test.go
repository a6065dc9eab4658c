package store

import (
	"context"
	"path/filepath"
	"testing"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestSeverityIndexAndBackfill: the severity column holds SeverityOf (a stamped severity wins), the
// min_severity filter uses it, and rows stored with severity 0 (before migration 3) are filled in by backfillSeverity (run at Open with Options.Maintain).
func TestSeverityIndexAndBackfill(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		evs := []*pb.Event{
			memEvent("alpha", 1, "gdb", pb.Decision_DECISION_DENIED),         // high
			memEvent("alpha", 2, "perf", pb.Decision_DECISION_ALLOWED_AUDIT), // critical
			memEvent("alpha", 3, "ok", pb.Decision_DECISION_ALLOWED_POLICY),  // info
			memEvent("alpha", 4, "gdb", pb.Decision_DECISION_DENIED),         // stamped low by its rule
		}
		evs[3].Severity = pb.Severity_SEVERITY_LOW
		if _, err := s.Append(ctx, "alpha", evs, nil); err != nil {
			t.Fatal(err)
		}
		check := func(min pb.Severity, want int) {
			t.Helper()
			got, _, err := s.List(ctx, &pb.EventFilter{MinSeverity: min}, 100, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != want {
				t.Errorf("min_severity %v: %d events, want %d", min, len(got), want)
			}
		}
		check(pb.Severity_SEVERITY_UNSPECIFIED, 4)
		check(pb.Severity_SEVERITY_LOW, 3)
		check(pb.Severity_SEVERITY_HIGH, 2)
		check(pb.Severity_SEVERITY_CRITICAL, 1)

		zeroSeverity(t, s)
		check(pb.Severity_SEVERITY_HIGH, 0)
		if err := s.backfillSeverity(ctx); err != nil {
			t.Fatal(err)
		}
		check(pb.Severity_SEVERITY_HIGH, 2)
		check(pb.Severity_SEVERITY_LOW, 3)
	})
}

// TestMaintainOnlyWhenAsked: a read-only open (verify, checkpoint: MustExist, no Maintain) neither
// fills in severities nor analyzes (it writes nothing); the serving collector's open (Maintain) does.
func TestMaintainOnlyWhenAsked(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "events.db")
	s := open(t, path)
	if _, err := s.Append(ctx, "alpha", seqEvents("alpha", 1, 3), nil); err != nil {
		t.Fatal(err)
	}
	zeroSeverity(t, s)
	s.Close()
	zeros := func(opts Options) (n int, analyzed bool) {
		t.Helper()
		opts.DSN = path
		s, err := Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.DB().QueryRow(`SELECT COUNT(*) FROM events WHERE severity = 0`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		var stats int
		if err := s.DB().QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'`).Scan(&stats); err != nil {
			t.Fatal(err)
		}
		return n, stats > 0
	}
	if n, analyzed := zeros(Options{MustExist: true}); n != 3 || analyzed {
		t.Fatalf("read-only open: %d rows with severity 0 (want 3 untouched), analyzed %v (want false)", n, analyzed)
	}
	if n, analyzed := zeros(Options{Maintain: true}); n != 0 || !analyzed {
		t.Fatalf("serving open: %d rows with severity 0 (want 0), analyzed %v (want true)", n, analyzed)
	}
}

// zeroSeverity makes every row look stored before schema version 3 (severity 0) as schema version 9
// found it: with the terms of severity 0 its backfill gave them.
func zeroSeverity(t *testing.T, s *Store) {
	t.Helper()
	for _, q := range []string{`UPDATE events SET severity = 0`,
		`INSERT INTO event_terms (field, value, block) SELECT DISTINCT 4, '0', id / 1024 FROM events WHERE TRUE ON CONFLICT (field, value, block) DO NOTHING`} {
		if _, err := s.DB().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
}
