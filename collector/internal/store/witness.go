package store

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"
)

// Witness checkpoints.
//
// The hash chain shows an event modified, deleted or relinked in the middle; by itself it cannot show
// a chain cut at either end or a host deleted whole, because whoever controls the database can move
// the recorded head and base too. A witness closes that gap: a file outside the collector's control
// (append-only: another machine, a chattr +a file, a WORM bucket) to which checkpoints of every host's
// chain state are appended periodically, and to which retention appends a tombstone each time it
// moves a host's chain base. Verify then checks the database against everything the witness saw.

// Witness record kinds.
const (
	WitnessCheckpoint = "checkpoint"
	WitnessTombstone  = "tombstone"
	// An agent's signed checkpoint, and a retention tombstone made at one (checkpoint.go).
	WitnessAgentCheckpoint = "agent_checkpoint"
	WitnessAgentTombstone  = "agent_tombstone"
)

// WitnessRecord is one line of a witness file (JSON).
type WitnessRecord struct {
	Kind string    `json:"kind"` // WitnessCheckpoint or WitnessTombstone
	Time time.Time `json:"time"`
	Host string    `json:"host"`
	// Checkpoint: the chain's length and head hash, and the acknowledged sequence number.
	ChainLen uint64 `json:"chain_len,omitempty"`
	Head     []byte `json:"head,omitempty"`
	AckedSeq uint64 `json:"acked_seq,omitempty"`
	// Both: the chain base (position and hash of the last event removed by retention; 0 and the
	// genesis hash before any).
	BasePos  uint64 `json:"base_pos"`
	BaseHash []byte `json:"base_hash,omitempty"`
	// Agent checkpoint and tombstone: the SignedCheckpoint, encoded.
	Signed []byte `json:"signed,omitempty"`
}

// Checkpoints returns the current chain state of every host, as witness checkpoints.
func (s *Store) Checkpoints(ctx context.Context, now time.Time) ([]WitnessRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT host, chain_len, chain_head, acked_seq, chain_base_pos, chain_base_hash FROM hosts ORDER BY host`)
	if err != nil {
		return nil, fmt.Errorf("read chain heads: %w", err)
	}
	defer rows.Close()
	var out []WitnessRecord
	for rows.Next() {
		r := WitnessRecord{Kind: WitnessCheckpoint, Time: now}
		var chainLen, acked, basePos int64
		if err := rows.Scan(&r.Host, &chainLen, &r.Head, &acked, &basePos, &r.BaseHash); err != nil {
			return nil, fmt.Errorf("read chain heads: %w", err)
		}
		r.ChainLen, r.AckedSeq, r.BasePos = uint64(chainLen), uint64(acked), uint64(basePos)
		out = append(out, r)
	}
	return out, rows.Err()
}

// AppendWitness appends records to a witness file (created if missing) and fsyncs it.
func AppendWitness(path string, recs []WitnessRecord) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open witness file: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("encode witness record: %w", err)
		}
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write witness file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync witness file %s: %w", path, err)
	}
	return nil
}

// ReadWitness reads a witness file.
func ReadWitness(path string) ([]WitnessRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open witness file: %w", err)
	}
	defer f.Close()
	var out []WitnessRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r WitnessRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		known := r.Kind == WitnessCheckpoint || r.Kind == WitnessTombstone || r.Kind == WitnessAgentCheckpoint || r.Kind == WitnessAgentTombstone
		if !known || r.Host == "" {
			return nil, fmt.Errorf("%s:%d: not a witness record (kind %q, host %q)", path, line, r.Kind, r.Host)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read witness file %s: %w", path, err)
	}
	return out, nil
}

// WitnessProblem is a disagreement between the database and a witness.
type WitnessProblem struct {
	Host   string
	Detail string
}

// CheckWitness checks the database against witness records: every host the witness saw still
// exists; its chain is at least as long as at every checkpoint and still holds, at each checkpoint's
// position, the hash the witness saw (unless retention removed that position since); and its chain
// base is the genesis or a base a tombstone recorded. It finds a chain cut at the end (head moved
// back), at the start (base moved without a tombstone), and a deleted host.
func (s *Store) CheckWitness(ctx context.Context, recs []WitnessRecord) ([]WitnessProblem, error) {
	return perHost(ctx, recs, func(r WitnessRecord) string { return r.Host }, s.checkHostWitness)
}

// perHost groups items by host and runs check on each host's items, hosts in name order.
func perHost[T any](ctx context.Context, items []T, host func(T) string,
	check func(context.Context, string, []T) ([]WitnessProblem, error)) ([]WitnessProblem, error) {
	byHost := map[string][]T{}
	for _, it := range items {
		byHost[host(it)] = append(byHost[host(it)], it)
	}
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	var out []WitnessProblem
	for _, h := range hosts {
		ps, err := check(ctx, h, byHost[h])
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

func (s *Store) checkHostWitness(ctx context.Context, host string, recs []WitnessRecord) ([]WitnessProblem, error) {
	var out []WitnessProblem
	problem := func(format string, args ...any) {
		out = append(out, WitnessProblem{Host: host, Detail: fmt.Sprintf(format, args...)})
	}
	var chainLen, basePos int64
	var head, baseHash []byte
	err := s.db.QueryRowContext(ctx, `SELECT chain_len, chain_head, chain_base_pos, chain_base_hash FROM hosts WHERE host = $1`, host).
		Scan(&chainLen, &head, &basePos, &baseHash)
	if errors.Is(err, sql.ErrNoRows) {
		problem("host deleted: the witness saw it (last at %s) but the database has no record of it", recs[len(recs)-1].Time.Format(time.RFC3339))
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read chain state of %q: %w", host, err)
	}
	if basePos > 0 {
		ok := false
		for _, r := range recs {
			if r.Kind == WitnessTombstone && r.BasePos == uint64(basePos) && bytes.Equal(r.BaseHash, baseHash) {
				ok = true
			}
		}
		if !ok {
			problem("chain start cut: the chain now begins after position %d, and no tombstone in the witness records a retention cut there", basePos)
		}
	}
	for _, r := range recs {
		if r.Kind != WitnessCheckpoint {
			continue
		}
		switch {
		case uint64(chainLen) < r.ChainLen:
			problem("chain end cut: %d events in the chain, but the checkpoint of %s saw %d", chainLen, r.Time.Format(time.RFC3339), r.ChainLen)
		case r.ChainLen <= uint64(basePos) || r.ChainLen == 0:
			// Removed by retention since (the base check above covers the cut).
		default:
			var h []byte
			err := s.db.QueryRowContext(ctx, `SELECT hash FROM events WHERE host = $1 AND chain_pos = $2`, host, int64(r.ChainLen)).Scan(&h)
			if errors.Is(err, sql.ErrNoRows) {
				problem("chain position %d, the head at the checkpoint of %s, is missing", r.ChainLen, r.Time.Format(time.RFC3339))
			} else if err != nil {
				return nil, fmt.Errorf("read chain position %d of %q: %w", r.ChainLen, host, err)
			} else if !bytes.Equal(h, r.Head) {
				problem("chain rewritten: position %d no longer has the hash the checkpoint of %s saw", r.ChainLen, r.Time.Format(time.RFC3339))
			}
		}
	}
	return out, nil
}
