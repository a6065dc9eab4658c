package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

// backends runs f against a fresh SQLite file and a fresh PostgreSQL database.
func backends(t *testing.T, f func(t *testing.T, s *Store)) {
	t.Run("sqlite", func(t *testing.T) {
		s := open(t, filepath.Join(t.TempDir(), "events.db"))
		f(t, s)
	})
	t.Run("postgres", func(t *testing.T) {
		s := open(t, pgtest.NewDatabase(t))
		f(t, s)
	})
}

func open(t *testing.T, dsn string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{DSN: dsn, Collector: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var base = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func memEvent(host string, seq uint64, comm string, d pb.Decision) *pb.Event {
	return &pb.Event{
		Host: host, Seq: seq, BootId: "boot-1", AgentVersion: "v0.1.0",
		Time: timestamppb.New(base.Add(time.Duration(seq) * time.Millisecond)),
		Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
			Accessor:  &pb.Process{Pid: 100 + uint32(seq%7), Comm: comm, ExePath: "/usr/bin/" + comm},
			Target:    &pb.Process{Pid: 42, Comm: "signer", ExePath: "/opt/signer"},
			Operation: pb.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH,
			Rule:      "signer", PolicyMode: pb.PolicyMode_POLICY_MODE_ENFORCE, Decision: d,
		}},
	}
}

func seqEvents(host string, from, to uint64) []*pb.Event {
	var evs []*pb.Event
	for s := from; s <= to; s++ {
		evs = append(evs, memEvent(host, s, "gdb", pb.Decision_DECISION_DENIED))
	}
	return evs
}

func count(t *testing.T, s *Store, host string) int {
	t.Helper()
	var n int
	if err := s.DB().QueryRow(`SELECT COUNT(*) FROM events WHERE host = $1`, host).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAppendSequences(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		steps := []struct {
			name          string
			events        []*pb.Event
			skipped       []Range
			wantAcked     uint64
			wantStored    int
			wantDups      int
			wantErr       error
			wantRowsAfter int
		}{
			{"first batch in order", seqEvents("h", 1, 10), nil, 10, 10, 0, nil, 10},
			{"exact replay is deduplicated", seqEvents("h", 1, 10), nil, 10, 0, 10, nil, 10},
			{"partial replay plus new", seqEvents("h", 6, 15), nil, 15, 5, 5, nil, 15},
			{"out of order: ahead of a hole", seqEvents("h", 18, 20), nil, 15, 3, 0, nil, 18},
			{"hole filled out of order", seqEvents("h", 16, 17), nil, 20, 2, 0, nil, 20},
			{"gap declared skipped", seqEvents("h", 24, 25), []Range{{21, 23}}, 25, 2, 0, nil, 22},
			{"replay inside skipped range is not stored", seqEvents("h", 22, 22), nil, 25, 0, 1, nil, 22},
			{"same seq different content", []*pb.Event{memEvent("h", 5, "evil", pb.Decision_DECISION_DENIED)}, nil, 0, 0, 0, ErrConflict, 22},
			{"seq zero", []*pb.Event{memEvent("h", 0, "x", pb.Decision_DECISION_DENIED)}, nil, 0, 0, 0, ErrInvalid, 22},
			{"seq far ahead", []*pb.Event{memEvent("h", 25+DefaultMaxAhead+1, "x", pb.Decision_DECISION_DENIED)}, nil, 0, 0, 0, ErrInvalid, 22},
			{"wrong host in batch", []*pb.Event{memEvent("other", 26, "x", pb.Decision_DECISION_DENIED)}, nil, 0, 0, 0, ErrInvalid, 22},
			{"bad skipped range", nil, []Range{{30, 29}}, 0, 0, 0, ErrInvalid, 22},
			{"duplicate within a batch", append(seqEvents("h", 26, 26), seqEvents("h", 26, 26)...), nil, 26, 1, 1, nil, 23},
		}
		for _, st := range steps {
			res, err := s.Append(ctx, "h", st.events, st.skipped)
			if st.wantErr != nil {
				if !errors.Is(err, st.wantErr) {
					t.Fatalf("%s: err = %v, want %v", st.name, err, st.wantErr)
				}
			} else if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			} else if res.Acked != st.wantAcked || res.Stored != st.wantStored || res.Duplicates != st.wantDups {
				t.Fatalf("%s: got %+v, want acked %d stored %d dups %d", st.name, res, st.wantAcked, st.wantStored, st.wantDups)
			}
			if n := count(t, s, "h"); n != st.wantRowsAfter {
				t.Fatalf("%s: %d rows stored, want %d", st.name, n, st.wantRowsAfter)
			}
		}
		acked, err := s.Acked(ctx, "h")
		if err != nil || acked != 26 {
			t.Fatalf("Acked = %d, %v", acked, err)
		}
		reps, err := s.Verify(ctx, nil)
		if err != nil || len(reps) != 1 || !reps[0].Ok || reps[0].EventsChecked != 23 {
			t.Fatalf("verify after appends: %v %v", reps, err)
		}
	})
}

