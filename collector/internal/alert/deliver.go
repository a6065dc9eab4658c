package alert

import (
	"context"
	"fmt"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func timestampOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

const deliverBatch = 100

type claimed struct {
	Alert
	output     string
	suppressed int64
	attempts   int
}

// deliver claims due alerts with a lease, sends them and records the outcome. Alerts of an output that
// fails are retried with exponential backoff (Config.Poll doubling up to RetryMax).
func (e *Engine) deliver(ctx context.Context) (int, error) {
	batch, err := e.claim(ctx)
	if err != nil {
		return 0, err
	}
	sent := 0
	down := map[string]error{} // an output that failed once this round is not tried again this round
	for _, c := range batch {
		err, skip := down[c.output]
		if !skip {
			sctx, cancel := context.WithTimeout(ctx, e.senders[c.output].timeout())
			err = e.senders[c.output].send(sctx, &c.Alert)
			cancel()
		}
		now := e.now()
		if err == nil {
			e.obs.AlertSent(c.output)
			sent++
			_, err = e.db.ExecContext(ctx, `UPDATE alert_outbox SET delivered_ns = $1, attempts = attempts + 1, lease_owner = '', lease_until_ns = 0
				WHERE id = $2 AND lease_owner = $3`, now.UnixNano(), c.ID, e.owner)
			if err != nil {
				return sent, fmt.Errorf("mark alert %d delivered (it may be sent again): %w", c.ID, err)
			}
			continue
		}
		if !skip {
			e.obs.AlertFailed(c.output)
			down[c.output] = err
			e.log.Warn("alert delivery failed; it stays in the outbox and is retried: check the output's address, credentials and that the receiver runs",
				"output", c.output, "alert", c.ID, "attempt", c.attempts+1, "err", err)
		}
		backoff := min(e.cfg.Poll<<min(c.attempts, 20), e.retryMax)
		_, uerr := e.db.ExecContext(ctx, `UPDATE alert_outbox SET attempts = attempts + 1, next_ns = $1, last_error = $2, lease_owner = '', lease_until_ns = 0
			WHERE id = $3 AND lease_owner = $4`, now.Add(backoff).UnixNano(), err.Error(), c.ID, e.owner)
		if uerr != nil {
			return sent, fmt.Errorf("record failed delivery of alert %d: %w", c.ID, uerr)
		}
	}
	return sent, nil
}

// claim leases up to deliverBatch due alerts to this collector.
func (e *Engine) claim(ctx context.Context) ([]claimed, error) {
	now := e.now().UnixNano()
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin alert claim: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT id, alert_rule, output, severity, host, kind, summary, event_count, first_ns, last_ns,
		first_seq, last_seq, event, suppressed, attempts FROM alert_outbox
		WHERE delivered_ns = 0 AND not_before_ns <= $1 AND next_ns <= $1 AND lease_until_ns < $1 ORDER BY id LIMIT $2`+e.skipLocked(), now, deliverBatch)
	if err != nil {
		return nil, fmt.Errorf("read due alerts: %w", err)
	}
	var out []claimed
	for rows.Next() {
		var c claimed
		var sev int32
		var first, last, fseq, lseq int64
		var evb []byte
		if err := rows.Scan(&c.ID, &c.Rule, &c.output, &sev, &c.Host, &c.Kind, &c.Summary, &c.Count, &first, &last,
			&fseq, &lseq, &evb, &c.suppressed, &c.attempts); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read alert row: %w", err)
		}
		c.Severity = pb.SeverityLabel(pb.Severity(sev))
		c.FirstTime, c.LastTime = time.Unix(0, first).UTC(), time.Unix(0, last).UTC()
		c.FirstSeq, c.LastSeq = uint64(fseq), uint64(lseq)
		if c.suppressed > 0 {
			c.Summary += fmt.Sprintf(" (+%d more events of rule %s suppressed by its rate limit)", c.suppressed, c.Rule)
		}
		if len(evb) > 0 {
			c.Event = &pb.Event{}
			if proto.Unmarshal(evb, c.Event) != nil {
				c.Event = nil
			}
		}
		if e.senders[c.output] == nil {
			continue // an output removed from the configuration: left in the outbox
		}
		out = append(out, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read due alerts: %w", err)
	}
	lease := e.now().Add(e.cfg.Lease).UnixNano()
	for _, c := range out {
		if _, err := tx.ExecContext(ctx, `UPDATE alert_outbox SET lease_owner = $1, lease_until_ns = $2 WHERE id = $3`, e.owner, lease, c.ID); err != nil {
			return nil, fmt.Errorf("lease alert %d: %w", c.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit alert claim: %w", err)
	}
	return out, nil
}

// Pending returns the number of alerts not yet delivered and the age of the oldest (0 when none).
func (e *Engine) Pending(ctx context.Context) (int, time.Duration, error) {
	var n int
	var oldest int64
	if err := e.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(MIN(created_ns), 0) FROM alert_outbox WHERE delivered_ns = 0`).Scan(&n, &oldest); err != nil {
		return 0, 0, fmt.Errorf("count pending alerts: %w", err)
	}
	if n == 0 {
		return 0, 0, nil
	}
	return n, e.now().Sub(time.Unix(0, oldest)), nil
}
