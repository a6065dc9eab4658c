package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Agent-signed checkpoints.
//
// Each agent signs, with its host key, the state of a hash chain over every event it sent (see
// AgentCheckpoint in ingest.proto). The collector checks the signature against the host's TLS
// certificate and stores the checkpoint (AddCheckpoint); retention cuts a host's events only at such a
// checkpoint and stores it again as a tombstone. CheckAgentChains recomputes the agent chains from the
// stored events: whoever administers the collector holds neither the agents' keys nor can change what
// a witness (a file or a second collector) already received, so a chain cut at either end, a deleted
// host, a rewritten event or a cut that no tombstone explains shows, with or without the chain key.

// CheckpointEntry is one stored agent checkpoint or tombstone.
type CheckpointEntry struct {
	Signed *pb.SignedCheckpoint
	CP     *pb.AgentCheckpoint // decoded and verified
	// Tombstone: retention removed the host's events up to CP.Seq at this time.
	Tombstone time.Time
	// Source is the collector that forwarded the entry ("" = this collector's own agent).
	Source string
}

// AddCheckpoint stores a checkpoint already verified (VerifyCheckpoint) and exports it to the witness
// file and the forwarder, if configured. A witness failure is returned after the checkpoint is stored.
func (s *Store) AddCheckpoint(ctx context.Context, e CheckpointEntry) error {
	if err := s.insertCheckpoint(ctx, s.db, e); err != nil {
		return err
	}
	if err := s.export(e); err != nil {
		return fmt.Errorf("%w: %w", ErrWitness, err)
	}
	return nil
}

