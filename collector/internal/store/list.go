package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Cursor is a position in the (time, host, seq) order of events.
type Cursor struct {
	TimeNanos int64
	Host      string
	Seq       uint64
}

// where builds the SQL condition for a filter; every value is a bound parameter.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	// cond uses ? for each argument; they are numbered here.
	var sb strings.Builder
	for _, r := range cond {
		if r == '?' {
			w.args = append(w.args, args[0])
			args = args[1:]
			sb.WriteByte('$')
			sb.WriteString(strconv.Itoa(len(w.args)))
			continue
		}
		sb.WriteRune(r)
	}
	w.conds = append(w.conds, sb.String())
}

func (w *where) in(column string, vals []any) {
	if len(vals) == 0 {
		return
	}
	marks := strings.TrimSuffix(strings.Repeat("?,", len(vals)), ",")
	w.add(column+" IN ("+marks+")", vals...)
}

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return "TRUE"
	}
	return strings.Join(w.conds, " AND ")
}

// filterWhere builds the row condition of a filter: every column it names is checked on each row
// (the filter terms of terms.go only narrow which rows are read).
func filterWhere(f *pb.EventFilter) *where {
	w := &where{}
	if f == nil {
		return w
	}
	hosts := make([]any, len(f.GetHosts()))
	for i, h := range f.GetHosts() {
		hosts[i] = h
	}
	w.in("host", hosts)
	kinds := make([]any, len(f.GetKinds()))
	for i, k := range f.GetKinds() {
		kinds[i] = int32(k)
	}
	w.in("kind", kinds)
	decisions := make([]any, len(f.GetDecisions()))
	for i, d := range f.GetDecisions() {
		decisions[i] = int32(d)
	}
	w.in("decision", decisions)
	if t := f.GetStartTime(); t != nil {
		w.add("time_ns >= ?", t.AsTime().UnixNano())
	}
	if t := f.GetEndTime(); t != nil {
		w.add("time_ns < ?", t.AsTime().UnixNano())
	}
	if p := f.GetProcess(); p != "" {
		w.add("(proc_comm = ? OR proc_exe = ? OR target_comm = ? OR target_exe = ?)", p, p, p, p)
	}
	if pid := f.GetPid(); pid != 0 {
		w.add("(proc_pid = ? OR target_pid = ?)", int64(pid), int64(pid))
	}
	if r := f.GetRule(); r != "" {
		w.add("rule = ?", r)
	}
	if sv := f.GetMinSeverity(); sv != pb.Severity_SEVERITY_UNSPECIFIED {
		w.add("severity >= ?", int32(sv))
	}
	return w
}

const eventColumns = `host, seq, chain_pos, receive_ns, payload, hash, collector, time_ns`

func scanEvents(rows *sql.Rows) ([]*pb.StoredEvent, []Cursor, error) {
	defer rows.Close()
	var out []*pb.StoredEvent
	var curs []Cursor
	for rows.Next() {
		var host, collector string
		var seq, pos, recv, tns int64
		var payload, hash []byte
		if err := rows.Scan(&host, &seq, &pos, &recv, &payload, &hash, &collector, &tns); err != nil {
			return nil, nil, fmt.Errorf("read event row: %w", err)
		}
		ev := &pb.Event{}
		if err := proto.Unmarshal(payload, ev); err != nil {
			return nil, nil, fmt.Errorf("decode stored event %s/%d (run verify: the row may have been tampered with): %w", host, seq, err)
		}
		out = append(out, &pb.StoredEvent{
			Event:         ev,
			ReceiveTime:   timestamppb.New(time.Unix(0, recv)),
			ChainPosition: uint64(pos),
			ChainHash:     hash,
			Collector:     collector,
		})
		curs = append(curs, Cursor{TimeNanos: tns, Host: host, Seq: uint64(seq)})
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read events: %w", err)
	}
	return out, curs, nil
}

