package store

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keyguard/keyguard/collector/internal/chain"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Table tests of Append's steps; TestAppendSequences and the others test the whole.

func TestValidateBatch(t *testing.T) {
	ok := seqEvents("h", 1, 3)
	for _, tc := range []struct {
		name    string
		host    string
		events  []*pb.Event
		skipped []Range
		want    string // error substring; "" for success
	}{
		{"good batch", "h", ok, []Range{{4, 9}}, ""},
		{"empty batch", "h", nil, nil, ""},
		{"empty host", "", ok, nil, "empty host"},
		{"event of another host", "h", append(seqEvents("h", 1, 1), seqEvents("x", 2, 2)...), nil, `carries host "x"`},
		{"seq 0", "h", seqEvents("h", 0, 0), nil, "out of range"},
		{"seq beyond int64", "h", seqEvents("h", math.MaxInt64+1, math.MaxInt64+1), nil, "out of range"},
		{"skipped from 0", "h", ok, []Range{{0, 3}}, "not a valid range"},
		{"skipped backwards", "h", ok, []Range{{5, 4}}, "not a valid range"},
		{"skipped beyond int64", "h", ok, []Range{{5, math.MaxInt64 + 1}}, "not a valid range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			items, err := validateBatch(tc.host, tc.events, tc.skipped)
			if tc.want != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want ErrInvalid containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(items) != len(tc.events) {
				t.Fatalf("%d items for %d events", len(items), len(tc.events))
			}
			for i, it := range items {
				if it.ev != tc.events[i] || !bytes.Equal(it.digest, chain.Digest(it.payload)) {
					t.Errorf("item %d: wrong event or digest", i)
				}
			}
		})
	}
}

