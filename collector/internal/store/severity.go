package store

import (
	"context"
	"fmt"
	"strconv"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/proto"
)

// backfillSeverity fills the severity column of rows stored before schema version 3 (severity 0), in
// batches, so a filter on min_severity sees them; it reads only the blocks whose filter terms hold
// severity 0 (terms.go) and adds the new severity's terms. Rows whose payload does not decode keep 0
// (verify reports them). Several collectors may run it at once: the UPDATE is idempotent.
func (s *Store) backfillSeverity(ctx context.Context) error {
	blocks, err := readBlocks(ctx, s.db, `SELECT block FROM event_terms WHERE field = $1 AND value = '0' ORDER BY block`, []any{termSeverity})
	if err != nil {
		return fmt.Errorf("read blocks of events without severity: %w", err)
	}
	for _, b := range blocks {
		if err := s.backfillSeverityBlock(ctx, b*blockSize, b*blockSize+blockSize-1); err != nil {
			return err
		}
	}
	return nil
}

// backfillSeverityBlock fills in the severity of the rows with ids from lastID+1 to upto.
func (s *Store) backfillSeverityBlock(ctx context.Context, lastID, upto int64) error {
	const batch = 1000
	lastID--
	for {
		rows, err := s.db.QueryContext(ctx, `SELECT id, payload FROM events WHERE severity = 0 AND id > $1 AND id <= $2 ORDER BY id LIMIT $3`, lastID, upto, batch)
		if err != nil {
			return fmt.Errorf("read events to fill in severity: %w", err)
		}
		type upd struct {
			id  int64
			sev int32
		}
		var todo []upd
		n := 0
		for rows.Next() {
			var id int64
			var payload []byte
			if err := rows.Scan(&id, &payload); err != nil {
				rows.Close()
				return fmt.Errorf("read event row: %w", err)
			}
			n++
			lastID = id
			ev := &pb.Event{}
			if proto.Unmarshal(payload, ev) == nil {
				if sv := pb.SeverityOf(ev); sv != pb.Severity_SEVERITY_UNSPECIFIED {
					todo = append(todo, upd{id, int32(sv)})
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		if len(todo) > 0 {
			tx, err := s.db.BeginTx(ctx, nil)
			if err != nil {
				return fmt.Errorf("begin severity backfill: %w", err)
			}
			for _, u := range todo {
				if _, err := tx.ExecContext(ctx, `UPDATE events SET severity = $1 WHERE id = $2`, u.sev, u.id); err != nil {
					tx.Rollback()
					return fmt.Errorf("fill in severity: %w", err)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO event_terms (field, value, block) VALUES ($1, $2, $3) ON CONFLICT (field, value, block) DO NOTHING`,
					termSeverity, strconv.Itoa(int(u.sev)), u.id/blockSize); err != nil {
					tx.Rollback()
					return fmt.Errorf("fill in severity terms: %w", err)
				}
			}
			if err := tx.Commit(); err != nil {
				return fmt.Errorf("commit severity backfill: %w", err)
			}
			s.log.Info("filled in severity of events stored before schema version 3", "events", len(todo))
		}
		if n < batch {
			return nil
		}
	}
}