// List returns up to limit events matching f in (time, host, seq) order, after the cursor if given.
// next is nil when there are no more events.
func (s *Store) List(ctx context.Context, f *pb.EventFilter, limit int, after *Cursor, newestFirst bool) ([]*pb.StoredEvent, *Cursor, error) {
	defer s.since("list", time.Now())
	w := filterWhere(f)
	cmp, order := ">", "ASC"
	if newestFirst {
		cmp, order = "<", "DESC"
	}
	if after != nil {
		w.add("(time_ns, host, seq) "+cmp+" (?, ?, ?)", after.TimeNanos, after.Host, int64(after.Seq))
	}
	qctx, cancel := context.WithTimeout(ctx, s.qtimeout)
	defer cancel()
	// A slot of the query budget, within the same deadline: a query answers or is refused within
	// the timeout, queueing included.
	if err := s.querySlot(ctx, qctx); err != nil {
		return nil, nil, err
	}
	defer s.releaseSlot(time.Now())
	plan, err := planBlocks(qctx, s.qdb, f, s.maxScanBlocks)
	if err != nil {
		return nil, nil, s.queryErr(ctx, qctx, err)
	}
	if plan.restricted && len(plan.blocks) == 0 {
		return nil, nil, nil // no block holds the filter's values
	}
	q := s.listSQL(w, plan, order, limit+1)
	rows, err := s.qdb.QueryContext(qctx, q, w.args...)
	if err != nil {
		return nil, nil, s.queryErr(ctx, qctx, err)
	}
	evs, curs, err := scanEvents(rows)
	if err != nil {
		return nil, nil, s.queryErr(ctx, qctx, err)
	}
	if len(evs) <= limit {
		return evs, nil, nil
	}
	next := curs[limit-1]
	return evs[:limit], &next, nil
}

// listSQL is List's statement: with a restricted plan it reads the plan's blocks by id (on SQLite NOT
// INDEXED keeps the planner from walking the time index instead; the id, the rowid, is still used).
func (s *Store) listSQL(w *where, plan blockPlan, order string, limit int) string {
	from := ` FROM events`
	if plan.restricted {
		w.addBlocks(plan.blocks)
		if s.backend == SQLite {
			from += ` NOT INDEXED`
		}
	}
	return `SELECT ` + eventColumns + from + ` WHERE ` + w.sql() +
		` ORDER BY time_ns ` + order + `, host ` + order + `, seq ` + order + ` LIMIT ` + strconv.Itoa(limit)
}

// querySlot takes a slot of the query budget before qctx ends.
func (s *Store) querySlot(ctx, qctx context.Context) error {
	select {
	case s.qslots <- struct{}{}:
		return nil
	default:
	}
	select {
	case s.qslots <- struct{}{}:
		return nil
	case <-qctx.Done():
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %d queries already running took the whole %s; retry in a moment", ErrQueryBusy, cap(s.qslots), s.qtimeout)
	}
}

// queryRest is how long a query slot rests after a query, as a multiple of the query's duration:
// with 4, queries keep a query connection busy at most a fifth of the time, so that however many
// run back to back, they take at most that share of the CPU from ingest.
const queryRest = 4

// releaseSlot frees the slot taken at start after its rest.
func (s *Store) releaseSlot(start time.Time) {
	rest := queryRest * time.Since(start)
	if rest <= 0 {
		<-s.qslots
		return
	}
	time.AfterFunc(rest, func() { <-s.qslots })
}

// queryErr turns a query stopped by the query timeout (not by the caller) into ErrTooBroad.
func (s *Store) queryErr(ctx, qctx context.Context, err error) error {
	var pgErr interface{ SQLState() string }
	timedOut := ctx.Err() == nil && (qctx.Err() != nil || errors.As(err, &pgErr) && pgErr.SQLState() == "57014")
	if timedOut {
		return fmt.Errorf("%w: stopped after %s; narrow it with a host, a shorter time range, a kind or a decision", ErrTooBroad, s.qtimeout)
	}
	return fmt.Errorf("query events: %w", err)
}

