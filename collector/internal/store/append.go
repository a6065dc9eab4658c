package store

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"google.golang.org/protobuf/proto"

	"github.com/keyguard/keyguard/collector/internal/chain"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Range is an inclusive range of sequence numbers.
type Range struct{ First, Last uint64 }

// AppendResult reports what one Append did.
type AppendResult struct {
	// Acked is the host's highest contiguous stored-or-skipped sequence number after the append.
	Acked uint64
	// Stored counts newly stored events; Duplicates counts events already stored (or already acknowledged).
	Stored, Duplicates int
}

// hostState is the locked hosts row during an append.
type hostState struct {
	acked, maxSeq, count, chainLen, latestSeq, healthSeq uint64
	head                                                 []byte
}

// Append stores a batch of one host's events exactly once and advances the host's chain, in one
// transaction that is committed (durably) before it returns. Every event's Host must equal host.
//
// An event whose seq is at most the host's acknowledged sequence number, or is already stored with the
// same content, is a duplicate and is not stored again. A seq already stored with different content
// fails the whole batch with ErrConflict; nothing of the batch is stored then.
//
// It runs as named steps, each tested on its own: validate the batch, lock the host's row, dedupe
// against what is stored, insert the new events, and advance the chain and the host's state.
func (s *Store) Append(ctx context.Context, host string, events []*pb.Event, skipped []Range) (AppendResult, error) {
	p, err := Prepare(host, events)
	if err != nil {
		return AppendResult{}, err
	}
	return s.AppendPrepared(ctx, host, []*Prepared{p}, skipped)
}

// Prepared is a batch of one host's events checked, stripped of unknown fields, encoded and
// digested for AppendPrepared (step 1 of Append). Preparing needs no database, so a caller can
// prepare the next batch while the last one commits.
type Prepared struct {
	host  string
	items []item
}

// Prepare is step 1 of Append for events alone; see validateBatch. The events must not change
// until they are appended.
func Prepare(host string, events []*pb.Event) (*Prepared, error) {
	items, err := validateBatch(host, events, nil)
	if err != nil {
		return nil, err
	}
	return &Prepared{host: host, items: items}, nil
}

// AppendPrepared is Append of the prepared batches, in order, as one batch.
func (s *Store) AppendPrepared(ctx context.Context, host string, batches []*Prepared, skipped []Range) (AppendResult, error) {
	start := time.Now()
	var res AppendResult
	var items []item
	if len(batches) == 1 {
		items = batches[0].items
	}
	for _, b := range batches {
		if b.host != host {
			return res, fmt.Errorf("%w: a batch prepared for host %q appended for %q", ErrInvalid, b.host, host)
		}
		if len(batches) > 1 {
			items = append(items, b.items...)
		}
	}
	if _, err := validateBatch(host, nil, skipped); err != nil {
		return res, err
	}
	now := time.Now().UnixNano()

	// A connection of its own, so that the insert can reach the driver's COPY on PostgreSQL within
	// the transaction.
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return res, fmt.Errorf("begin append: %w", err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return res, fmt.Errorf("begin append: %w", err)
	}
	defer tx.Rollback()

	st, err := s.lockHost(ctx, tx, host, now)
	if err != nil {
		return res, err
	}
	if err := checkAhead(items, skipped, st.acked, s.maxAhead); err != nil {
		return res, err
	}
	existing, err := s.storedDigests(ctx, tx, host, items, st)
	if err != nil {
		return res, err
	}
	fresh, dups, err := dedupe(host, items, existing, st.acked)
	if err != nil {
		return res, err
	}
	res.Duplicates = dups
	contiguous := len(skipped) == 0 && contiguousAfter(st, fresh)
	rows, upd := s.link(host, fresh, &st, now)
	res.Stored = len(rows)
	if err := s.assignIDs(ctx, conn, tx, rows); err != nil {
		return res, err
	}
	if err := s.insert(ctx, conn, tx, host, rows); err != nil {
		return res, err
	}
	if err := s.insertTerms(ctx, tx, rows); err != nil {
		return res, err
	}
	if err := s.recordAttempts(ctx, tx, host, rows); err != nil {
		return res, err
	}
	if err := s.advanceChain(ctx, tx, host, skipped, &st, upd, now, contiguous); err != nil {
		return res, err
	}
	commitStart := time.Now()
	if err := tx.Commit(); err != nil {
		return res, fmt.Errorf("commit events of host %q: %w", host, err)
	}
	s.since("commit", commitStart)
	s.since("append", start)
	res.Acked = st.acked
	return res, nil
}

