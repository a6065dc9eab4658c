package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// A query stopped by the query timeout is ErrTooBroad with a message that says what to do; one the
// caller cancelled is not.
func TestQueryTooBroad(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustAppend(t, s, "h", 1, 50)
		if _, _, err := s.List(ctx, &pb.EventFilter{Process: "gdb"}, 10, nil, true); err != nil {
			t.Fatalf("a narrow query: %v", err)
		}
		waitSlots(t, s)
		s.qtimeout = time.Nanosecond
		_, _, err := s.List(ctx, &pb.EventFilter{Process: "gdb"}, 10, nil, true)
		if !errors.Is(err, ErrTooBroad) {
			t.Fatalf("err = %v, want ErrTooBroad", err)
		}
		t.Logf("answer: %v", err)
		// A full query budget: refused within the timeout, saying so.
		waitSlots(t, s)
		s.qtimeout = 100 * time.Millisecond
		for range cap(s.qslots) {
			s.qslots <- struct{}{}
		}
		t0 := time.Now()
		_, _, err = s.List(ctx, nil, 10, nil, true)
		if !errors.Is(err, ErrQueryBusy) || time.Since(t0) > time.Second {
			t.Fatalf("with the budget in use: %v after %s, want ErrQueryBusy within the timeout", err, time.Since(t0))
		}
		for range cap(s.qslots) {
			<-s.qslots
		}
		s.qtimeout = time.Minute
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, _, err := s.List(cctx, nil, 10, nil, true); err == nil || errors.Is(err, ErrTooBroad) {
			t.Fatalf("cancelled by the caller: %v, want a plain error", err)
		}
	})
}

// waitSlots waits until the query slots rested after earlier queries.
func waitSlots(t *testing.T, s *Store) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(s.qslots) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("query slots still taken after 10 s")
		}
	}
}

// Every filter the console and API offer is index-backed: a filter on a value no event holds is
// answered from the filter terms without reading events, and one on values some blocks hold reads
// only those blocks (by id), never the whole table.
func TestEveryFilterIndexed(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "events.db"))
	mustAppend(t, s, "bench", 1, 3000)
	matching := []*pb.EventFilter{
		{Process: "gdb"}, {Pid: 42}, {Rule: "signer"}, {Decisions: []pb.Decision{pb.Decision_DECISION_DENIED}},
		{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_MEMORY_ACCESS}}, {MinSeverity: pb.Severity_SEVERITY_HIGH},
		{Hosts: []string{"bench"}, Rule: "signer", Decisions: []pb.Decision{pb.Decision_DECISION_DENIED}},
	}
	for _, f := range append(worstQueries(), matching...) {
		plan, err := planBlocks(context.Background(), s.DB(), f, s.maxScanBlocks)
		if err != nil {
			t.Fatal(err)
		}
		if plan.restricted && len(plan.blocks) == 0 {
			t.Logf("%v: answered from the filter terms (no block holds the values)", f)
			continue
		}
		w := filterWhere(f)
		q := `EXPLAIN QUERY PLAN ` + s.listSQL(w, plan, "DESC", 51)
		rows, err := s.DB().Query(q, w.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plans []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plans = append(plans, detail)
		}
		rows.Close()
		t.Logf("%v: blocks %v: %v", f, plan.blocks, plans)
		if len(f.GetHosts()) == 0 && !plan.restricted {
			t.Errorf("filter %v is not narrowed by its terms", f)
		}
		for _, p := range plans {
			// "SCAN events" (also "... USING INDEX events_time": every row in time order) reads the
			// whole table when nothing matches; "SEARCH" reads only the matching rows or blocks.
			if strings.HasPrefix(p, "SCAN events") || strings.HasPrefix(p, "SCAN TABLE events") {
				t.Errorf("filter %v scans the table: %v", f, plans)
			}
		}
	}
}