// ErrWitness: the entry was stored, but exporting it to the witness file failed.
var ErrWitness = errors.New("witness not written")

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s *Store) insertCheckpoint(ctx context.Context, db execer, e CheckpointEntry) error {
	raw, err := proto.Marshal(e.Signed)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	var tomb int64
	if !e.Tombstone.IsZero() {
		tomb = e.Tombstone.UnixNano()
	}
	cp := e.CP
	if _, err := db.ExecContext(ctx, `INSERT INTO agent_checkpoints (host, base_seq, seq, event_count, signed_ns, received_ns, tombstone_ns, source, signed)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, cp.GetHost(), int64(cp.GetBaseSeq()), int64(cp.GetSeq()), int64(cp.GetCount()),
		cp.GetTime().AsTime().UnixNano(), time.Now().UnixNano(), tomb, e.Source, raw); err != nil {
		return fmt.Errorf("store checkpoint of %q: %w", cp.GetHost(), err)
	}
	return nil
}

// export hands an entry to the witness file and the forwarder.
func (s *Store) export(e CheckpointEntry) error {
	if s.forward != nil && e.Source == "" {
		s.forward(&pb.WitnessEntry{Checkpoint: e.Signed, Tombstone: !e.Tombstone.IsZero()})
	}
	if s.witness == "" {
		return nil
	}
	rec, err := agentWitnessRecord(e)
	if err != nil {
		return err
	}
	return AppendWitness(s.witness, []WitnessRecord{rec})
}

func agentWitnessRecord(e CheckpointEntry) (WitnessRecord, error) {
	raw, err := proto.Marshal(e.Signed)
	if err != nil {
		return WitnessRecord{}, fmt.Errorf("encode checkpoint: %w", err)
	}
	r := WitnessRecord{Kind: WitnessAgentCheckpoint, Time: time.Now().UTC(), Host: e.CP.GetHost(), Signed: raw}
	if !e.Tombstone.IsZero() {
		r.Kind, r.Time = WitnessAgentTombstone, e.Tombstone.UTC()
	}
	return r, nil
}

// AgentCheckpoints returns the stored checkpoints and tombstones (of every host when host is empty),
// each verified again: an entry whose signature no longer holds comes back in bad.
func (s *Store) AgentCheckpoints(ctx context.Context, host string) (good []CheckpointEntry, bad []WitnessProblem, err error) {
	rows, err := s.db.QueryContext(ctx, `SELECT host, tombstone_ns, source, signed FROM agent_checkpoints WHERE ($1 = '' OR host = $1) ORDER BY id`, host)
	if err != nil {
		return nil, nil, fmt.Errorf("read agent checkpoints: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var h, src string
		var tomb int64
		var raw []byte
		if err := rows.Scan(&h, &tomb, &src, &raw); err != nil {
			return nil, nil, fmt.Errorf("read agent checkpoints: %w", err)
		}
		e, err := decodeEntry(raw, tomb)
		if err != nil {
			bad = append(bad, WitnessProblem{Host: h, Detail: fmt.Sprintf("stored checkpoint is not the agent's: %v", err)})
			continue
		}
		e.Source = src
		good = append(good, e)
	}
	return good, bad, rows.Err()
}

func decodeEntry(raw []byte, tombNs int64) (CheckpointEntry, error) {
	sc := &pb.SignedCheckpoint{}
	if err := proto.Unmarshal(raw, sc); err != nil {
		return CheckpointEntry{}, fmt.Errorf("%w: %v", pb.ErrBadCheckpoint, err)
	}
	cp, _, err := pb.VerifyCheckpoint(sc)
	if err != nil {
		return CheckpointEntry{}, err
	}
	e := CheckpointEntry{Signed: sc, CP: cp}
	if tombNs != 0 {
		e.Tombstone = time.Unix(0, tombNs)
	}
	return e, nil
}

// CheckAgentChains recomputes, for every host the entries name, the agent chain from the stored events
// and compares it with every checkpoint that retention has not passed since. Problems name what
// disagrees: a deleted host, missing events at the end or the start of a chain (a cut that no tombstone
// explains), events added or rewritten.
func (s *Store) CheckAgentChains(ctx context.Context, entries []CheckpointEntry) ([]WitnessProblem, error) {
	return perHost(ctx, entries, func(e CheckpointEntry) string { return e.CP.GetHost() }, s.checkAgentHost)
}

// chainStart is where recomputing an agent chain starts: its base or a tombstone.
type chainStart struct {
	seq, count uint64
	head       []byte
	what       string
}

func (s *Store) checkAgentHost(ctx context.Context, host string, entries []CheckpointEntry) ([]WitnessProblem, error) {
	var out []WitnessProblem
	problem := func(format string, args ...any) {
		out = append(out, WitnessProblem{Host: host, Detail: fmt.Sprintf(format, args...)})
	}
	var tombs, cps []*pb.AgentCheckpoint
	for _, e := range entries {
		if e.Tombstone.IsZero() {
			cps = append(cps, e.CP)
		} else {
			tombs = append(tombs, e.CP)
		}
	}
	var known int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM hosts WHERE host = $1`, host).Scan(&known); err != nil {
		return nil, fmt.Errorf("look up host %q: %w", host, err)
	}
	if known == 0 {
		last := entries[len(entries)-1].CP
		problem("host deleted: its agent signed checkpoints (the last at %s, %d events after seq %d) but the database has no record of the host",
			last.GetTime().AsTime().UTC().Format(time.RFC3339), last.GetCount(), last.GetBaseSeq())
		return out, nil
	}
	// Checkpoints grouped by where their recomputation starts; each group is one pass over the events.
	groups := map[string][]*pb.AgentCheckpoint{}
	starts := map[string]chainStart{}
	for _, cp := range cps {
		st, covered := startFor(host, cp, tombs)
		if covered {
			continue // retention removed what it covers, at a tombstone
		}
		k := fmt.Sprintf("%d/%x", st.seq, st.head)
		groups[k] = append(groups[k], cp)
		starts[k] = st
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		g := groups[k]
		sort.Slice(g, func(i, j int) bool { return g[i].GetSeq() < g[j].GetSeq() })
		ps, err := s.replayAgentChain(ctx, host, starts[k], g)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			problem("%s", p)
		}
	}
	return out, nil
}

// startFor returns where to recompute cp from: the newest tombstone of cp's chain below it, else the
// chain's base; covered reports a tombstone at or past cp (its events are gone by retention).
func startFor(host string, cp *pb.AgentCheckpoint, tombs []*pb.AgentCheckpoint) (chainStart, bool) {
	st := chainStart{seq: cp.GetBaseSeq(), head: pb.AgentChainGenesis(host, cp.GetBaseSeq()), what: fmt.Sprintf("the chain's base (seq %d)", cp.GetBaseSeq())}
	for _, t := range tombs {
		if t.GetSeq() >= cp.GetSeq() {
			return st, true
		}
		if t.GetBaseSeq() == cp.GetBaseSeq() && t.GetSeq() > st.seq {
			st = chainStart{seq: t.GetSeq(), count: t.GetCount(), head: t.GetHead(),
				what: fmt.Sprintf("the retention tombstone at seq %d", t.GetSeq())}
		}
	}
	return st, false
}

