package store

import (
	"context"
	"testing"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// attackLoop is what an agent sends for n attempts of one attack loop of one-shot processes (issue 13):
// the first attempt as an event of its own, then one in-kernel aggregate counting the other n-1.
func attackLoop(host string, seq uint64, n uint64) []*pb.Event {
	first := memEvent(host, seq, "oneshot", pb.Decision_DECISION_DENIED)
	agg := memEvent(host, seq+1, "oneshot", pb.Decision_DECISION_DENIED)
	m := agg.GetMemoryAccess()
	m.Count, m.AccessorProcesses, m.LastAccessorPid = n-1, n, 31337
	m.FirstTime, m.LastTime = timestamppb.New(base), timestamppb.New(base.Add(time.Minute))
	return []*pb.Event{first, agg}
}

// TestGroupSumsAttempts: the grouped counts are attempts, not rows: an aggregate of 99,999 plus its
// first attempt is one group of 100,000 (from 2 events), beside three single denials of another actor;
// and a database stored before schema version 8 is filled in by that migration.
func TestGroupSumsAttempts(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		evs := attackLoop("web1", 1, 100_000)
		for seq := uint64(3); seq <= 5; seq++ {
			evs = append(evs, memEvent("web1", seq, "gdb", pb.Decision_DECISION_DENIED))
		}
		if _, err := s.Append(ctx, "web1", evs, nil); err != nil {
			t.Fatal(err)
		}
		check := func(when string) {
			t.Helper()
			gs, err := s.GroupEvents(ctx, &pb.EventFilter{}, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(gs) != 2 || gs[0].Actor != "/usr/bin/oneshot" || gs[0].Count != 100_000 || gs[0].Events != 2 ||
				gs[1].Actor != "/usr/bin/gdb" || gs[1].Count != 3 || gs[1].Events != 3 {
				t.Fatalf("%s: groups %+v, want /usr/bin/oneshot 100000 attempts in 2 events, then /usr/bin/gdb 3 in 3", when, gs)
			}
		}
		check("stored now")

		// The same rows as a collector before version 8 stored them (no attempts column), migrated.
		if _, err := s.db.ExecContext(ctx, `ALTER TABLE events DROP COLUMN attempts`); err != nil {
			t.Fatal(err)
		}
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := s.apply(ctx, tx, migrationVersion(t, 8)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		check("migrated")
	})
}

func migrationVersion(t *testing.T, v int) migration {
	t.Helper()
	for _, m := range migrations {
		if m.version == v {
			return m
		}
	}
	t.Fatalf("no migration %d", v)
	return migration{}
}