func TestCheckAhead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		events  []*pb.Event
		skipped []Range
		acked   uint64
		wantErr bool
	}{
		{"within", seqEvents("h", 11, 20), nil, 10, false},
		{"at the limit", seqEvents("h", 110, 110), nil, 10, false},
		{"event beyond", seqEvents("h", 111, 111), nil, 10, true},
		{"skipped at the limit", nil, []Range{{11, 110}}, 10, false},
		{"skipped beyond", nil, []Range{{11, 111}}, 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			items, err := validateBatch("h", tc.events, tc.skipped)
			if err != nil {
				t.Fatal(err)
			}
			err = checkAhead(items, tc.skipped, tc.acked, 100)
			if (err != nil) != tc.wantErr || err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestDedupe(t *testing.T) {
	items := func(evs ...*pb.Event) []item {
		it, err := validateBatch("h", evs, nil)
		if err != nil {
			t.Fatal(err)
		}
		return it
	}
	ev := func(seq uint64, comm string) *pb.Event { return memEvent("h", seq, comm, pb.Decision_DECISION_DENIED) }
	digest := func(e *pb.Event) []byte { return items(e)[0].digest }
	for _, tc := range []struct {
		name      string
		batch     []item
		existing  map[uint64][]byte
		acked     uint64
		wantFresh []uint64
		wantDups  int
		conflict  bool
	}{
		{"all new", items(ev(1, "a"), ev(2, "a")), nil, 0, []uint64{1, 2}, 0, false},
		{"repeated in batch", items(ev(1, "a"), ev(1, "a")), nil, 0, []uint64{1}, 1, false},
		{"repeated in batch, other content", items(ev(1, "a"), ev(1, "b")), nil, 0, nil, 0, true},
		{"stored, same content", items(ev(5, "a"), ev(6, "a")), map[uint64][]byte{5: digest(ev(5, "a"))}, 0, []uint64{6}, 1, false},
		{"stored, other content", items(ev(5, "b")), map[uint64][]byte{5: digest(ev(5, "a"))}, 0, nil, 0, true},
		{"acknowledged, no longer stored", items(ev(3, "a"), ev(4, "a")), nil, 3, []uint64{4}, 1, false},
		{"acknowledged and stored with other content", items(ev(3, "b")), map[uint64][]byte{3: digest(ev(3, "a"))}, 3, nil, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fresh, dups, err := dedupe("h", tc.batch, tc.existing, tc.acked)
			if tc.conflict {
				if !errors.Is(err, ErrConflict) {
					t.Fatalf("err = %v, want ErrConflict", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, it := range fresh {
				got = append(got, it.ev.GetSeq())
			}
			if !equalSeqs(got, tc.wantFresh) || dups != tc.wantDups {
				t.Fatalf("fresh %v dups %d, want %v and %d", got, dups, tc.wantFresh, tc.wantDups)
			}
		})
	}
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLink(t *testing.T) {
	health := &pb.Event{Host: "h", Seq: 7, Kind: &pb.Event_AgentHealth{AgentHealth: &pb.AgentHealth{}}}
	for _, tc := range []struct {
		name       string
		events     []*pb.Event
		st         hostState
		wantLatest uint64
		wantHealth uint64
	}{
		{"first events of a host", seqEvents("h", 1, 3), hostState{head: chain.Genesis("h")}, 3, 0},
		{"continuing a chain", seqEvents("h", 11, 12), hostState{acked: 10, maxSeq: 10, chainLen: 10, count: 10, latestSeq: 10, head: []byte("head-10")}, 12, 0},
		{"out of order, latest stays", seqEvents("h", 4, 4), hostState{chainLen: 5, latestSeq: 9, maxSeq: 9, head: []byte("x")}, 9, 0},
		{"health event", append(seqEvents("h", 6, 6), health), hostState{chainLen: 5, head: []byte("x")}, 7, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Store{hasher: chain.NewHasher(nil)}
			items, err := validateBatch("h", tc.events, nil)
			if err != nil {
				t.Fatal(err)
			}
			st := tc.st
			rows, upd := s.link("h", items, &st, 1)
			head, pos := tc.st.head, tc.st.chainLen
			for i, r := range rows {
				pos++
				if r.pos != pos || !bytes.Equal(r.prev, head) {
					t.Fatalf("row %d: pos %d prev %x, want %d %x", i, r.pos, r.prev, pos, head)
				}
				if want := s.hasher.Link(head, "h", r.it.ev.GetSeq(), pos, r.it.digest); !bytes.Equal(r.hash, want) {
					t.Fatalf("row %d: hash does not link", i)
				}
				head = r.hash
			}
			if st.chainLen != pos || !bytes.Equal(st.head, head) || st.count != tc.st.count+uint64(len(rows)) {
				t.Errorf("state: chain_len %d head %x count %d", st.chainLen, st.head, st.count)
			}
			if st.latestSeq != tc.wantLatest || st.healthSeq != tc.wantHealth {
				t.Errorf("latest %d health %d, want %d %d", st.latestSeq, st.healthSeq, tc.wantLatest, tc.wantHealth)
			}
			if (upd.health != nil) != (tc.wantHealth != 0) {
				t.Errorf("health update %v, want seq %d", upd.health, tc.wantHealth)
			}
		})
	}
}

func TestInsertSQL(t *testing.T) {
	for _, tc := range []struct {
		backend      Backend
		rows         int
		placeholder  string
		placeholders int
	}{
		{SQLite, 1, "?", insertColumns},
		{SQLite, 3, "?", 3 * insertColumns},
		{Postgres, 2, "$", 2 * insertColumns},
	} {
		q := insertSQL(tc.backend, tc.rows)
		if n := strings.Count(q, tc.placeholder); n != tc.placeholders {
			t.Errorf("%v, %d rows: %d placeholders, want %d", tc.backend, tc.rows, n, tc.placeholders)
		}
		if tc.backend == Postgres && !strings.Contains(q, "$"+strconv.Itoa(tc.placeholders)+")") {
			t.Errorf("last placeholder is not $%d: %s", tc.placeholders, q)
		}
	}
}

func TestLockHost(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for _, tc := range []struct {
			name      string
			setup     []*pb.Event
			wantAcked uint64
			wantLen   uint64
		}{
			{"new host is registered at its genesis", nil, 0, 0},
			{"known host", seqEvents("known", 1, 5), 5, 5},
		} {
			t.Run(tc.name, func(t *testing.T) {
				host := "new"
				if len(tc.setup) > 0 {
					host = tc.setup[0].GetHost()
					if _, err := s.Append(ctx, host, tc.setup, nil); err != nil {
						t.Fatal(err)
					}
				}
				tx, err := s.DB().BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				st, err := s.lockHost(ctx, tx, host, 1)
				if err != nil {
					t.Fatal(err)
				}
				if st.acked != tc.wantAcked || st.chainLen != tc.wantLen || st.count != tc.wantLen {
					t.Errorf("state %+v, want acked %d chain_len %d", st, tc.wantAcked, tc.wantLen)
				}
				if tc.wantLen == 0 && !bytes.Equal(st.head, chain.Genesis(host)) {
					t.Errorf("new host's head %x is not its genesis", st.head)
				}
			})
		}
	})
}

func TestAdvanceChain(t *testing.T) {
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for i, tc := range []struct {
			name      string
			stored    [][2]uint64 // ranges of stored events
			skipped   []Range
			wantAcked uint64
			wantGaps  int // seq_gaps rows left (those above acked)
		}{
			{"contiguous", [][2]uint64{{1, 5}}, nil, 5, 0},
			{"hole stops it", [][2]uint64{{1, 3}, {5, 6}}, nil, 3, 0},
			{"skipped range fills the hole", [][2]uint64{{1, 3}, {5, 6}}, []Range{{4, 4}}, 6, 0},
			{"skipped range at the end", [][2]uint64{{1, 3}}, []Range{{4, 9}}, 9, 0},
			{"skipped range beyond a hole stays", [][2]uint64{{1, 3}}, []Range{{6, 9}}, 3, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				host := "adv-" + strconv.Itoa(i)
				for _, r := range tc.stored {
					if _, err := s.Append(ctx, host, seqEvents(host, r[0], r[1]), nil); err != nil {
						t.Fatal(err)
					}
				}
				tx, err := s.DB().BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				st, err := s.lockHost(ctx, tx, host, 1)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.advanceChain(ctx, tx, host, tc.skipped, &st, hostUpdate{}, 2, len(tc.skipped) == 0 && contiguousAfter(st, nil)); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				var acked int64
				var gaps int
				if err := s.DB().QueryRow(`SELECT acked_seq FROM hosts WHERE host = $1`, host).Scan(&acked); err != nil {
					t.Fatal(err)
				}
				if err := s.DB().QueryRow(`SELECT COUNT(*) FROM seq_gaps WHERE host = $1`, host).Scan(&gaps); err != nil {
					t.Fatal(err)
				}
				if uint64(acked) != tc.wantAcked || st.acked != tc.wantAcked || gaps != tc.wantGaps {
					t.Errorf("acked %d (state %d), %d gaps; want %d and %d gaps", acked, st.acked, gaps, tc.wantAcked, tc.wantGaps)
				}
			})
		}
	})
}

