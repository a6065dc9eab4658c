package store

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Filter terms (schema version 9). The filter columns other than host and time have no index of their
// own: an index per column cost a B-tree insert per event and column, about half of ingest's CPU time.
// Instead, events fall into blocks of blockSize consecutive ids, and event_terms holds one row per
// (field, value, block) that occurs: "block 812 holds an event with rule signer". Append adds the
// terms of the blocks it writes (a few rows per batch: values repeat within a block). A filter on
// such a field first reads the blocks holding its values (candidateBlocks); when they are few, the
// query reads only their rows (by id, the primary key); when nothing holds them, it answers at once;
// when many do, the value is common and the query walks the time index, where matches come soon.
// Terms only ever say a block may hold a value: every query still checks each row's columns, so a
// term left behind (retention, an updated severity) costs a look, never a wrong answer.

// blockSize is the number of consecutive event ids one block of terms covers.
const blockSize = 1024

// Term fields.
const (
	termKind     = 1
	termDecision = 2
	termRule     = 3
	termSeverity = 4
	termProcess  = 5 // comm or executable of the acting or the target process
	termPid      = 6 // pid of the acting or the target process
)

// maxScanBlocks bounds the blocks a filtered query reads row by row (256 blocks are 262,144 rows, a
// fraction of a second); beyond it a filter's values are common enough that walking the time index
// finds the first page of matches sooner.
const maxScanBlocks = 256

// backfillTermsStatements fill event_terms from the rows stored before schema version 9, one
// statement per column (each a DISTINCT over the table).
func backfillTermsStatements() []string {
	cols := []struct {
		field      int
		expr, cond string
	}{
		{termKind, "CAST(kind AS TEXT)", "TRUE"},
		{termDecision, "CAST(decision AS TEXT)", "TRUE"},
		{termRule, "rule", "rule <> ''"},
		{termSeverity, "CAST(severity AS TEXT)", "TRUE"},
		{termProcess, "proc_comm", "proc_comm <> ''"},
		{termProcess, "proc_exe", "proc_exe <> ''"},
		{termProcess, "target_comm", "target_comm <> ''"},
		{termProcess, "target_exe", "target_exe <> ''"},
		{termPid, "CAST(proc_pid AS TEXT)", "proc_pid <> 0"},
		{termPid, "CAST(target_pid AS TEXT)", "target_pid <> 0"},
	}
	out := make([]string, len(cols))
	for i, c := range cols {
		// The WHERE clause is required by SQLite before ON CONFLICT in an INSERT ... SELECT.
		out[i] = fmt.Sprintf(`INSERT INTO event_terms (field, value, block) SELECT DISTINCT %d, %s, id / %d FROM events WHERE %s
			ON CONFLICT (field, value, block) DO NOTHING`, c.field, c.expr, blockSize, c.cond)
	}
	return out
}

// term is one row of event_terms.
type term struct {
	field int
	value string
	block int64
}

// termsOf appends the terms of one event row with id to out.
func termsOf(out []term, id int64, ix index) []term {
	b := id / blockSize
	add := func(field int, v string) {
		if v != "" {
			out = append(out, term{field, v, b})
		}
	}
	add(termKind, strconv.Itoa(int(ix.kind)))
	add(termDecision, strconv.Itoa(int(ix.decision)))
	add(termRule, ix.rule)
	add(termSeverity, strconv.Itoa(int(ix.severity)))
	for _, p := range []*pb.Process{ix.proc, ix.target} {
		if p == nil {
			continue
		}
		add(termProcess, comm(p))
		add(termProcess, exe(p))
		if n := pid(p); n != 0 {
			add(termPid, strconv.FormatInt(n, 10))
		}
	}
	return out
}

// sameTerms reports whether a and b have the same terms.
func sameTerms(a, b index) bool {
	same := func(p, q *pb.Process) bool {
		return p.GetPid() == q.GetPid() && p.GetComm() == q.GetComm() && p.GetExePath() == q.GetExePath()
	}
	return a.kind == b.kind && a.decision == b.decision && a.rule == b.rule && a.severity == b.severity &&
		same(a.proc, b.proc) && same(a.target, b.target)
}

// termChunk bounds the terms of one INSERT statement.
const termChunk = 300

