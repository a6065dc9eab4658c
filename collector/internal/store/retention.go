package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// DeleteBefore removes, for each host, the oldest events received before cutoff. Only a prefix of each
// host's chain is removed, and the host's chain base moves to the last removed event, so the remaining
// chain still verifies. With Options.Witness set, each cut is first recorded there as a tombstone.
// It returns how many events were removed.
func (s *Store) DeleteBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	heads, err := s.ChainHeads(ctx)
	if err != nil {
		return 0, err
	}
	var total int64
	for host := range heads {
		n, err := s.trimHost(ctx, host, cutoff)
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

func (s *Store) trimHost(ctx context.Context, host string, cutoff time.Time) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin retention for %q: %w", host, err)
	}
	defer tx.Rollback()
	var basePos, count int64
	if err := tx.QueryRowContext(ctx, `SELECT chain_base_pos, event_count FROM hosts WHERE host = $1`+s.forUpdate(), host).Scan(&basePos, &count); err != nil {
		return 0, fmt.Errorf("lock host %q for retention: %w", host, err)
	}
	// The newest position received before the cutoff; everything up to it goes. Positions are assigned in
	// receive order, so this is a prefix. A host whose agent signs checkpoints is cut only at one.
	agent, upto, tomb, err := s.agentCut(ctx, tx, host, cutoff, basePos)
	if err != nil {
		return 0, err
	}
	if !agent {
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(chain_pos), 0) FROM events WHERE host = $1 AND receive_ns < $2`, host, cutoff.UnixNano()).Scan(&upto); err != nil {
			return 0, fmt.Errorf("find expired events of %q: %w", host, err)
		}
	}
	if upto <= basePos {
		return 0, nil
	}
	var baseHash []byte
	if err := tx.QueryRowContext(ctx, `SELECT hash FROM events WHERE host = $1 AND chain_pos = $2`, host, upto).Scan(&baseHash); err != nil {
		return 0, fmt.Errorf("read new chain base of %q: %w", host, err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE host = $1 AND chain_pos <= $2`, host, upto)
	if err != nil {
		return 0, fmt.Errorf("delete expired events of %q: %w", host, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("count expired events of %q: %w", host, err)
	}
	if err := pruneTerms(ctx, tx); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE hosts SET chain_base_pos = $2, chain_base_hash = $3, event_count = $4 WHERE host = $1`,
		host, upto, baseHash, max(count-n, 0)); err != nil {
		return 0, fmt.Errorf("move chain base of %q: %w", host, err)
	}
	if s.witness != "" {
		// Before the commit: a tombstone for a cut that then fails is harmless, a cut without one
		// would look like tampering.
		tomb := WitnessRecord{Kind: WitnessTombstone, Time: time.Now().UTC(), Host: host, BasePos: uint64(upto), BaseHash: baseHash}
		if err := AppendWitness(s.witness, []WitnessRecord{tomb}); err != nil {
			return 0, fmt.Errorf("retention for %q: record its tombstone (nothing was deleted): %w", host, err)
		}
	}
	if tomb != nil {
		tomb.Tombstone = time.Now()
		if err := s.insertCheckpoint(ctx, tx, *tomb); err != nil {
			return 0, err
		}
		if err := s.export(*tomb); err != nil {
			return 0, fmt.Errorf("retention for %q: record its agent tombstone (nothing was deleted): %w", host, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit retention for %q: %w", host, err)
	}
	return n, nil
}

// agentCut finds where retention may cut a host whose agent signs checkpoints (agent true): at the
// newest checkpoint received before cutoff whose events were all received before cutoff and form a
// prefix of the collector's chain; upto is that prefix's last position (0 or at most basePos: no cut
// now), tomb the checkpoint to store as the tombstone.
func (s *Store) agentCut(ctx context.Context, tx *sql.Tx, host string, cutoff time.Time, basePos int64) (agent bool, upto int64, tomb *CheckpointEntry, err error) {
	rows, err := tx.QueryContext(ctx, `SELECT signed FROM agent_checkpoints WHERE host = $1 AND source = '' AND tombstone_ns = 0
		ORDER BY seq DESC, id DESC LIMIT 50`, host)
	if err != nil {
		return false, 0, nil, fmt.Errorf("read checkpoints of %q for retention: %w", host, err)
	}
	var cands []CheckpointEntry
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			rows.Close()
			return false, 0, nil, fmt.Errorf("read checkpoints of %q for retention: %w", host, err)
		}
		agent = true
		if e, err := decodeEntry(raw, 0); err == nil && e.CP.GetTime().AsTime().Before(cutoff) {
			cands = append(cands, e)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, 0, nil, fmt.Errorf("read checkpoints of %q for retention: %w", host, err)
	}
	for i := range cands {
		seq := int64(cands[i].CP.GetSeq())
		var maxPos, maxRecv, minAfter int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(chain_pos), 0), COALESCE(MAX(receive_ns), 0) FROM events WHERE host = $1 AND seq <= $2`, host, seq).
			Scan(&maxPos, &maxRecv); err != nil {
			return agent, 0, nil, fmt.Errorf("find expired events of %q: %w", host, err)
		}
		if maxPos <= basePos {
			return agent, 0, nil, nil // older checkpoints cut even less
		}
		if maxRecv >= cutoff.UnixNano() {
			continue
		}
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MIN(chain_pos), 0) FROM events WHERE host = $1 AND seq > $2`, host, seq).Scan(&minAfter); err != nil {
			return agent, 0, nil, fmt.Errorf("find expired events of %q: %w", host, err)
		}
		if minAfter != 0 && minAfter < maxPos {
			continue // not a prefix of the collector's chain
		}
		return agent, maxPos, &cands[i], nil
	}
	return agent, 0, nil, nil
}