// Fields an agent sends beyond the schema are not stored: not at the top, not nested, not in lists.
func TestUnknownFieldsDropped(t *testing.T) {
	junk := protowire.AppendBytes(protowire.AppendTag(nil, 9999, protowire.BytesType), []byte("smuggled"))
	withJunk := func(seq uint64) *pb.Event {
		ev := memEvent("h", seq, "gdb", pb.Decision_DECISION_DENIED)
		ev.ProtoReflect().SetUnknown(junk)
		ma := ev.GetMemoryAccess()
		ma.ProtoReflect().SetUnknown(junk)
		ma.GetAccessor().ProtoReflect().SetUnknown(junk)
		return ev
	}
	lr := &pb.Event{Host: "h", Seq: 2, Kind: &pb.Event_LossReport{LossReport: &pb.LossReport{
		Count: 1, Evicted: []*pb.SequenceRange{{First: 1, Last: 1}}}}}
	lr.GetLossReport().GetEvicted()[0].ProtoReflect().SetUnknown(junk)
	backends(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if _, err := s.Append(ctx, "h", []*pb.Event{withJunk(1), lr}, nil); err != nil {
			t.Fatal(err)
		}
		rows, err := s.DB().Query(`SELECT seq, payload FROM events WHERE host = $1`, "h")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var seq int64
			var payload []byte
			if err := rows.Scan(&seq, &payload); err != nil {
				t.Fatal(err)
			}
			n++
			if bytes.Contains(payload, []byte("smuggled")) {
				t.Errorf("seq %d stored with the unknown field", seq)
			}
		}
		if n != 2 {
			t.Fatalf("%d events stored, want 2", n)
		}
		// A resend with the same junk is a duplicate, not a conflict.
		res, err := s.Append(ctx, "h", []*pb.Event{withJunk(1)}, nil)
		if err != nil || res.Duplicates != 1 {
			t.Fatalf("resend: %+v %v", res, err)
		}
	})
}

// TestContiguousAfter: the fast path of step 5 is taken only when nothing is stored or declared beyond
// the acknowledged number and the new events continue it without a hole.
func TestContiguousAfter(t *testing.T) {
	items := func(seqs ...uint64) []item {
		var out []item
		for _, q := range seqs {
			out = append(out, item{ev: &pb.Event{Seq: q}})
		}
		return out
	}
	for _, tc := range []struct {
		name          string
		acked, maxSeq uint64
		fresh         []item
		want          bool
	}{
		{"continues", 10, 10, items(11, 12, 13), true},
		{"continues out of order", 10, 10, items(13, 11, 12), true},
		{"nothing new", 10, 10, nil, true},
		{"hole", 10, 10, items(11, 13), false},
		{"starts later", 10, 10, items(12, 13), false},
		{"stored beyond acked", 10, 15, items(11, 12), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := contiguousAfter(hostState{acked: tc.acked, maxSeq: tc.maxSeq}, tc.fresh); got != tc.want {
				t.Fatalf("contiguousAfter = %v, want %v", got, tc.want)
			}
		})
	}
}
