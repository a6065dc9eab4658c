package store

import (
	"context"
	"fmt"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Group is a count of like events: same actor executable, target executable, kind, decision and rule.
type Group struct {
	Actor, Target string
	Kind          pb.EventKind
	Decision      pb.Decision
	Rule          string
	Severity      pb.Severity // the highest in the group
	Count         int64       // attempts: an aggregate event (MemoryAccess.count) counts its count
	Events        int64       // stored events (rows)
	First, Last   time.Time
}

// GroupEvents counts the attempts of the events matching f per (actor, target, kind, decision, rule),
// largest groups first, at most limit groups: an attack loop of 500 identical denials is one line with
// 500, whether the agent sent 500 events or one in-kernel aggregate of 500.
func (s *Store) GroupEvents(ctx context.Context, f *pb.EventFilter, limit int) ([]Group, error) {
	defer s.since("list", time.Now())
	w := filterWhere(f)
	plan, err := planBlocks(ctx, s.db, f, s.maxScanBlocks)
	if err != nil {
		return nil, fmt.Errorf("group events: %w", err)
	}
	if plan.restricted {
		if len(plan.blocks) == 0 {
			return nil, nil // no block holds the filter's values
		}
		w.addBlocks(plan.blocks)
	}
	q := `SELECT proc_exe, target_exe, kind, decision, rule, MAX(severity), CAST(SUM(attempts) AS BIGINT), COUNT(*), MIN(time_ns), MAX(time_ns) FROM events WHERE ` + w.sql() +
		` GROUP BY proc_exe, target_exe, kind, decision, rule ORDER BY SUM(attempts) DESC, MAX(time_ns) DESC LIMIT ` + fmt.Sprint(max(1, limit))
	rows, err := s.db.QueryContext(ctx, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("group events: %w", err)
	}
	defer rows.Close()
	var out []Group
	for rows.Next() {
		var g Group
		var kind, decision, sev int32
		var first, last int64
		if err := rows.Scan(&g.Actor, &g.Target, &kind, &decision, &g.Rule, &sev, &g.Count, &g.Events, &first, &last); err != nil {
			return nil, fmt.Errorf("read event group: %w", err)
		}
		g.Kind, g.Decision, g.Severity = pb.EventKind(kind), pb.Decision(decision), pb.Severity(sev)
		g.First, g.Last = time.Unix(0, first), time.Unix(0, last)
		out = append(out, g)
	}
	return out, rows.Err()
}

// Verdict is a host's last chain verification.
type Verdict struct {
	Time     time.Time
	OK       bool
	Problems int
}

// RecordVerdicts stores the outcome of a chain verification per host (the latest wins).
func (s *Store) RecordVerdicts(ctx context.Context, reps []*pb.HostChainReport, now time.Time) error {
	for _, r := range reps {
		ok := 0
		if r.GetOk() {
			ok = 1
		}
		if _, err := s.db.ExecContext(ctx, `INSERT INTO chain_verdicts (host, verified_ns, ok, problems) VALUES ($1, $2, $3, $4)
			ON CONFLICT (host) DO UPDATE SET verified_ns = excluded.verified_ns, ok = excluded.ok, problems = excluded.problems`,
			r.GetHost(), now.UnixNano(), ok, len(r.GetProblems())); err != nil {
			return fmt.Errorf("record chain verdict of %q: %w", r.GetHost(), err)
		}
	}
	return nil
}

// Verdicts returns every host's last chain verdict.
func (s *Store) Verdicts(ctx context.Context) (map[string]Verdict, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT host, verified_ns, ok, problems FROM chain_verdicts`)
	if err != nil {
		return nil, fmt.Errorf("read chain verdicts: %w", err)
	}
	defer rows.Close()
	out := map[string]Verdict{}
	for rows.Next() {
		var h string
		var ns, ok, n int64
		if err := rows.Scan(&h, &ns, &ok, &n); err != nil {
			return nil, fmt.Errorf("read chain verdict: %w", err)
		}
		out[h] = Verdict{Time: time.Unix(0, ns), OK: ok == 1, Problems: int(n)}
	}
	return out, rows.Err()
}
