package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Pipelined appends (PostgreSQL). One host's appends are serial: each locks the host's row, links its
// events after the chain head it read and commits. On PostgreSQL the next batch of a stream need not
// wait for that: AppendStart with after set inserts it on its own connection, linked after the state
// the append before it will leave, while that one still writes its filter terms, its host row and
// commits (Finish). The continuing append takes no lock until its own Finish, which starts (after the
// one before it has committed) by locking the host's row only if the row holds exactly the state it
// continued and no other writer holds it (NOWAIT: that writer may be waiting for the continuing
// append's rows). Otherwise it rolls back with ErrStale, having stored nothing, and the caller appends
// the batch again the ordinary way (after settling the one before it). A continuing append is possible only in the steady state: no skipped ranges, no replays,
// sequence numbers continuing the acknowledged one without a hole, on both appends.

// ErrStale: a continuing append (AppendStart with after) could not continue the append before it;
// nothing of it was stored. Append the batches again without after, once that append is finished.
var ErrStale = errors.New("append cannot continue the one before it")

// continuingLockTimeout bounds the lock waits of a continuing append: a writer of the same host on
// another stream could otherwise wait on its rows while it waits, in the caller, for the append before
// it, which waits on that writer.
const continuingLockTimeout = "10s"

// Pipelines reports whether AppendStart can continue an append not yet finished (PostgreSQL).
func (s *Store) Pipelines() bool { return s.backend == Postgres }

// Appending is an append whose events are inserted in its open transaction (AppendStart); Finish
// completes and commits it, Abort rolls it back.
type Appending struct {
	s          *Store
	host       string
	conn       *sql.Conn
	tx         *sql.Tx
	start      time.Time
	now        int64
	skipped    []Range
	rows       []row
	upd        hostUpdate
	contiguous bool       // see contiguousAfter: st is final after AppendStart
	st         hostState  // the host's state after this append (its acknowledgement final only when contiguous)
	expect     *hostState // a continuing append: the host row it continues (nil: it holds the row's lock)
	res        AppendResult
}

// AppendStart is the first half of AppendPrepared: it validates, dedupes, links and inserts the
// batches' events in a transaction it leaves open for Finish (or Abort). With after, an append started
// and not yet finished on the same host's stream, it continues after's chain without waiting for it
// (see the top of this file); it fails with ErrStale, storing nothing, where it cannot, and then the
// caller must finish after before appending these batches again with after nil. The caller finishes
// after before this one, and aborts this one if after fails.
func (s *Store) AppendStart(ctx context.Context, host string, batches []*Prepared, skipped []Range, after *Appending) (*Appending, error) {
	items, err := joinBatches(host, batches)
	if err != nil {
		return nil, err
	}
	if _, err := validateBatch(host, nil, skipped); err != nil {
		return nil, err
	}
	if after != nil && (s.backend != Postgres || after.host != host || !after.contiguous || len(skipped) > 0) {
		return nil, fmt.Errorf("%w: not the steady state of a PostgreSQL stream", ErrStale)
	}
	a := &Appending{s: s, host: host, start: time.Now(), now: time.Now().UnixNano(), skipped: skipped}
	if after != nil {
		expect := after.st
		a.expect = &expect
	}
	a.conn, a.tx, err = s.begin(ctx)
	if err != nil {
		return nil, a.stale(err)
	}
	if after != nil {
		err = s.continuingStart(ctx, a, items)
	} else {
		err = s.lockedStart(ctx, a, items)
	}
	if err == nil {
		err = s.assignIDs(ctx, a.conn, a.tx, a.rows)
	}
	if err == nil {
		err = s.insert(ctx, a.conn, a.tx, host, a.rows)
	}
	if err != nil {
		a.Abort()
		return nil, a.stale(err)
	}
	return a, nil
}

// continuingStart is AppendStart's part for a continuing append: the batch must be new events only,
// continuing the acknowledgement a.expect will have without a hole; its links follow a.expect's head.
func (s *Store) continuingStart(ctx context.Context, a *Appending, items []item) error {
	st := *a.expect
	if _, err := a.tx.ExecContext(ctx, `SET LOCAL lock_timeout = '`+continuingLockTimeout+`'`); err != nil {
		return fmt.Errorf("set lock timeout: %w", err)
	}
	if err := checkAhead(items, nil, st.acked, s.maxAhead); err != nil {
		return err
	}
	fresh, dups, err := dedupe(a.host, items, nil, st.acked)
	if err != nil {
		return err
	}
	if dups > 0 || len(fresh) == 0 || !contiguousAfter(st, fresh) {
		return fmt.Errorf("%w: the batch does not continue sequence number %d without a hole or a replay", ErrStale, st.acked)
	}
	a.contiguous = true
	a.link(fresh, st)
	return nil
}

// lockExpected locks the host's row for a continuing append's Finish, if it holds exactly expect and
// no one else holds its lock; ErrStale otherwise. Not waiting matters: the writer holding the lock may
// be waiting for this append's rows.
func lockExpected(ctx context.Context, tx *sql.Tx, host string, expect *hostState) error {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM hosts WHERE host = $1 AND acked_seq = $2 AND max_seq = $3 AND event_count = $4
		AND chain_len = $5 AND chain_head = $6 AND latest_seq = $7 AND last_health_seq = $8 FOR UPDATE NOWAIT`,
		host, int64(expect.acked), int64(expect.maxSeq), int64(expect.count), int64(expect.chainLen), expect.head,
		int64(expect.latestSeq), int64(expect.healthSeq)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: host %q's row is not the state this append continued", ErrStale, host)
	}
	if err != nil {
		return fmt.Errorf("%w: lock host %q: %w", ErrStale, host, err)
	}
	return nil
}

// stale marks err as ErrStale when a is a continuing append, whose failures all mean: append again
// the ordinary way, which reports what is really wrong.
func (a *Appending) stale(err error) error {
	if a.expect == nil || errors.Is(err, ErrStale) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStale, err)
}
