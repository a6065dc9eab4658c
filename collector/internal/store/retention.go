package store

import (
	"context"
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
	// receive order, so this is a prefix.
	var upto int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(chain_pos), 0) FROM events WHERE host = $1 AND receive_ns < $2`, host, cutoff.UnixNano()).Scan(&upto); err != nil {
		return 0, fmt.Errorf("find expired events of %q: %w", host, err)
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
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit retention for %q: %w", host, err)
	}
	return n, nil
}
