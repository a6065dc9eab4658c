package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/certgen"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// testAgent plays an agent's part of signed checkpoints: it hashes what it "sends" the way the export
// pipeline does and signs its chain state with its host key.
type testAgent struct {
	t          *testing.T
	pair       *certgen.Pair
	host       string
	base, seq  uint64
	count      uint64
	head       []byte
	signedTime time.Time
}

func newTestAgent(t *testing.T, ca *certgen.Pair, host string) *testAgent {
	t.Helper()
	pair, err := ca.Issue(certgen.Request{CommonName: host, OU: certgen.OUHost})
	if err != nil {
		t.Fatal(err)
	}
	return &testAgent{t: t, pair: pair, host: host, head: pb.AgentChainGenesis(host, 0), signedTime: time.Now().Add(-time.Hour)}
}

// send appends events from..to to s and hashes them into the agent chain.
func (a *testAgent) send(s *Store, from, to uint64) {
	a.t.Helper()
	evs := seqEvents(a.host, from, to)
	if _, err := s.Append(context.Background(), a.host, evs, nil); err != nil {
		a.t.Fatal(err)
	}
	for _, ev := range evs {
		b, err := pb.AgentChainPayload(ev)
		if err != nil {
			a.t.Fatal(err)
		}
		a.head = pb.AgentChainLink(a.head, ev.GetSeq(), b)
		a.seq, a.count = ev.GetSeq(), a.count+1
	}
}

// checkpoint signs the chain state and stores it in s, returning the entry.
func (a *testAgent) checkpoint(s *Store) CheckpointEntry {
	a.t.Helper()
	a.signedTime = a.signedTime.Add(time.Second)
	cp := &pb.AgentCheckpoint{Host: a.host, BaseSeq: a.base, Seq: a.seq, Count: a.count, Head: a.head, Time: timestamppb.New(a.signedTime)}
	sc, err := pb.SignCheckpoint(cp, a.pair.Key, a.pair.Cert.Raw)
	if err != nil {
		a.t.Fatal(err)
	}
	e := CheckpointEntry{Signed: sc, CP: cp}
	if err := s.AddCheckpoint(context.Background(), e); err != nil {
		a.t.Fatal(err)
	}
	return e
}