// item is one event of a batch with its canonical encoding, digest and indexed columns.
type item struct {
	ev      *pb.Event
	payload []byte
	digest  []byte
	ix      index
}

// validateBatch is step 1: every event belongs to host and has a storable sequence number, every
// skipped range is a range; events lose their unknown fields and are encoded canonically
// (deterministic marshalling), digested and their indexed columns read (indexOf).
func validateBatch(host string, events []*pb.Event, skipped []Range) ([]item, error) {
	if host == "" {
		return nil, fmt.Errorf("%w: empty host", ErrInvalid)
	}
	items := make([]item, 0, len(events))
	for _, ev := range events {
		if ev.GetHost() != host {
			return nil, fmt.Errorf("%w: event seq %d carries host %q, batch is for %q", ErrInvalid, ev.GetSeq(), ev.GetHost(), host)
		}
		if ev.GetSeq() == 0 || ev.GetSeq() > math.MaxInt64 {
			return nil, fmt.Errorf("%w: sequence number %d out of range 1..2^63-1", ErrInvalid, ev.GetSeq())
		}
		dropUnknown(ev.ProtoReflect())
		payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("%w: encode event seq %d: %v", ErrInvalid, ev.GetSeq(), err)
		}
		items = append(items, item{ev: ev, payload: payload, digest: chain.Digest(payload), ix: indexOf(ev)})
	}
	for _, r := range skipped {
		if r.First == 0 || r.Last < r.First || r.Last > math.MaxInt64 {
			return nil, fmt.Errorf("%w: skipped range %d..%d is not a valid range of sequence numbers", ErrInvalid, r.First, r.Last)
		}
	}
	return items, nil
}

// lockHost is step 2: register the host if new and read its row, locked until the transaction ends
// (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the write transaction holds the database).
func (s *Store) lockHost(ctx context.Context, tx *sql.Tx, host string, now int64) (hostState, error) {
	var st hostState
	if _, err := tx.ExecContext(ctx, `INSERT INTO hosts (host, first_seen_ns, last_seen_ns, chain_head, chain_base_hash)
		VALUES ($1, $2, $2, $3, $3) ON CONFLICT (host) DO NOTHING`, host, now, chain.Genesis(host)); err != nil {
		return st, fmt.Errorf("register host %q: %w", host, err)
	}
	var acked, maxSeq, count, chainLen, latestSeq, healthSeq int64
	if err := tx.QueryRowContext(ctx, `SELECT acked_seq, max_seq, event_count, chain_len, chain_head, latest_seq, last_health_seq
		FROM hosts WHERE host = $1`+s.forUpdate(), host).Scan(&acked, &maxSeq, &count, &chainLen, &st.head, &latestSeq, &healthSeq); err != nil {
		return st, fmt.Errorf("lock host %q: %w", host, err)
	}
	st.acked, st.maxSeq, st.count, st.chainLen, st.latestSeq, st.healthSeq = uint64(acked), uint64(maxSeq), uint64(count), uint64(chainLen), uint64(latestSeq), uint64(healthSeq)
	return st, nil
}

// checkAhead refuses a batch reaching more than maxAhead beyond the acknowledged number.
func checkAhead(items []item, skipped []Range, acked, maxAhead uint64) error {
	for _, it := range items {
		if seq := it.ev.GetSeq(); seq > acked+maxAhead {
			return fmt.Errorf("%w: sequence number %d is more than %d ahead of the acknowledged %d: send events in order", ErrInvalid, seq, maxAhead, acked)
		}
	}
	for _, r := range skipped {
		if r.Last > acked+maxAhead {
			return fmt.Errorf("%w: skipped range %d..%d reaches more than %d ahead of the acknowledged %d", ErrInvalid, r.First, r.Last, maxAhead, acked)
		}
	}
	return nil
}