func TestListFiltersAndHostileStrings(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		var evs []*pb.Event
		for i := uint64(1); i <= 30; i++ {
			d := pb.Decision_DECISION_DENIED
			comm := "gdb"
			if i%3 == 0 {
				d, comm = pb.Decision_DECISION_ALLOWED_AUDIT, "perf"
			}
			evs = append(evs, memEvent("alpha", i, comm, d))
		}
		if _, err := s.Append(ctx, "alpha", evs, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append(ctx, "beta", []*pb.Event{memEvent("beta", 1, "gdb", pb.Decision_DECISION_DENIED)}, nil); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name string
			f    *pb.EventFilter
			want int
		}{
			{"all", nil, 31},
			{"host", &pb.EventFilter{Hosts: []string{"beta"}}, 1},
			{"two hosts", &pb.EventFilter{Hosts: []string{"beta", "alpha"}}, 31},
			{"decision", &pb.EventFilter{Decisions: []pb.Decision{pb.Decision_DECISION_ALLOWED_AUDIT}}, 10},
			{"kind", &pb.EventFilter{Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_CORE_DUMP}}, 0},
			{"process comm", &pb.EventFilter{Process: "perf"}, 10},
			{"process exe of target", &pb.EventFilter{Process: "/opt/signer"}, 31},
			{"pid", &pb.EventFilter{Pid: 42}, 31},
			{"time range", &pb.EventFilter{StartTime: timestamppb.New(base.Add(5 * time.Millisecond)), EndTime: timestamppb.New(base.Add(10 * time.Millisecond))}, 5},
			{"rule", &pb.EventFilter{Rule: "signer"}, 31},
			{"injection in host", &pb.EventFilter{Hosts: []string{"alpha' OR '1'='1"}}, 0},
			{"injection in process", &pb.EventFilter{Process: "x'; DROP TABLE events; --"}, 0},
			{"injection in rule", &pb.EventFilter{Rule: `" OR 1=1 --`}, 0},
			{"placeholder-looking host", &pb.EventFilter{Hosts: []string{"$1", "?", "%"}}, 0},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				got, next, err := s.List(ctx, tc.f, 1000, nil, false)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != tc.want || next != nil {
					t.Fatalf("got %d events (next %v), want %d", len(got), next, tc.want)
				}
			})
		}
		if n := count(t, s, "alpha"); n != 30 {
			t.Fatalf("events table damaged: %d rows", n)
		}
		// Pagination: pages of 7, both orders, cover everything once in order.
		for _, newest := range []bool{false, true} {
			var seen []uint64
			var cur *Cursor
			for {
				page, next, err := s.List(ctx, &pb.EventFilter{Hosts: []string{"alpha"}}, 7, cur, newest)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range page {
					seen = append(seen, e.GetEvent().GetSeq())
				}
				if next == nil {
					break
				}
				cur = next
			}
			if len(seen) != 30 {
				t.Fatalf("newest=%v: paged %d events", newest, len(seen))
			}
			for i, s := range seen {
				want := uint64(i + 1)
				if newest {
					want = uint64(30 - i)
				}
				if s != want {
					t.Fatalf("newest=%v: position %d has seq %d, want %d", newest, i, s, want)
				}
			}
		}
	})
}