func agentProblems(t *testing.T, s *Store) []string {
	t.Helper()
	entries, bad, err := s.AgentCheckpoints(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	probs, err := s.CheckAgentChains(context.Background(), entries)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range append(bad, probs...) {
		out = append(out, p.Host+": "+p.Detail)
	}
	return out
}

// TestAgentCheckpointsFindCuts: against agent-signed checkpoints, every cut a database administrator can
// make without the agent's key shows (chain end cut with the recorded head moved back, start cut with
// the base moved, a host deleted whole, an event rewritten with the chain recomputed, a forged
// checkpoint), while retention cutting at a checkpoint leaves a tombstone and verifies.
func TestAgentCheckpointsFindCuts(t *testing.T) {
	ca, err := certgen.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	exec := func(t *testing.T, s *Store, qs ...string) {
		t.Helper()
		for _, q := range qs {
			if _, err := s.DB().Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	cases := []struct {
		name   string
		tamper func(t *testing.T, s *Store, a *testAgent)
		want   string // "" = no problem
	}{
		{"untouched", func(*testing.T, *Store, *testAgent) {}, ""},
		{"end cut", func(t *testing.T, s *Store, a *testAgent) {
			exec(t, s, `DELETE FROM events WHERE host = 'alpha' AND seq > 25`,
				`UPDATE hosts SET chain_len = 25, acked_seq = 25, max_seq = 25, event_count = 25,
					chain_head = (SELECT hash FROM events WHERE host = 'alpha' AND chain_pos = 25) WHERE host = 'alpha'`)
		}, "chain end cut"},
		{"start cut", func(t *testing.T, s *Store, a *testAgent) {
			exec(t, s, `UPDATE hosts SET chain_base_pos = 5, chain_base_hash = (SELECT hash FROM events WHERE host = 'alpha' AND chain_pos = 5) WHERE host = 'alpha'`,
				`DELETE FROM events WHERE host = 'alpha' AND seq <= 5`)
		}, "chain start cut"},
		{"host deleted", func(t *testing.T, s *Store, a *testAgent) {
			exec(t, s, `DELETE FROM events WHERE host = 'alpha'`, `DELETE FROM hosts WHERE host = 'alpha'`)
		}, "host deleted"},
		{"event rewritten", func(t *testing.T, s *Store, a *testAgent) {
			ev := memEvent("alpha", 7, "innocent", pb.Decision_DECISION_ALLOWED_POLICY)
			it, err := validateBatch("alpha", []*pb.Event{ev}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.DB().Exec(`UPDATE events SET payload = $1, digest = $2 WHERE host = 'alpha' AND seq = 7`, it[0].payload, it[0].digest); err != nil {
				t.Fatal(err)
			}
		}, "events rewritten"},
		{"event replaced", func(t *testing.T, s *Store, a *testAgent) {
			if _, err := s.Append(context.Background(), "alpha", seqEvents("alpha", 41, 41), nil); err != nil {
				t.Fatal(err)
			}
			exec(t, s, `DELETE FROM events WHERE host = 'alpha' AND seq = 16`,
				`UPDATE events SET seq = 16 WHERE host = 'alpha' AND seq = 41`)
		}, "events rewritten"},
		{"forged checkpoint", func(t *testing.T, s *Store, a *testAgent) {
			// The administrator rewrites a stored checkpoint to match a cut: the signature no longer holds.
			var raw []byte
			var id int64
			if err := s.DB().QueryRow(`SELECT id, signed FROM agent_checkpoints WHERE host = 'alpha' ORDER BY id DESC LIMIT 1`).Scan(&id, &raw); err != nil {
				t.Fatal(err)
			}
			sc := &pb.SignedCheckpoint{}
			if err := proto.Unmarshal(raw, sc); err != nil {
				t.Fatal(err)
			}
			cp := &pb.AgentCheckpoint{}
			if err := proto.Unmarshal(sc.Checkpoint, cp); err != nil {
				t.Fatal(err)
			}
			cp.Count, cp.Seq = 25, 25
			sc.Checkpoint, _ = proto.Marshal(cp)
			raw, _ = proto.Marshal(sc)
			if _, err := s.DB().Exec(`UPDATE agent_checkpoints SET signed = $1 WHERE id = $2`, raw, id); err != nil {
				t.Fatal(err)
			}
		}, "not the agent's"},
		{"retention at a checkpoint", func(t *testing.T, s *Store, a *testAgent) {
			n, err := s.DeleteBefore(context.Background(), time.Now().Add(time.Hour))
			if err != nil || n != 30+3 { // alpha up to its checkpoint at 30, beta's 3
				t.Fatalf("retention: %d, %v", n, err)
			}
		}, ""},
		{"cut beside a tombstone", func(t *testing.T, s *Store, a *testAgent) {
			if n, err := s.DeleteBefore(context.Background(), time.Now().Add(time.Hour)); err != nil || n != 33 {
				t.Fatalf("retention: %d, %v", n, err)
			}
			exec(t, s, `UPDATE hosts SET chain_base_pos = 35, chain_base_hash = (SELECT hash FROM events WHERE host = 'alpha' AND seq = 35) WHERE host = 'alpha'`,
				`DELETE FROM events WHERE host = 'alpha' AND seq <= 35`)
		}, "chain start cut"},
	}
	backends(t, func(t *testing.T, s *Store) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				a := newTestAgent(t, ca, "alpha")
				b := newTestAgent(t, ca, "beta")
				// Each case on its own hosts' names would clash: reuse the store, wiping it.
				exec(t, s, `DELETE FROM events`, `DELETE FROM hosts`, `DELETE FROM agent_checkpoints`)
				a.send(s, 1, 10)
				a.checkpoint(s)
				a.send(s, 11, 20)
				a.checkpoint(s)
				b.send(s, 1, 3)
				b.checkpoint(s)
				a.send(s, 21, 30)
				a.checkpoint(s)
				// Signed after the retention cutoff of the retention cases: retention cuts at 30.
				a.send(s, 31, 40)
				a.signedTime = time.Now().Add(2 * time.Hour)
				a.checkpoint(s)
				c.tamper(t, s, a)
				got := strings.Join(agentProblems(t, s), "\n")
				switch {
				case c.want == "" && got != "":
					t.Fatalf("problems where none expected:\n%s", got)
				case c.want != "" && !strings.Contains(got, c.want):
					t.Fatalf("want a problem naming %q, got:\n%s", c.want, got)
				}
				t.Logf("%s", got)
			})
		}
	})
}