// storedDigests is the lookup half of step 3: the digests already stored for the batch's sequence
// numbers. Acknowledged numbers that are still stored are looked up too: a mismatch there means the
// agent renumbered (its spool was wiped) and must not pass as a replay.
func (s *Store) storedDigests(ctx context.Context, tx *sql.Tx, host string, items []item, st hostState) (map[uint64][]byte, error) {
	existing := map[uint64][]byte{}
	var lo, hi uint64 = math.MaxUint64, 0       // unacknowledged numbers
	var oldLo, oldHi uint64 = math.MaxUint64, 0 // acknowledged numbers (replays)
	for _, it := range items {
		if seq := it.ev.GetSeq(); seq > st.acked {
			lo, hi = min(lo, seq), max(hi, seq)
		} else {
			oldLo, oldHi = min(oldLo, seq), max(oldHi, seq)
		}
	}
	if hi > 0 && lo <= st.maxSeq {
		if err := s.digestsIn(ctx, tx, host, lo, hi, existing); err != nil {
			return nil, fmt.Errorf("look up stored sequence numbers: %w", err)
		}
	}
	if oldHi > 0 {
		if err := s.digestsIn(ctx, tx, host, oldLo, oldHi, existing); err != nil {
			return nil, fmt.Errorf("look up replayed sequence numbers: %w", err)
		}
	}
	return existing, nil
}

func (s *Store) digestsIn(ctx context.Context, tx *sql.Tx, host string, lo, hi uint64, into map[uint64][]byte) error {
	rows, err := tx.QueryContext(ctx, `SELECT seq, digest FROM events WHERE host = $1 AND seq >= $2 AND seq <= $3`, host, int64(lo), int64(hi))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var d []byte
		if err := rows.Scan(&seq, &d); err != nil {
			return err
		}
		into[uint64(seq)] = d
	}
	return rows.Err()
}

// dedupe is the decision half of step 3: which items are new, and how many are duplicates (already
// stored with the same digest, repeated in the batch, or at most acked). A number stored with other
// content, or repeated in the batch with other content, is ErrConflict.
func dedupe(host string, items []item, existing map[uint64][]byte, acked uint64) (fresh []item, dups int, err error) {
	seen := map[uint64][]byte{}
	for _, it := range items {
		seq := it.ev.GetSeq()
		if d, ok := seen[seq]; ok {
			if !bytes.Equal(d, it.digest) {
				return nil, 0, fmt.Errorf("%w: seq %d appears twice in one batch with different content", ErrConflict, seq)
			}
			dups++
			continue
		}
		seen[seq] = it.digest
		if d, ok := existing[seq]; ok {
			if !bytes.Equal(d, it.digest) {
				return nil, 0, fmt.Errorf("%w: host %q seq %d; if the agent's spool was reset it must continue numbering after %d", ErrConflict, host, seq, acked)
			}
			dups++
			continue
		}
		if seq <= acked {
			// Acknowledged earlier and since removed by retention, or declared skipped: a replay.
			dups++
			continue
		}
		fresh = append(fresh, it)
	}
	return fresh, dups, nil
}

// contiguousAfter reports whether nothing is stored or declared skipped beyond the host's
// acknowledged number (so no gap rows exist beyond it either) and the fresh events are exactly the
// numbers acked+1, acked+2, ... in some order.
func contiguousAfter(st hostState, fresh []item) bool {
	if st.maxSeq != st.acked {
		return false
	}
	n := uint64(len(fresh))
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for _, it := range fresh {
		lo, hi = min(lo, it.ev.GetSeq()), max(hi, it.ev.GetSeq())
	}
	// fresh holds no number twice (dedupe), so n distinct numbers within [acked+1, acked+n] are all of them.
	return n == 0 || (lo == st.acked+1 && hi == st.acked+n)
}

// row is one event to insert, linked into the host's chain.
type row struct {
	id             int64 // the events table's id (assignIDs)
	it             item
	pos            uint64
	prev, hash     []byte
	ix             index
	receiveNanosec int64
}

// hostUpdate is what the batch changes in the host's row besides the chain.
type hostUpdate struct {
	latest, health *pb.Event
}

// link links the new items into the host's chain in batch order, advancing st's chain length, head
// and highest numbers (part of step 5, computed before the insert that stores the links).
func (s *Store) link(host string, fresh []item, st *hostState, now int64) ([]row, hostUpdate) {
	var upd hostUpdate
	rows := make([]row, 0, len(fresh))
	for _, it := range fresh {
		seq := it.ev.GetSeq()
		st.chainLen++
		h := s.hasher.Link(st.head, host, seq, st.chainLen, it.digest)
		rows = append(rows, row{it: it, pos: st.chainLen, prev: st.head, hash: h, ix: it.ix, receiveNanosec: now})
		st.head = h
		st.maxSeq = max(st.maxSeq, seq)
		if seq > st.latestSeq {
			st.latestSeq = seq
			upd.latest = it.ev
		}
		if _, ok := it.ev.GetKind().(*pb.Event_AgentHealth); ok && seq > st.healthSeq {
			st.healthSeq = seq
			upd.health = it.ev
		}
	}
	st.count += uint64(len(rows))
	return rows, upd
}