func TestVerifyDetectsTampering(t *testing.T) {
	cases := []struct {
		name   string
		tamper string
		want   []pb.ChainProblemKind
	}{
		{"untouched", ``, nil},
		{"payload edited", `UPDATE events SET payload = $2 WHERE host = $1 AND seq = 5`, []pb.ChainProblemKind{pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED}},
		{"indexed decision edited", `UPDATE events SET decision = 3 WHERE host = $1 AND seq = 5`, []pb.ChainProblemKind{pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED}},
		{"middle event deleted", `DELETE FROM events WHERE host = $1 AND seq = 5`, []pb.ChainProblemKind{pb.ChainProblemKind_CHAIN_PROBLEM_KIND_DELETED}},
		{"first event deleted", `DELETE FROM events WHERE host = $1 AND seq = 1`, []pb.ChainProblemKind{pb.ChainProblemKind_CHAIN_PROBLEM_KIND_DELETED}},
		{"last event deleted", `DELETE FROM events WHERE host = $1 AND seq = 10`, []pb.ChainProblemKind{pb.ChainProblemKind_CHAIN_PROBLEM_KIND_DELETED}},
		{"link edited", `UPDATE events SET prev_hash = $2 WHERE host = $1 AND seq = 5`, []pb.ChainProblemKind{pb.ChainProblemKind_CHAIN_PROBLEM_KIND_RELINKED, pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED}},
	}
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for i, tc := range cases {
			host := fmt.Sprintf("host%d", i)
			if _, err := s.Append(ctx, host, seqEvents(host, 1, 10), nil); err != nil {
				t.Fatal(err)
			}
			if tc.tamper != "" {
				args := []any{host}
				if n := len(tc.tamper); tc.tamper[n-1:] != "" && containsArg2(tc.tamper) {
					args = append(args, []byte("forged content"))
				}
				if _, err := s.DB().ExecContext(ctx, tc.tamper, args...); err != nil {
					t.Fatalf("%s: tamper: %v", tc.name, err)
				}
			}
			reps, err := s.Verify(ctx, []string{host})
			if err != nil {
				t.Fatal(err)
			}
			r := reps[0]
			var got []pb.ChainProblemKind
			for _, p := range r.Problems {
				got = append(got, p.Kind)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || r.Ok != (len(tc.want) == 0) {
				t.Errorf("%s: problems %v (ok=%v), want %v; details: %v", tc.name, got, r.Ok, tc.want, r.Problems)
			}
		}
	})
}

func containsArg2(q string) bool {
	for i := 0; i+1 < len(q); i++ {
		if q[i] == '$' && q[i+1] == '2' {
			return true
		}
	}
	return false
}

func TestRetentionKeepsChainVerifiable(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if _, err := s.Append(ctx, "h", seqEvents("h", 1, 10), nil); err != nil {
			t.Fatal(err)
		}
		cut := time.Now()
		time.Sleep(5 * time.Millisecond)
		if _, err := s.Append(ctx, "h", seqEvents("h", 11, 15), nil); err != nil {
			t.Fatal(err)
		}
		n, err := s.DeleteBefore(ctx, cut)
		if err != nil || n != 10 {
			t.Fatalf("DeleteBefore = %d, %v; want 10", n, err)
		}
		reps, err := s.Verify(ctx, nil)
		if err != nil || !reps[0].Ok || reps[0].EventsChecked != 5 {
			t.Fatalf("verify after retention: %v %v", reps, err)
		}
		// Replays of removed events are duplicates, not new events.
		res, err := s.Append(ctx, "h", seqEvents("h", 1, 16), nil)
		if err != nil || res.Stored != 1 || res.Duplicates != 15 || res.Acked != 16 {
			t.Fatalf("replay after retention: %+v %v", res, err)
		}
		hosts, err := s.Hosts(ctx, nil, time.Now(), time.Minute)
		if err != nil || len(hosts) != 1 || hosts[0].EventCount != 6 || hosts[0].AckedSeq != 16 {
			t.Fatalf("hosts: %v %v", hosts, err)
		}
	})
}
