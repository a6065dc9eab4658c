package store

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

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

const insertColumns = 20

// Append stores a batch of one host's events exactly once and advances the host's chain, in one
// transaction that is committed (durably) before it returns. Every event's Host must equal host.
//
// An event whose seq is at most the host's acknowledged sequence number, or is already stored with the
// same content, is a duplicate and is not stored again. A seq already stored with different content
// fails the whole batch with ErrConflict; nothing of the batch is stored then.
func (s *Store) Append(ctx context.Context, host string, events []*pb.Event, skipped []Range) (AppendResult, error) {
	start := time.Now()
	var res AppendResult
	if host == "" {
		return res, fmt.Errorf("%w: empty host", ErrInvalid)
	}
	type item struct {
		ev      *pb.Event
		payload []byte
		digest  []byte
	}
	items := make([]item, 0, len(events))
	for _, ev := range events {
		if ev.GetHost() != host {
			return res, fmt.Errorf("%w: event seq %d carries host %q, batch is for %q", ErrInvalid, ev.GetSeq(), ev.GetHost(), host)
		}
		if ev.GetSeq() == 0 || ev.GetSeq() > math.MaxInt64 {
			return res, fmt.Errorf("%w: sequence number %d out of range 1..2^63-1", ErrInvalid, ev.GetSeq())
		}
		payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			return res, fmt.Errorf("%w: encode event seq %d: %v", ErrInvalid, ev.GetSeq(), err)
		}
		items = append(items, item{ev: ev, payload: payload, digest: chain.Digest(payload)})
	}
	for _, r := range skipped {
		if r.First == 0 || r.Last < r.First || r.Last > math.MaxInt64 {
			return res, fmt.Errorf("%w: skipped range %d..%d is not a valid range of sequence numbers", ErrInvalid, r.First, r.Last)
		}
	}
	now := time.Now().UnixNano()

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return res, fmt.Errorf("begin append: %w", err)
	}
	defer tx.Rollback()

	if _, err := tx.ExecContext(ctx, `INSERT INTO hosts (host, first_seen_ns, last_seen_ns, chain_head, chain_base_hash)
		VALUES ($1, $2, $2, $3, $3) ON CONFLICT (host) DO NOTHING`, host, now, chain.Genesis(host)); err != nil {
		return res, fmt.Errorf("register host %q: %w", host, err)
	}
	var st hostState
	var acked, maxSeq, count, chainLen, latestSeq, healthSeq int64
	if err := tx.QueryRowContext(ctx, `SELECT acked_seq, max_seq, event_count, chain_len, chain_head, latest_seq, last_health_seq
		FROM hosts WHERE host = $1`+s.forUpdate(), host).Scan(&acked, &maxSeq, &count, &chainLen, &st.head, &latestSeq, &healthSeq); err != nil {
		return res, fmt.Errorf("lock host %q: %w", host, err)
	}
	st.acked, st.maxSeq, st.count, st.chainLen, st.latestSeq, st.healthSeq = uint64(acked), uint64(maxSeq), uint64(count), uint64(chainLen), uint64(latestSeq), uint64(healthSeq)

	for _, it := range items {
		if seq := it.ev.GetSeq(); seq > st.acked+s.maxAhead {
			return res, fmt.Errorf("%w: sequence number %d is more than %d ahead of the acknowledged %d: send events in order", ErrInvalid, seq, s.maxAhead, st.acked)
		}
	}
	for _, r := range skipped {
		if r.Last > st.acked+s.maxAhead {
			return res, fmt.Errorf("%w: skipped range %d..%d reaches more than %d ahead of the acknowledged %d", ErrInvalid, r.First, r.Last, s.maxAhead, st.acked)
		}
	}

	// Which of the batch's sequence numbers are already stored, and with what content?
	existing := map[uint64][]byte{}
	var lo, hi uint64 = math.MaxUint64, 0
	for _, it := range items {
		if seq := it.ev.GetSeq(); seq > st.acked {
			lo, hi = min(lo, seq), max(hi, seq)
		}
	}
	if hi > 0 && lo <= st.maxSeq {
		rows, err := tx.QueryContext(ctx, `SELECT seq, digest FROM events WHERE host = $1 AND seq >= $2 AND seq <= $3`, host, int64(lo), int64(hi))
		if err != nil {
			return res, fmt.Errorf("look up stored sequence numbers: %w", err)
		}
		for rows.Next() {
			var seq int64
			var d []byte
			if err := rows.Scan(&seq, &d); err != nil {
				rows.Close()
				return res, fmt.Errorf("look up stored sequence numbers: %w", err)
			}
			existing[uint64(seq)] = d
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, fmt.Errorf("look up stored sequence numbers: %w", err)
		}
	}
	// Acknowledged sequence numbers that are still stored must match too: a mismatch means the agent
	// renumbered (e.g. its spool was wiped) and must not be silently treated as a replay.
	var oldSeqs []uint64
	for _, it := range items {
		if seq := it.ev.GetSeq(); seq <= st.acked {
			oldSeqs = append(oldSeqs, seq)
		}
	}
	if len(oldSeqs) > 0 {
		sort.Slice(oldSeqs, func(i, j int) bool { return oldSeqs[i] < oldSeqs[j] })
		rows, err := tx.QueryContext(ctx, `SELECT seq, digest FROM events WHERE host = $1 AND seq >= $2 AND seq <= $3`, host, int64(oldSeqs[0]), int64(oldSeqs[len(oldSeqs)-1]))
		if err != nil {
			return res, fmt.Errorf("look up replayed sequence numbers: %w", err)
		}
		for rows.Next() {
			var seq int64
			var d []byte
			if err := rows.Scan(&seq, &d); err != nil {
				rows.Close()
				return res, fmt.Errorf("look up replayed sequence numbers: %w", err)
			}
			existing[uint64(seq)] = d
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, fmt.Errorf("look up replayed sequence numbers: %w", err)
		}
	}

	type row struct {
		it             item
		pos            uint64
		prev, hash     []byte
		ix             index
		receiveNanosec int64
	}
	var toInsert []row
	batchSeen := map[uint64][]byte{}
	head := st.head
	var latest *pb.Event
	var health *pb.Event
	for _, it := range items {
		seq := it.ev.GetSeq()
		if d, ok := batchSeen[seq]; ok {
			if !bytes.Equal(d, it.digest) {
				return res, fmt.Errorf("%w: seq %d appears twice in one batch with different content", ErrConflict, seq)
			}
			res.Duplicates++
			continue
		}
		batchSeen[seq] = it.digest
		if d, ok := existing[seq]; ok {
			if !bytes.Equal(d, it.digest) {
				return res, fmt.Errorf("%w: host %q seq %d; if the agent's spool was reset it must continue numbering after %d", ErrConflict, host, seq, st.acked)
			}
			res.Duplicates++
			continue
		}
		if seq <= st.acked {
			// Acknowledged earlier and since removed by retention, or declared skipped: a replay.
			res.Duplicates++
			continue
		}
		st.chainLen++
		h := s.hasher.Link(head, host, seq, st.chainLen, it.digest)
		toInsert = append(toInsert, row{it: it, pos: st.chainLen, prev: head, hash: h, ix: indexOf(it.ev), receiveNanosec: now})
		head = h
		if seq > st.maxSeq {
			st.maxSeq = seq
		}
		if seq > st.latestSeq {
			st.latestSeq = seq
			latest = it.ev
		}
		if _, ok := it.ev.GetKind().(*pb.Event_AgentHealth); ok && seq > st.healthSeq {
			st.healthSeq = seq
			health = it.ev
		}
	}
	res.Stored = len(toInsert)

	const chunk = 250
	for start := 0; start < len(toInsert); start += chunk {
		end := min(start+chunk, len(toInsert))
		var sb strings.Builder
		sb.WriteString(`INSERT INTO events (host, seq, chain_pos, time_ns, receive_ns, kind, decision, rule,
			proc_pid, proc_comm, proc_exe, target_pid, target_comm, target_exe, payload, digest, prev_hash, hash, collector, severity) VALUES `)
		args := make([]any, 0, (end-start)*insertColumns)
		for i, r := range toInsert[start:end] {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteByte('(')
			for c := 0; c < insertColumns; c++ {
				if c > 0 {
					sb.WriteByte(',')
				}
				if s.backend == SQLite {
					// Positional ? parameters: SQLite resolves $N names by a linear search per
					// parameter, which made large multi-row inserts CPU-bound.
					sb.WriteByte('?')
				} else {
					sb.WriteByte('$')
					sb.WriteString(strconv.Itoa(i*insertColumns + c + 1))
				}
			}
			sb.WriteByte(')')
			p, t := r.ix.proc, r.ix.target
			args = append(args, host, int64(r.it.ev.GetSeq()), int64(r.pos), r.ix.timeNanos, r.receiveNanosec,
				int32(r.ix.kind), int32(r.ix.decision), r.ix.rule,
				pid(p), comm(p), exe(p), pid(t), comm(t), exe(t),
				r.it.payload, r.it.digest, r.prev, r.hash, s.collector, int32(r.ix.severity))
		}
		if _, err := tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return res, fmt.Errorf("store %d events of host %q: %w", end-start, host, err)
		}
	}

	// Declared gaps.
	for _, r := range skipped {
		if r.Last <= st.acked {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO seq_gaps (host, first_seq, last_seq) VALUES ($1, $2, $3)
			ON CONFLICT (host, first_seq) DO UPDATE SET last_seq = CASE WHEN excluded.last_seq > seq_gaps.last_seq THEN excluded.last_seq ELSE seq_gaps.last_seq END`,
			host, int64(r.First), int64(r.Last)); err != nil {
			return res, fmt.Errorf("record skipped range %d..%d: %w", r.First, r.Last, err)
		}
		if r.Last > st.maxSeq {
			st.maxSeq = r.Last
		}
	}

	newAcked, err := s.advance(ctx, tx, host, st.acked, st.maxSeq)
	if err != nil {
		return res, err
	}
	st.acked = newAcked
	st.count += uint64(len(toInsert))

	q := `UPDATE hosts SET acked_seq = $2, max_seq = $3, event_count = $4, chain_len = $5, chain_head = $6, last_seen_ns = $7, latest_seq = $8`
	args := []any{host, int64(st.acked), int64(st.maxSeq), int64(st.count), int64(st.chainLen), head, now, int64(st.latestSeq)}
	if latest != nil {
		q += `, agent_version = $9, boot_id = $10`
		args = append(args, latest.GetAgentVersion(), latest.GetBootId())
	}
	if health != nil {
		hb, err := proto.Marshal(health.GetAgentHealth())
		if err != nil {
			return res, fmt.Errorf("encode health: %w", err)
		}
		n := len(args)
		q += fmt.Sprintf(`, last_health = $%d, last_health_seq = $%d, last_health_ns = $%d`, n+1, n+2, n+3)
		args = append(args, hb, int64(st.healthSeq), indexOf(health).timeNanos)
	}
	if _, err := tx.ExecContext(ctx, q+` WHERE host = $1`, args...); err != nil {
		return res, fmt.Errorf("update host %q: %w", host, err)
	}
	if st.acked > 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM seq_gaps WHERE host = $1 AND last_seq <= $2`, host, int64(st.acked)); err != nil {
			return res, fmt.Errorf("prune skipped ranges: %w", err)
		}
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