// insertChunk bounds the rows of one INSERT statement.
const insertChunk = 250

// insertColumns is the number of columns insert writes.
var insertColumns = len(insertColumnNames)

// insertColumnNames are the events columns insert writes, in the order of rowValues.
var insertColumnNames = []string{"host", "seq", "chain_pos", "time_ns", "receive_ns", "kind", "decision", "rule",
	"proc_pid", "proc_comm", "proc_exe", "target_pid", "target_comm", "target_exe", "payload", "digest", "prev_hash", "hash", "collector", "severity"}

// batchValues are the column values every row of a batch shares, converted to interfaces once (each
// conversion of a string or a large integer allocates).
type batchValues struct{ host, receive, collector any }

func (s *Store) batchValues(host string, rows []row) batchValues {
	bv := batchValues{host: host, collector: s.collector}
	if len(rows) > 0 {
		bv.receive = rows[0].receiveNanosec // link gives every row of a batch the same
	}
	return bv
}

// rowValues appends the column values of r (insertColumnNames) to args.
func rowValues(args []any, bv batchValues, r row) []any {
	p, t := r.ix.proc, r.ix.target
	return append(args, bv.host, int64(r.it.ev.GetSeq()), int64(r.pos), r.ix.timeNanos, bv.receive,
		int32(r.ix.kind), int32(r.ix.decision), r.ix.rule,
		pid(p), comm(p), exe(p), pid(t), comm(t), exe(t),
		r.it.payload, r.it.digest, r.prev, r.hash, bv.collector, int32(r.ix.severity))
}