// ChainHeads returns every host's current chain length.
func (s *Store) ChainHeads(ctx context.Context) (map[string]uint64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT host, chain_len FROM hosts`)
	if err != nil {
		return nil, fmt.Errorf("read chain heads: %w", err)
	}
	defer rows.Close()
	m := map[string]uint64{}
	for rows.Next() {
		var h string
		var n int64
		if err := rows.Scan(&h, &n); err != nil {
			return nil, fmt.Errorf("read chain heads: %w", err)
		}
		m[h] = uint64(n)
	}
	return m, rows.Err()
}

// PositionBefore returns the highest chain position of host received before t (0 if none).
func (s *Store) PositionBefore(ctx context.Context, host string, t time.Time) (uint64, error) {
	var p int64
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(chain_pos), 0) FROM events WHERE host = $1 AND receive_ns < $2`, host, t.UnixNano()).Scan(&p); err != nil {
		return 0, fmt.Errorf("find chain position: %w", err)
	}
	return uint64(p), nil
}

// ChainRange returns host's events with chain position in (after, upto] matching f, in chain order.
func (s *Store) ChainRange(ctx context.Context, host string, after, upto uint64, f *pb.EventFilter, limit int) ([]*pb.StoredEvent, error) {
	w := filterWhere(f)
	w.add("host = ?", host)
	w.add("chain_pos > ?", int64(after))
	w.add("chain_pos <= ?", int64(upto))
	q := `SELECT ` + eventColumns + ` FROM events WHERE ` + w.sql() + ` ORDER BY chain_pos LIMIT ` + strconv.Itoa(limit)
	rows, err := s.db.QueryContext(ctx, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("query new events: %w", err)
	}
	evs, _, err := scanEvents(rows)
	return evs, err
}

// Hosts returns the known hosts (all when names is empty), sorted by name. A host not seen for staleAfter
// is HOST_STATUS_STALE.
func (s *Store) Hosts(ctx context.Context, names []string, now time.Time, staleAfter time.Duration) ([]*pb.Host, error) {
	defer s.since("hosts", time.Now())
	w := &where{}
	vals := make([]any, len(names))
	for i, n := range names {
		vals[i] = n
	}
	w.in("host", vals)
	rows, err := s.db.QueryContext(ctx, `SELECT host, first_seen_ns, last_seen_ns, acked_seq, event_count, agent_version, boot_id,
		last_health, last_health_ns FROM hosts WHERE `+w.sql()+` ORDER BY host`, w.args...)
	if err != nil {
		return nil, fmt.Errorf("query hosts: %w", err)
	}
	defer rows.Close()
	var out []*pb.Host
	for rows.Next() {
		var h pb.Host
		var first, last, acked, count, healthNs int64
		var health []byte
		if err := rows.Scan(&h.Host, &first, &last, &acked, &count, &h.AgentVersion, &h.BootId, &health, &healthNs); err != nil {
			return nil, fmt.Errorf("read host row: %w", err)
		}
		h.FirstSeenTime = timestamppb.New(time.Unix(0, first))
		h.LastSeenTime = timestamppb.New(time.Unix(0, last))
		h.AckedSeq, h.EventCount = uint64(acked), uint64(count)
		if len(health) > 0 {
			ah := &pb.AgentHealth{}
			if err := proto.Unmarshal(health, ah); err != nil {
				return nil, fmt.Errorf("decode last health of %q: %w", h.Host, err)
			}
			h.LastHealth = ah
			h.LastHealthTime = timestamppb.New(time.Unix(0, healthNs))
		}
		h.Status = hostStatus(h.LastHealth, now.Sub(time.Unix(0, last)), staleAfter)
		out = append(out, &h)
	}
	return out, rows.Err()
}

func hostStatus(health *pb.AgentHealth, since, staleAfter time.Duration) pb.HostStatus {
	switch health.GetState() {
	case pb.AgentState_AGENT_STATE_UNINSTALLED:
		return pb.HostStatus_HOST_STATUS_UNINSTALLED
	case pb.AgentState_AGENT_STATE_STOPPING:
		return pb.HostStatus_HOST_STATUS_STOPPED
	}
	if staleAfter > 0 && since > staleAfter {
		return pb.HostStatus_HOST_STATUS_STALE
	}
	if health == nil {
		return pb.HostStatus_HOST_STATUS_UNSPECIFIED
	}
	return pb.HostStatus_HOST_STATUS_ONLINE
}