// replayAgentChain recomputes host's agent chain from st over the stored events and compares it with
// each checkpoint of cps (ascending seq).
func (s *Store) replayAgentChain(ctx context.Context, host string, st chainStart, cps []*pb.AgentCheckpoint) ([]string, error) {
	last := cps[len(cps)-1].GetSeq()
	rows, err := s.db.QueryContext(ctx, `SELECT seq, payload FROM events WHERE host = $1 AND seq > $2 AND seq <= $3 ORDER BY seq`, host, int64(st.seq), int64(last))
	if err != nil {
		return nil, fmt.Errorf("read events of %q: %w", host, err)
	}
	defer rows.Close()
	head, count := st.head, st.count
	var first, prev uint64
	var out []string
	i := 0
	check := func(upto uint64) {
		for ; i < len(cps) && cps[i].GetSeq() <= upto; i++ {
			if d := describe(cps[i], st, count, head, first, prev); d != "" {
				out = append(out, d)
			}
		}
	}
	for rows.Next() {
		var seq int64
		var payload []byte
		if err := rows.Scan(&seq, &payload); err != nil {
			return nil, fmt.Errorf("read events of %q: %w", host, err)
		}
		check(uint64(seq) - 1)
		ev := &pb.Event{}
		var enc []byte
		if err := proto.Unmarshal(payload, ev); err == nil {
			enc, _ = pb.AgentChainPayload(ev)
		}
		if enc == nil {
			enc = payload // undecodable: hashes as stored, so the checkpoint disagrees
		}
		head = pb.AgentChainLink(head, uint64(seq), enc)
		count++
		if first == 0 {
			first = uint64(seq)
		}
		prev = uint64(seq)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events of %q: %w", host, err)
	}
	check(last)
	return out, nil
}

// describe compares one checkpoint with the recomputed state (count, head; stored seqs first..prev
// after the start) and says what disagrees, or "".
func describe(cp *pb.AgentCheckpoint, st chainStart, count uint64, head []byte, first, prev uint64) string {
	if count == cp.GetCount() && bytes.Equal(head, cp.GetHead()) {
		return ""
	}
	when := cp.GetTime().AsTime().UTC().Format(time.RFC3339)
	switch {
	case count < cp.GetCount() && prev < cp.GetSeq() && (first == st.seq+1 || first == 0):
		return fmt.Sprintf("chain end cut: the agent's checkpoint of %s covers %d events up to seq %d from %s; the database holds %d, the last seq %d",
			when, cp.GetCount()-st.count, cp.GetSeq(), st.what, count-st.count, prev)
	case count < cp.GetCount() && first > st.seq+1:
		return fmt.Sprintf("chain start cut: events after %s are missing (the first stored is seq %d) and no retention tombstone explains it; the agent's checkpoint of %s covers %d events up to seq %d, the database holds %d",
			st.what, first, when, cp.GetCount()-st.count, cp.GetSeq(), count-st.count)
	case count < cp.GetCount():
		return fmt.Sprintf("events deleted: the agent's checkpoint of %s covers %d events up to seq %d from %s; the database holds %d",
			when, cp.GetCount()-st.count, cp.GetSeq(), st.what, count-st.count)
	case count > cp.GetCount():
		return fmt.Sprintf("events added: the database holds %d events up to seq %d from %s, the agent's checkpoint of %s says it sent %d",
			count-st.count, cp.GetSeq(), st.what, when, cp.GetCount()-st.count)
	default:
		return fmt.Sprintf("events rewritten: the events up to seq %d do not hash to the agent's checkpoint of %s (same number, different content)", cp.GetSeq(), when)
	}
}

// AgentEntries decodes and verifies the agent checkpoints and tombstones among witness records.
func AgentEntries(recs []WitnessRecord) ([]CheckpointEntry, []WitnessProblem) {
	var good []CheckpointEntry
	var bad []WitnessProblem
	for _, r := range recs {
		if r.Kind != WitnessAgentCheckpoint && r.Kind != WitnessAgentTombstone {
			continue
		}
		var tomb int64
		if r.Kind == WitnessAgentTombstone {
			tomb = r.Time.UnixNano()
		}
		e, err := decodeEntry(r.Signed, tomb)
		if err != nil {
			bad = append(bad, WitnessProblem{Host: r.Host, Detail: fmt.Sprintf("witness record of %s is not a valid agent checkpoint: %v", r.Time.Format(time.RFC3339), err)})
			continue
		}
		if e.CP.GetHost() != r.Host {
			bad = append(bad, WitnessProblem{Host: r.Host, Detail: fmt.Sprintf("witness record names host %q but holds the checkpoint of %q", r.Host, e.CP.GetHost())})
			continue
		}
		good = append(good, e)
	}
	return good, bad
}
