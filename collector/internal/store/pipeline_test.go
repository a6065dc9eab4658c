package store

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/keyguard/keyguard/collector/pgtest"
)

// TestAppendContinuing: an append continuing one not yet finished (AppendStart with after) is stored
// exactly when the append before it commits and nothing else moved the host's row; otherwise it stores
// nothing, says ErrStale, and the ordinary append of the same batch afterwards stores it once. The
// chain verifies in every case.
func TestAppendContinuing(t *testing.T) {
	ctx := context.Background()
	prep := func(t *testing.T, host string, from, to uint64) []*Prepared {
		p, err := Prepare(host, seqEvents(host, from, to))
		if err != nil {
			t.Fatal(err)
		}
		return []*Prepared{p}
	}
	type outcome struct {
		stale      bool   // the continuing append's Finish fails with ErrStale
		staleCount int    // events stored then
		stored     int    // events stored in the end (after the ordinary append again where stale)
		acked      uint64 // acknowledged in the end
	}
	var held *sql.Tx // a transaction holding the host's row
	for _, tc := range []struct {
		name string
		// between runs after the continuing append is started: it finishes or aborts the first one, and
		// may write the host another way.
		between func(t *testing.T, s *Store, first *Appending)
		want    outcome
	}{
		{"first commits", func(t *testing.T, s *Store, first *Appending) {
			if _, err := first.Finish(ctx); err != nil {
				t.Fatal(err)
			}
		}, outcome{stored: 20, acked: 20}},
		{"first rolls back", func(t *testing.T, s *Store, first *Appending) {
			first.Abort()
		}, outcome{stale: true, staleCount: 0, stored: 10, acked: 0}},
		{"another writer holds the host's row", func(t *testing.T, s *Store, first *Appending) {
			if _, err := first.Finish(ctx); err != nil {
				t.Fatal(err)
			}
			tx, err := s.DB().BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tx.Rollback() })
			var acked int64
			if err := tx.QueryRowContext(ctx, `SELECT acked_seq FROM hosts WHERE host = $1 FOR UPDATE`, "h").Scan(&acked); err != nil {
				t.Fatal(err)
			}
			held = tx
		}, outcome{stale: true, staleCount: 10, stored: 20, acked: 20}},
		{"another writer after the first", func(t *testing.T, s *Store, first *Appending) {
			if _, err := first.Finish(ctx); err != nil {
				t.Fatal(err)
			}
			// Not events (their chain positions would wait on the continuing append's rows): the
			// host's counts, as retention moves them.
			if _, err := s.DB().ExecContext(ctx, `UPDATE hosts SET event_count = event_count - 1 WHERE host = $1`, "h"); err != nil {
				t.Fatal(err)
			}
		}, outcome{stale: true, staleCount: 10, stored: 20, acked: 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, pgtest.NewDatabase(t))
			first, err := s.AppendStart(ctx, "h", prep(t, "h", 1, 10), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			second, err := s.AppendStart(ctx, "h", prep(t, "h", 11, 20), nil, first)
			if err != nil {
				first.Abort()
				t.Fatalf("continuing append: %v", err)
			}
			held = nil
			tc.between(t, s, first)
			res, err := second.Finish(ctx) // at once, not waiting for a lock held
			if held != nil {
				held.Rollback()
			}
			if stale := errors.Is(err, ErrStale); stale != tc.want.stale || (err != nil && !stale) {
				t.Fatalf("continuing append's Finish: %v, want stale %v", err, tc.want.stale)
			}
			if err == nil && (res.Stored != 10 || res.Acked != 20) {
				t.Fatalf("continuing append: %+v, want 10 stored, acked 20", res)
			}
			if tc.want.stale {
				if n := count(t, s, "h"); n != tc.want.staleCount {
					t.Fatalf("%d events stored after a stale append, want %d", n, tc.want.staleCount)
				}
				if _, err := s.AppendPrepared(ctx, "h", prep(t, "h", 11, 20), nil); err != nil {
					t.Fatalf("ordinary append again: %v", err)
				}
			}
			if n := count(t, s, "h"); n != tc.want.stored {
				t.Errorf("%d events stored, want %d", n, tc.want.stored)
			}
			acked, err := s.Acked(ctx, "h")
			if err != nil || acked != tc.want.acked {
				t.Errorf("acked %d (%v), want %d", acked, err, tc.want.acked)
			}
			reports, err := s.Verify(ctx, []string{"h"})
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.stored > 0 && (len(reports) != 1 || !reports[0].GetOk()) {
				t.Errorf("chain does not verify: %v", reports)
			}
		})
	}
}

// TestAppendContinuingRefused: where the next batch cannot be linked without reading what is stored,
// or on SQLite, AppendStart with after refuses at once with ErrStale and stores nothing.
func TestAppendContinuingRefused(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := func(from, to uint64) []*Prepared {
			pr, err := Prepare("h", seqEvents("h", from, to))
			if err != nil {
				t.Fatal(err)
			}
			return []*Prepared{pr}
		}
		first, err := s.AppendStart(ctx, "h", p(1, 10), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name    string
			batches []*Prepared
			skipped []Range
		}{
			{"hole", p(12, 20), nil},
			{"replay", p(5, 15), nil},
			{"skipped range", p(11, 20), []Range{{21, 30}}},
		} {
			if s.Backend() == SQLite && tc.name != "hole" {
				continue
			}
			a, err := s.AppendStart(ctx, "h", tc.batches, tc.skipped, first)
			if !errors.Is(err, ErrStale) {
				if a != nil {
					a.Abort()
				}
				t.Errorf("%s: AppendStart after an unfinished append: %v, want ErrStale", tc.name, err)
			}
		}
		if res, err := first.Finish(ctx); err != nil || res.Acked != 10 {
			t.Fatalf("first append: %+v %v", res, err)
		}
		if n := count(t, s, "h"); n != 10 {
			t.Errorf("%d events stored, want 10", n)
		}
	})
}
