package store

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Each way of cutting a chain that the chain alone cannot show (its head and base are moved along)
// is found against a witness file of earlier checkpoints; retention with its tombstone is not.
func TestWitnessFindsChainCuts(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cut  func(t *testing.T, s *Store, witness string)
		want string // problem substring; "" = none
	}{
		{"untouched", func(*testing.T, *Store, string) {}, ""},
		{"events appended after the checkpoint", func(t *testing.T, s *Store, _ string) {
			mustAppend(t, s, "h", 21, 25)
		}, ""},
		{"end cut, head moved back", func(t *testing.T, s *Store, _ string) {
			exec(t, s, `DELETE FROM events WHERE host = 'h' AND chain_pos > 15`)
			exec(t, s, `UPDATE hosts SET chain_len = 15, acked_seq = 15, max_seq = 15, latest_seq = 15,
				chain_head = (SELECT hash FROM events WHERE host = 'h' AND chain_pos = 15) WHERE host = 'h'`)
		}, "chain end cut"},
		{"end cut, then refilled with other events", func(t *testing.T, s *Store, _ string) {
			exec(t, s, `DELETE FROM events WHERE host = 'h' AND chain_pos > 15`)
			exec(t, s, `UPDATE hosts SET chain_len = 15, acked_seq = 15, max_seq = 15, latest_seq = 15,
				chain_head = (SELECT hash FROM events WHERE host = 'h' AND chain_pos = 15) WHERE host = 'h'`)
			evs := seqEvents("h", 16, 20)
			for _, e := range evs {
				e.GetMemoryAccess().Accessor.Comm = "innocent"
			}
			if _, err := s.Append(ctx, "h", evs, nil); err != nil {
				t.Fatal(err)
			}
		}, "chain rewritten"},
		{"start cut, base moved", func(t *testing.T, s *Store, _ string) {
			exec(t, s, `UPDATE hosts SET chain_base_pos = 5, chain_base_hash = (SELECT hash FROM events WHERE host = 'h' AND chain_pos = 5) WHERE host = 'h'`)
			exec(t, s, `DELETE FROM events WHERE host = 'h' AND chain_pos <= 5`)
		}, "chain start cut"},
		{"host deleted", func(t *testing.T, s *Store, _ string) {
			exec(t, s, `DELETE FROM events WHERE host = 'h'`)
			exec(t, s, `DELETE FROM hosts WHERE host = 'h'`)
		}, "host deleted"},
		{"retention with its tombstone", func(t *testing.T, s *Store, witness string) {
			s.witness = witness
			exec(t, s, `UPDATE events SET receive_ns = 0 WHERE host = 'h' AND chain_pos <= 12`)
			if n, err := s.DeleteBefore(ctx, time.Unix(1, 0)); err != nil || n != 12 {
				t.Fatalf("retention: %d %v", n, err)
			}
		}, ""},
		{"retention cut recorded in another witness only", func(t *testing.T, s *Store, _ string) {
			s.witness = filepath.Join(t.TempDir(), "elsewhere.jsonl")
			exec(t, s, `UPDATE events SET receive_ns = 0 WHERE host = 'h' AND chain_pos <= 12`)
			if _, err := s.DeleteBefore(ctx, time.Unix(1, 0)); err != nil {
				t.Fatal(err)
			}
		}, "chain start cut"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backends(t, func(t *testing.T, s *Store) {
				mustAppend(t, s, "h", 1, 20)
				mustAppend(t, s, "other", 1, 3)
				witness := filepath.Join(t.TempDir(), "witness.jsonl")
				cps, err := s.Checkpoints(ctx, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if err := AppendWitness(witness, cps); err != nil {
					t.Fatal(err)
				}
				tc.cut(t, s, witness)
				// The chain alone has nothing to say about any of these.
				reps, err := s.Verify(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range reps {
					if !r.GetOk() {
						t.Fatalf("chain verify of %s: %v", r.GetHost(), r.GetProblems())
					}
				}
				recs, err := ReadWitness(witness)
				if err != nil {
					t.Fatal(err)
				}
				probs, err := s.CheckWitness(ctx, recs)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, p := range probs {
					if p.Host != "h" {
						t.Errorf("problem on untouched host %s: %s", p.Host, p.Detail)
					}
					got = append(got, p.Detail)
				}
				all := strings.Join(got, "; ")
				switch {
				case tc.want == "" && len(got) > 0:
					t.Fatalf("problems on an honest database: %s", all)
				case tc.want != "" && !strings.Contains(all, tc.want):
					t.Fatalf("problems %q, want one with %q", all, tc.want)
				}
			})
		})
	}
}

func mustAppend(t *testing.T, s *Store, host string, from, to uint64) {
	t.Helper()
	if _, err := s.Append(context.Background(), host, seqEvents(host, from, to), nil); err != nil {
		t.Fatal(err)
	}
}

func exec(t *testing.T, s *Store, q string) {
	t.Helper()
	if _, err := s.DB().Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}