// worstQueries are console filters that match nothing (each on one filter column, newest first): an
// unindexed one scans every row.
func worstQueries() []*pb.EventFilter {
	return []*pb.EventFilter{
		{Process: "no-such-process"},
		{Pid: 999999},
		{Rule: "no-such-rule"},
		{Decisions: []pb.Decision{pb.Decision_DECISION_ALLOWED_BREAK_GLASS}},
		{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_CORE_DUMP}},
		{Hosts: []string{"no-such-host"}},
		{Hosts: []string{"bench"}, Rule: "no-such-rule", Decisions: []pb.Decision{pb.Decision_DECISION_DENIED}},
	}
}

// BenchmarkIngestUnderQueries loads KEYGUARD_BENCH_EVENTS events (default 1,000,000), measures
// ingest alone, then ingest while 8 goroutines run the worst console queries back to back, and
// reports the ratio and the slowest query (each must answer within the query timeout or be refused
// as too broad).
func BenchmarkIngestUnderQueries(b *testing.B) {
	total := uint64(1_000_000)
	if v, err := strconv.ParseUint(os.Getenv("KEYGUARD_BENCH_EVENTS"), 10, 64); err == nil && v > 0 {
		total = v
	}
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "events.db")
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(b)
			}
			s, err := Open(context.Background(), Options{DSN: dsn})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			const batch = 500
			next := uint64(1)
			ingest := func(d time.Duration) float64 {
				start := time.Now()
				n := 0
				for time.Since(start) < d {
					if _, err := s.Append(ctx, "bench", seqEvents("bench", next, next+batch-1), nil); err != nil {
						b.Fatal(err)
					}
					next += batch
					n += batch
				}
				return float64(n) / time.Since(start).Seconds()
			}
			loadStart := time.Now()
			for next <= total {
				if _, err := s.Append(ctx, "bench", seqEvents("bench", next, min(next+batch-1, total)), nil); err != nil {
					b.Fatal(err)
				}
				next = min(next+batch, total+1)
			}
			b.Logf("%s: loaded %d events in %s", backend, total, time.Since(loadStart).Round(time.Second))
			if err := s.Optimize(ctx); err != nil { // what the server does hourly
				b.Fatal(err)
			}
			for _, f := range worstQueries() { // each alone, for the record
				t0 := time.Now()
				_, _, err := s.List(ctx, f, 50, nil, true)
				b.Logf("alone: %v: %s (err %v)", f, time.Since(t0).Round(time.Millisecond), err)
			}
			const window = 10 * time.Second
			for b.Loop() {
				alone := ingest(window)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				var mu sync.Mutex
				var lat []time.Duration
				var refused, answered atomic.Int64
				for i := range 8 {
					wg.Go(func() {
						qs := worstQueries()
						for j := i; ; j++ {
							select {
							case <-stop:
								return
							default:
							}
							t0 := time.Now()
							_, _, err := s.List(ctx, qs[j%len(qs)], 50, nil, true)
							d := time.Since(t0)
							switch {
							case errors.Is(err, ErrTooBroad) || errors.Is(err, ErrQueryBusy):
								refused.Add(1)
							case err != nil:
								b.Error(err)
								return
							default:
								answered.Add(1)
							}
							mu.Lock()
							lat = append(lat, d)
							mu.Unlock()
						}
					})
				}
				loaded := ingest(window)
				close(stop)
				wg.Wait()
				slices.Sort(lat)
				b.ReportMetric(alone, "ingest-alone-ev/s")
				b.ReportMetric(loaded, "ingest-under-queries-ev/s")
				b.ReportMetric(100*loaded/alone, "ingest-kept-%")
				b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "slowest-query-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-query-ms")
				b.ReportMetric(float64(answered.Load()), "queries-answered")
				b.ReportMetric(float64(refused.Load()), "queries-refused")
				fmt.Fprintf(os.Stderr, "%s on %d events: ingest %.0f ev/s alone, %.0f ev/s under 8 query loops (%.0f%%); %d queries answered, %d refused as too broad, slowest %s\n",
					backend, total, alone, loaded, 100*loaded/alone, answered.Load(), refused.Load(), lat[len(lat)-1])
			}
		})
	}
}
