package store

import (
	"context"
	"database/sql"
	"fmt"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/proto"
)

// Attempts (issue 13): an event can stand for many attempts (MemoryAccess.count, an aggregate the agent's
// kernel side counted), so counts per actor, target and kind sum the attempts column, not rows. The
// column defaults to 1; Append sets it for aggregates (recordAttempts) and schema version 8 fills it in
// for rows stored before (fillAttempts).

// recordAttempts sets the attempts column of the rows just inserted that stand for more than one
// attempt (aggregates are rare: at most one per repeated attempt and window on a host).
func (s *Store) recordAttempts(ctx context.Context, tx *sql.Tx, host string, rows []row) error {
	for _, r := range rows {
		if n := pb.Attempts(r.it.ev); n > 1 {
			if _, err := tx.ExecContext(ctx, `UPDATE events SET attempts = $1 WHERE host = $2 AND seq = $3`, n, host, int64(r.it.ev.GetSeq())); err != nil {
				return fmt.Errorf("store the attempt count of event %d of host %q: %w", r.it.ev.GetSeq(), host, err)
			}
		}
	}
	return nil
}

// fillAttempts is schema version 8's data step: the attempts of memory-access rows stored before it,
// read from their payloads in batches. Rows whose payload does not decode keep 1 (verify reports them).
func fillAttempts(ctx context.Context, tx *sql.Tx) error {
	const batch = 1000
	type upd struct{ id, n int64 }
	for lastID := int64(0); ; {
		rows, err := tx.QueryContext(ctx, `SELECT id, payload FROM events WHERE kind = $1 AND id > $2 ORDER BY id LIMIT $3`,
			int32(pb.EventKind_EVENT_KIND_MEMORY_ACCESS), lastID, batch)
		if err != nil {
			return fmt.Errorf("read events to fill in attempt counts: %w", err)
		}
		var todo []upd
		n := 0
		for rows.Next() {
			var payload []byte
			if err := rows.Scan(&lastID, &payload); err != nil {
				rows.Close()
				return fmt.Errorf("read event row: %w", err)
			}
			n++
			ev := &pb.Event{}
			if proto.Unmarshal(payload, ev) == nil {
				if a := pb.Attempts(ev); a > 1 {
					todo = append(todo, upd{lastID, a})
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		for _, u := range todo {
			if _, err := tx.ExecContext(ctx, `UPDATE events SET attempts = $1 WHERE id = $2`, u.n, u.id); err != nil {
				return fmt.Errorf("fill in attempt counts: %w", err)
			}
		}
		if n < batch {
			return nil
		}
	}
}