// insertTerms adds the terms of rows to event_terms, each distinct term once and in one order (so
// that collectors writing the same block at once on PostgreSQL take the rows' locks in the same order).
func (s *Store) insertTerms(ctx context.Context, tx *sql.Tx, rows []row) error {
	var ts []term
	seen := map[term]struct{}{}
	var buf []term
	for i, r := range rows {
		if i > 0 && r.id/blockSize == rows[i-1].id/blockSize && sameTerms(r.ix, rows[i-1].ix) {
			continue // most rows repeat the one before
		}
		buf = termsOf(buf[:0], r.id, r.ix)
		for _, t := range buf {
			if _, ok := seen[t]; !ok {
				seen[t] = struct{}{}
				ts = append(ts, t)
			}
		}
	}
	slices.SortFunc(ts, func(a, b term) int {
		if a.field != b.field {
			return a.field - b.field
		}
		if c := strings.Compare(a.value, b.value); c != 0 {
			return c
		}
		return int(a.block - b.block)
	})
	for start := 0; start < len(ts); start += termChunk {
		chunk := ts[start:min(start+termChunk, len(ts))]
		var sb strings.Builder
		sb.WriteString(`INSERT INTO event_terms (field, value, block) VALUES `)
		args := make([]any, 0, 3*len(chunk))
		for i, t := range chunk {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "($%d, $%d, $%d)", 3*i+1, 3*i+2, 3*i+3)
			args = append(args, t.field, t.value, t.block)
		}
		sb.WriteString(` ON CONFLICT (field, value, block) DO NOTHING`)
		if _, err := tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return fmt.Errorf("store filter terms: %w", err)
		}
	}
	return nil
}

// filterTerms returns the term conditions of f: per field, the values of which one must match.
func filterTerms(f *pb.EventFilter) map[int][]string {
	m := map[int][]string{}
	for _, k := range f.GetKinds() {
		m[termKind] = append(m[termKind], strconv.Itoa(int(k)))
	}
	for _, d := range f.GetDecisions() {
		m[termDecision] = append(m[termDecision], strconv.Itoa(int(d)))
	}
	if r := clean(f.GetRule()); r != "" {
		m[termRule] = []string{r}
	}
	if p := clean(f.GetProcess()); p != "" {
		m[termProcess] = []string{p}
	}
	if n := f.GetPid(); n != 0 {
		m[termPid] = []string{strconv.FormatUint(uint64(n), 10)}
	}
	if min := f.GetMinSeverity(); min != pb.Severity_SEVERITY_UNSPECIFIED {
		for v := range pb.Severity_name {
			if v >= int32(min) {
				m[termSeverity] = append(m[termSeverity], strconv.Itoa(int(v)))
			}
		}
		if m[termSeverity] == nil {
			m[termSeverity] = []string{strconv.Itoa(int(min))}
		}
	}
	return m
}

// blockPlan is how a filtered query reads the events table.
type blockPlan struct {
	restricted bool    // read only blocks (false: walk an index of host and time)
	blocks     []int64 // the blocks that may hold matches, ascending (none: nothing matches)
}

// planBlocks reads the blocks that may hold events matching f's term conditions (those of every
// field). Without term conditions, or when more than maxBlocks blocks qualify, the plan is not
// restricted.
func planBlocks(ctx context.Context, db queryer, f *pb.EventFilter, maxBlocks int) (blockPlan, error) {
	conds := filterTerms(f)
	if len(conds) == 0 {
		return blockPlan{}, nil
	}
	var cand []int64
	for i, field := range slices.Sorted(maps.Keys(conds)) {
		vals := conds[field]
		q := `SELECT DISTINCT block FROM event_terms WHERE field = $1 AND value IN (` + placeholders(2, len(vals)) + `) ORDER BY block`
		args := []any{field}
		for _, v := range vals {
			args = append(args, v)
		}
		blocks, err := readBlocks(ctx, db, q, args)
		if err != nil {
			return blockPlan{}, fmt.Errorf("read filter terms: %w", err)
		}
		if i == 0 {
			cand = blocks
		} else {
			cand = intersect(cand, blocks)
		}
		if len(cand) == 0 {
			return blockPlan{restricted: true}, nil
		}
	}
	if len(cand) > maxBlocks {
		return blockPlan{}, nil
	}
	return blockPlan{restricted: true, blocks: cand}, nil
}

// queryer is a *sql.DB or *sql.Tx.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func readBlocks(ctx context.Context, db queryer, q string, args []any) ([]int64, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var b int64
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// intersect returns the values in both ascending lists.
func intersect(a, b []int64) []int64 {
	var out []int64
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

func placeholders(first, n int) string {
	var sb strings.Builder
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteByte('$')
		sb.WriteString(strconv.Itoa(first + i))
	}
	return sb.String()
}