// assignIDs gives the rows their ids before the insert, so that their blocks' filter terms are known
// (terms.go): on SQLite the numbers AUTOINCREMENT will give them, those after the highest ever used
// (the write transaction holds the database; insert checks), on PostgreSQL numbers drawn from the id
// sequence (collectors sharing the database draw distinct ones).
func (s *Store) assignIDs(ctx context.Context, conn *sql.Conn, tx *sql.Tx, rows []row) error {
	if len(rows) == 0 {
		return nil
	}
	if s.backend == SQLite {
		var last int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(n), 0) FROM (SELECT seq AS n FROM sqlite_sequence WHERE name = 'events' UNION ALL SELECT MAX(id) FROM events)`).Scan(&last); err != nil {
			return fmt.Errorf("allocate event ids: %w", err)
		}
		for i := range rows {
			rows[i].id = last + 1 + int64(i)
		}
		return nil
	}
	// One array value, not a row per id: reading thousands of rows through database/sql cost more than
	// the insert of the rows themselves (about 3.6 µs per event of the append's 21).
	var ids []int64
	err := conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("PostgreSQL driver connection is %T, not pgx's", dc)
		}
		return c.Conn().QueryRow(ctx, `SELECT array_agg(nextval((SELECT pg_get_serial_sequence('events', 'id'))::regclass)) FROM generate_series(1, $1)`, len(rows)).Scan(&ids)
	})
	if err != nil {
		return fmt.Errorf("allocate event ids: %w", err)
	}
	if len(ids) != len(rows) {
		return fmt.Errorf("allocate event ids: got %d of %d", len(ids), len(rows))
	}
	for i := range rows {
		rows[i].id = ids[i]
	}
	return nil
}

// insert is step 4: the rows, with COPY on PostgreSQL (on conn, which runs tx) and in multi-row
// INSERT statements on SQLite.
func (s *Store) insert(ctx context.Context, conn *sql.Conn, tx *sql.Tx, host string, rows []row) error {
	if s.backend == Postgres && len(rows) > 0 {
		if err := s.copyRows(ctx, conn, host, rows); err != nil {
			return fmt.Errorf("store %d events of host %q: %w", len(rows), host, err)
		}
		return nil
	}
	bv := s.batchValues(host, rows)
	for start := 0; start < len(rows); start += insertChunk {
		end := min(start+insertChunk, len(rows))
		args := make([]any, 0, (end-start)*insertColumns)
		for _, r := range rows[start:end] {
			args = rowValues(args, bv, r)
		}
		var res sql.Result
		var err error
		if end-start == insertChunk {
			var st *sql.Stmt
			if st, err = s.fullInsert(ctx); err == nil {
				res, err = tx.StmtContext(ctx, st).ExecContext(ctx, args...)
			}
		} else {
			res, err = tx.ExecContext(ctx, insertSQL(s.backend, end-start), args...)
		}
		if err != nil {
			return fmt.Errorf("store %d events of host %q: %w", end-start, host, err)
		}
		// SQLite numbers the rows itself (AUTOINCREMENT; an explicit id would make it keep a statement
		// journal for the insert): the numbers assignIDs expected, which the filter terms use.
		if last, err := res.LastInsertId(); err != nil || last != rows[end-1].id {
			return fmt.Errorf("store events of host %q: event id %d, expected %d (%v)", host, last, rows[end-1].id, err)
		}
	}
	return nil
}

// fullInsert returns the prepared INSERT of insertChunk rows (database/sql prepares it again on each
// connection that runs it, once).
func (s *Store) fullInsert(ctx context.Context) (*sql.Stmt, error) {
	s.insertMu.Lock()
	defer s.insertMu.Unlock()
	if s.insertFull == nil {
		st, err := s.db.PrepareContext(ctx, insertSQL(s.backend, insertChunk))
		if err != nil {
			return nil, fmt.Errorf("prepare event insert: %w", err)
		}
		s.insertFull = st
	}
	return s.insertFull, nil
}

// insertSQL is the INSERT statement for n rows.
func insertSQL(backend Backend, n int) string {
	var sb strings.Builder
	sb.WriteString(`INSERT `)
	if backend == SQLite {
		// OR ROLLBACK: a constraint failure ends the whole transaction (Append rolls it back on any
		// error anyway), so SQLite keeps no statement journal to undo one statement alone; copying
		// every touched page into that journal cost ~11% of an append.
		sb.WriteString(`OR ROLLBACK `)
	}
	sb.WriteString(`INTO events (`)
	sb.WriteString(strings.Join(insertColumnNames, ", "))
	sb.WriteString(`) VALUES `)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteByte('(')
		for c := range insertColumns {
			if c > 0 {
				sb.WriteByte(',')
			}
			if backend == SQLite {
				// Positional ? parameters: SQLite resolves $N names by a linear search per
				// parameter, which made large multi-row inserts CPU-bound.
				sb.WriteByte('?')
			} else {
				sb.WriteByte('$')
				sb.WriteString(strconv.Itoa(i*insertColumns + c + 1))
			}
		}
		sb.WriteByte(')')
	}
	return sb.String()
}

// advanceChain is step 5: record the declared gaps, move the acknowledged number over everything
// now contiguous, and write the host's new chain head, counts and latest state.
//
// contiguous (see contiguousAfter) lets it skip reading back what is stored.
func (s *Store) advanceChain(ctx context.Context, tx *sql.Tx, host string, skipped []Range, st *hostState, upd hostUpdate, now int64, contiguous bool) error {
	for _, r := range skipped {
		if r.Last <= st.acked {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO seq_gaps (host, first_seq, last_seq) VALUES ($1, $2, $3)
			ON CONFLICT (host, first_seq) DO UPDATE SET last_seq = CASE WHEN excluded.last_seq > seq_gaps.last_seq THEN excluded.last_seq ELSE seq_gaps.last_seq END`,
			host, int64(r.First), int64(r.Last)); err != nil {
			return fmt.Errorf("record skipped range %d..%d: %w", r.First, r.Last, err)
		}
		st.maxSeq = max(st.maxSeq, r.Last)
	}
	if contiguous {
		// Fast path, the steady state: nothing was stored or declared beyond the acknowledged number
		// before this batch, and the batch's new events continue it without a hole. The new
		// acknowledgement is the highest number, with nothing to read back and no gap to prune.
		st.acked = st.maxSeq
	} else {
		acked, err := s.advance(ctx, tx, host, st.acked, st.maxSeq)
		if err != nil {
			return err
		}
		st.acked = acked
	}
	q := `UPDATE hosts SET acked_seq = $2, max_seq = $3, event_count = $4, chain_len = $5, chain_head = $6, last_seen_ns = $7, latest_seq = $8`
	args := []any{host, int64(st.acked), int64(st.maxSeq), int64(st.count), int64(st.chainLen), st.head, now, int64(st.latestSeq)}
	if upd.latest != nil {
		q += `, agent_version = $9, boot_id = $10`
		args = append(args, upd.latest.GetAgentVersion(), upd.latest.GetBootId())
	}
	if upd.health != nil {
		hb, err := proto.Marshal(upd.health.GetAgentHealth())
		if err != nil {
			return fmt.Errorf("encode health: %w", err)
		}
		n := len(args)
		q += fmt.Sprintf(`, last_health = $%d, last_health_seq = $%d, last_health_ns = $%d`, n+1, n+2, n+3)
		args = append(args, hb, int64(st.healthSeq), indexOf(upd.health).timeNanos)
	}
	if _, err := tx.ExecContext(ctx, q+` WHERE host = $1`, args...); err != nil {
		return fmt.Errorf("update host %q: %w", host, err)
	}
	if st.acked > 0 && !contiguous {
		if _, err := tx.ExecContext(ctx, `DELETE FROM seq_gaps WHERE host = $1 AND last_seq <= $2`, host, int64(st.acked)); err != nil {
			return fmt.Errorf("prune skipped ranges: %w", err)
		}
	}
	return nil
}

