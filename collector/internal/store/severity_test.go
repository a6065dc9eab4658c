package store

import (
	"context"
	"testing"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestSeverityIndexAndBackfill: the severity column holds SeverityOf (a stamped severity wins), the
// min_severity filter uses it, and rows stored with severity 0 (before migration 3) are filled in at Open.
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

		if _, err := s.DB().ExecContext(ctx, `UPDATE events SET severity = 0`); err != nil {
			t.Fatal(err)
		}
		check(pb.Severity_SEVERITY_HIGH, 0)
		if err := s.backfillSeverity(ctx); err != nil {
			t.Fatal(err)
		}
		check(pb.Severity_SEVERITY_HIGH, 2)
		check(pb.Severity_SEVERITY_LOW, 3)
	})
}