// addBlocks restricts w to the ids of blocks (consecutive blocks merged into one id range).
func (w *where) addBlocks(blocks []int64) {
	var parts []string
	var args []any
	for i := 0; i < len(blocks); {
		j := i
		for j+1 < len(blocks) && blocks[j+1] == blocks[j]+1 {
			j++
		}
		parts = append(parts, "id BETWEEN ? AND ?")
		args = append(args, blocks[i]*blockSize, blocks[j]*blockSize+blockSize-1)
		i = j + 1
	}
	w.add("("+strings.Join(parts, " OR ")+")", args...)
}

// pruneTerms removes the terms of blocks wholly below the oldest stored event (after retention; with
// no event left it keeps them: a PostgreSQL append under way may rely on one).
func pruneTerms(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM event_terms WHERE block < (SELECT MIN(id) FROM events) / `+strconv.Itoa(blockSize)); err != nil {
		return fmt.Errorf("prune filter terms: %w", err)
	}
	return nil
}

// verifyTerms reports, in rep, the events of host whose filter terms are missing from event_terms:
// deleting a term would hide its events from filtered queries without touching the chain. It holds
// the terms in memory (a few rows per block of 1,024 events).
func (s *Store) verifyTerms(ctx context.Context, host string, have map[term]struct{}, problem func(pos, seq uint64, format string, args ...any)) error {
	rows, err := s.db.QueryContext(ctx, `SELECT id, seq, chain_pos, kind, decision, rule, severity, proc_pid, proc_comm, proc_exe,
		target_pid, target_comm, target_exe FROM events WHERE host = $1 ORDER BY chain_pos`, host)
	if err != nil {
		return fmt.Errorf("read filter columns of %q: %w", host, err)
	}
	defer rows.Close()
	var buf []term
	for rows.Next() {
		var id, seq, pos, ppid, tpid int64
		var kind, decision, sev int32
		var ix index
		var pc, pe, tc, te string
		if err := rows.Scan(&id, &seq, &pos, &kind, &decision, &ix.rule, &sev, &ppid, &pc, &pe, &tpid, &tc, &te); err != nil {
			return fmt.Errorf("read filter columns of %q: %w", host, err)
		}
		ix.kind, ix.decision, ix.severity = pb.EventKind(kind), pb.Decision(decision), pb.Severity(sev)
		ix.proc = &pb.Process{Pid: uint32(ppid), Comm: pc, ExePath: pe}
		ix.target = &pb.Process{Pid: uint32(tpid), Comm: tc, ExePath: te}
		buf = termsOf(buf[:0], id, ix)
		for _, t := range buf {
			if _, ok := have[t]; ok {
				continue
			}
			missing, err := s.termMissing(ctx, t, id)
			if err != nil {
				return err
			}
			if missing {
				problem(uint64(pos), uint64(seq), "seq %d: its filter term %q is missing (filtered queries would not show it; filter terms deleted?)", seq, t.value)
				break
			}
			have[t] = struct{}{}
		}
	}
	return rows.Err()
}

// termMissing looks t up again for the event with id (read after the terms were: an append or a
// retention run since then commits or deletes an event with its terms), and reports whether the
// event is still stored and its term is not.
func (s *Store) termMissing(ctx context.Context, t term, id int64) (bool, error) {
	var terms, events int
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM event_terms WHERE field = $1 AND value = $2 AND block = $3),
		(SELECT COUNT(*) FROM events WHERE id = $4)`, t.field, t.value, t.block, id).Scan(&terms, &events)
	if err != nil {
		return false, fmt.Errorf("look up filter term: %w", err)
	}
	return terms == 0 && events == 1, nil
}

// allTerms reads event_terms.
func (s *Store) allTerms(ctx context.Context) (map[term]struct{}, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT field, value, block FROM event_terms`)
	if err != nil {
		return nil, fmt.Errorf("read filter terms: %w", err)
	}
	defer rows.Close()
	out := map[term]struct{}{}
	for rows.Next() {
		var t term
		if err := rows.Scan(&t.field, &t.value, &t.block); err != nil {
			return nil, fmt.Errorf("read filter terms: %w", err)
		}
		out[t] = struct{}{}
	}
	return out, rows.Err()
}