// advance returns the highest n >= acked such that every seq in acked+1..n is stored or in a declared gap.
func (s *Store) advance(ctx context.Context, tx *sql.Tx, host string, acked, maxSeq uint64) (uint64, error) {
	for acked < maxSeq {
		before := acked
		rows, err := tx.QueryContext(ctx, `SELECT first_seq, last_seq FROM seq_gaps WHERE host = $1 AND last_seq > $2 ORDER BY first_seq`, host, int64(acked))
		if err != nil {
			return 0, fmt.Errorf("read skipped ranges: %w", err)
		}
		var gaps []Range
		for rows.Next() {
			var f, l int64
			if err := rows.Scan(&f, &l); err != nil {
				rows.Close()
				return 0, fmt.Errorf("read skipped ranges: %w", err)
			}
			gaps = append(gaps, Range{uint64(f), uint64(l)})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, fmt.Errorf("read skipped ranges: %w", err)
		}
		seqRows, err := tx.QueryContext(ctx, `SELECT seq FROM events WHERE host = $1 AND seq > $2 ORDER BY seq LIMIT 10000`, host, int64(acked))
		if err != nil {
			return 0, fmt.Errorf("read stored sequence numbers: %w", err)
		}
		var seqs []uint64
		for seqRows.Next() {
			var v int64
			if err := seqRows.Scan(&v); err != nil {
				seqRows.Close()
				return 0, fmt.Errorf("read stored sequence numbers: %w", err)
			}
			seqs = append(seqs, uint64(v))
		}
		seqRows.Close()
		if err := seqRows.Err(); err != nil {
			return 0, fmt.Errorf("read stored sequence numbers: %w", err)
		}
		gi, si := 0, 0
		for {
			moved := false
			for gi < len(gaps) && gaps[gi].First <= acked+1 {
				if gaps[gi].Last > acked {
					acked = gaps[gi].Last
					moved = true
				}
				gi++
			}
			for si < len(seqs) && seqs[si] <= acked {
				si++
			}
			if si < len(seqs) && seqs[si] == acked+1 {
				acked++
				si++
				moved = true
			}
			if !moved {
				break
			}
		}
		if acked == before || si < len(seqs) || len(seqs) < 10000 {
			break
		}
	}
	return acked, nil
}

// Acked returns a host's acknowledged sequence number (0 for an unknown host) and records it as seen.
func (s *Store) Acked(ctx context.Context, host string) (uint64, error) {
	var acked int64
	err := s.db.QueryRowContext(ctx, `SELECT acked_seq FROM hosts WHERE host = $1`, host).Scan(&acked)
	if err == sql.ErrNoRows {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read acknowledged sequence of %q: %w", host, err)
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE hosts SET last_seen_ns = $2 WHERE host = $1`, host, time.Now().UnixNano()); err != nil {
		return 0, fmt.Errorf("record contact from %q: %w", host, err)
	}
	return uint64(acked), nil
}
