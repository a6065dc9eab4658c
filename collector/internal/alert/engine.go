package alert

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/proto"
)

// Observer receives counts for metrics (collector/internal/metrics implements it).
type Observer interface {
	// EventEvaluated: one stored event was evaluated (each event once, across collectors).
	EventEvaluated(kind, severity string)
	// AlertSent / AlertFailed: one delivery attempt to an output succeeded / failed.
	AlertSent(output string)
	AlertFailed(output string)
	// AlertSuppressed: an event matched a rule over its rate limit.
	AlertSuppressed(rule string)
	// AlertsPending: alerts not yet delivered, and the age of the oldest, after each round.
	AlertsPending(n int, oldest time.Duration)
}

type noObserver struct{}

func (noObserver) EventEvaluated(string, string)    {}
func (noObserver) AlertSent(string)                 {}
func (noObserver) AlertFailed(string)               {}
func (noObserver) AlertSuppressed(string)           {}
func (noObserver) AlertsPending(int, time.Duration) {}

// Options configure New.
type Options struct {
	Store  *store.Store
	Config Config
	// Owner names this collector in leases (default: the hostname and pid).
	Owner    string
	Logger   *slog.Logger
	Observer Observer
	// RetryMax caps the backoff between delivery attempts of one alert (default 5m).
	RetryMax time.Duration
}

// Engine evaluates stored events against the rules and delivers the outbox.
type Engine struct {
	db       *sql.DB
	pg       bool
	cfg      Config
	senders  map[string]sender
	owner    string
	log      *slog.Logger
	obs      Observer
	retryMax time.Duration
	now      func() time.Time
}

// New checks the configuration, reads the outputs' secrets and CA files, and returns an engine.
func New(opts Options) (*Engine, error) {
	cfg := opts.Config
	cfg.Rules = append([]Rule(nil), cfg.Rules...)
	cfg.Outputs = append([]Output(nil), cfg.Outputs...)
	if err := cfg.check(); err != nil {
		return nil, err
	}
	e := &Engine{
		db: opts.Store.DB(), pg: opts.Store.Backend() == store.Postgres, cfg: cfg, senders: map[string]sender{},
		owner: opts.Owner, log: opts.Logger, obs: opts.Observer, retryMax: opts.RetryMax, now: time.Now,
	}
	if e.owner == "" {
		h, _ := os.Hostname()
		e.owner = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.obs == nil {
		e.obs = noObserver{}
	}
	if e.retryMax <= 0 {
		e.retryMax = 5 * time.Minute
	}
	for i := range cfg.Outputs {
		s, err := newSender(&cfg.Outputs[i])
		if err != nil {
			return nil, err
		}
		e.senders[cfg.Outputs[i].Name] = s
	}
	return e, nil
}

// Run evaluates, checks for silent agents and delivers every Config.Poll until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Poll)
	defer t.Stop()
	for {
		if _, err := e.Step(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("alerting step failed; retrying at the next poll", "err", err)
		}
		if n, age, err := e.Pending(ctx); err == nil {
			e.obs.AlertsPending(n, age)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Step runs one round: evaluate new events, raise agent_silent alerts, deliver due alerts. It returns
// the number of alerts delivered.
func (e *Engine) Step(ctx context.Context) (int, error) {
	var errs []error
	if err := e.evaluate(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := e.checkSilent(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := e.checkTampered(ctx); err != nil {
		errs = append(errs, err)
	}
	n, err := e.deliver(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

func (e *Engine) skipLocked() string {
	if e.pg {
		return " FOR UPDATE SKIP LOCKED"
	}
	return "" // SQLite write transactions lock the whole database (BEGIN IMMEDIATE)
}

// evaluate walks every host whose chain grew past its cursor.
func (e *Engine) evaluate(ctx context.Context) error {
	rows, err := e.db.QueryContext(ctx, `SELECT h.host FROM hosts h LEFT JOIN alert_cursor c ON c.host = h.host
		WHERE c.chain_pos IS NULL OR h.chain_len > c.chain_pos`)
	if err != nil {
		return fmt.Errorf("list hosts with new events: %w", err)
	}
	var hosts []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return fmt.Errorf("read host: %w", err)
		}
		hosts = append(hosts, h)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list hosts with new events: %w", err)
	}
	for _, h := range hosts {
		for {
			n, err := e.evaluateHost(ctx, h)
			if err != nil {
				return err
			}
			if n < evalBatch {
				break
			}
		}
	}
	return nil
}

const evalBatch = 500

type storedEvent struct {
	pos int64
	ev  *pb.Event
}

// evaluateHost evaluates up to evalBatch events after the host's cursor and writes their alerts and the
// new cursor in one transaction. Another collector holding the cursor makes it return 0.
func (e *Engine) evaluateHost(ctx context.Context, host string) (int, error) {
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin alert evaluation: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO alert_cursor (host, chain_pos) VALUES ($1, 0) ON CONFLICT (host) DO NOTHING`, host); err != nil {
		return 0, fmt.Errorf("create alert cursor of %q: %w", host, err)
	}
	var cursor int64
	err = tx.QueryRowContext(ctx, `SELECT chain_pos FROM alert_cursor WHERE host = $1`+e.skipLocked(), host).Scan(&cursor)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil // another collector is evaluating this host
	}
	if err != nil {
		return 0, fmt.Errorf("read alert cursor of %q: %w", host, err)
	}
	evs, err := readEvents(ctx, tx, host, cursor)
	if err != nil {
		return 0, err
	}
	if len(evs) == 0 {
		return 0, nil
	}
	now := e.now().UnixNano()
	for _, se := range evs {
		sev := pb.SeverityOf(se.ev)
		f := factsOf(se.ev)
		e.obs.EventEvaluated(f.kind, pb.SeverityLabel(sev))
		for i := range e.cfg.Rules {
			r := &e.cfg.Rules[i]
			if !r.matches(sev, f.kind, host, f.policyRule) {
				continue
			}
			for _, out := range r.Outputs {
				if err := e.enqueue(ctx, tx, r, out, host, f, sev, se.ev, now); err != nil {
					return 0, err
				}
			}
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE alert_cursor SET chain_pos = $1 WHERE host = $2`, evs[len(evs)-1].pos, host); err != nil {
		return 0, fmt.Errorf("advance alert cursor of %q: %w", host, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit alert evaluation of %q: %w", host, err)
	}
	return len(evs), nil
}

func readEvents(ctx context.Context, tx *sql.Tx, host string, after int64) ([]storedEvent, error) {
	rows, err := tx.QueryContext(ctx, `SELECT chain_pos, payload FROM events WHERE host = $1 AND chain_pos > $2 ORDER BY chain_pos LIMIT $3`, host, after, evalBatch)
	if err != nil {
		return nil, fmt.Errorf("read events of %q to evaluate: %w", host, err)
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var se storedEvent
		var payload []byte
		if err := rows.Scan(&se.pos, &payload); err != nil {
			return nil, fmt.Errorf("read event row: %w", err)
		}
		se.ev = &pb.Event{}
		if err := proto.Unmarshal(payload, se.ev); err != nil {
			// A stored row that does not decode is tampering (verify reports it); alert on it loudly.
			se.ev = &pb.Event{Host: host, Severity: pb.Severity_SEVERITY_CRITICAL,
				Kind: &pb.Event_AgentHealth{AgentHealth: &pb.AgentHealth{Detail: "stored event does not decode (tampered?): " + err.Error()}}}
		}
		out = append(out, se)
	}
	return out, rows.Err()
}

// enqueue adds one event to the outbox for rule r and output out: folded into the group's alert still
// waiting for its window, or over the rate limit folded into a waiting alert as suppressed, or a new row.
func (e *Engine) enqueue(ctx context.Context, tx *sql.Tx, r *Rule, out, host string, f facts, sev pb.Severity, ev *pb.Event, now int64) error {
	key := groupKey(host, f)
	tns, seq, n := ev.GetTime().AsTime().UnixNano(), int64(ev.GetSeq()), pb.Attempts(ev)
	if r.GroupWindow > 0 {
		res, err := tx.ExecContext(ctx, `UPDATE alert_outbox SET event_count = event_count + $7, last_ns = $1, last_seq = $2
			WHERE id = (SELECT MAX(id) FROM alert_outbox WHERE alert_rule = $3 AND output = $4 AND group_key = $5
				AND delivered_ns = 0 AND lease_owner = '' AND not_before_ns > $6)`, tns, seq, r.Name, out, key, now, n)
		if err != nil {
			return fmt.Errorf("group alert: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return nil
		}
	}
	if r.RateLimit > 0 {
		var sent int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM alert_outbox WHERE alert_rule = $1 AND output = $2 AND created_ns > $3`,
			r.Name, out, now-int64(time.Minute)).Scan(&sent); err != nil {
			return fmt.Errorf("count alerts for the rate limit: %w", err)
		}
		if sent >= r.RateLimit {
			e.obs.AlertSuppressed(r.Name)
			_, err := tx.ExecContext(ctx, `UPDATE alert_outbox SET suppressed = suppressed + 1
				WHERE id = (SELECT MAX(id) FROM alert_outbox WHERE alert_rule = $1 AND output = $2 AND delivered_ns = 0 AND lease_owner = '')`, r.Name, out)
			if err != nil {
				return fmt.Errorf("count suppressed alert: %w", err)
			}
			return nil
		}
	}
	var evBytes []byte
	if ev != nil && ev.GetKind() != nil {
		var err error
		if evBytes, err = proto.Marshal(ev); err != nil {
			return fmt.Errorf("encode alert event: %w", err)
		}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO alert_outbox (alert_rule, output, group_key, severity, host, kind, summary, event_count,
		first_ns, last_ns, first_seq, last_seq, event, created_ns, not_before_ns, collector)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $14, $8, $8, $9, $9, $10, $11, $12, $13)`,
		r.Name, out, key, int32(sev), host, f.kind, f.summary, tns, seq, evBytes, now, now+int64(r.GroupWindow), e.owner, n)
	if err != nil {
		return fmt.Errorf("write alert to the outbox: %w", err)
	}
	return nil
}

// checkSilent raises agent_silent for hosts not heard from for Config.SilentAfter, once per silence
// (alert_silent remembers the last_seen it reported; a host heard from again can go silent again).
func (e *Engine) checkSilent(ctx context.Context) error {
	if e.cfg.SilentAfter <= 0 {
		return nil
	}
	now := e.now()
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin silent-agent check: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT host, last_seen_ns FROM hosts WHERE last_seen_ns < $1`, now.Add(-e.cfg.SilentAfter).UnixNano())
	if err != nil {
		return fmt.Errorf("list silent hosts: %w", err)
	}
	type seen struct {
		host string
		ns   int64
	}
	var silent []seen
	for rows.Next() {
		var s seen
		if err := rows.Scan(&s.host, &s.ns); err != nil {
			rows.Close()
			return fmt.Errorf("read host: %w", err)
		}
		silent = append(silent, s)
	}
	rows.Close()
	for _, s := range silent {
		res, err := tx.ExecContext(ctx, `INSERT INTO alert_silent (host, last_seen_ns) VALUES ($1, $2)
			ON CONFLICT (host) DO UPDATE SET last_seen_ns = excluded.last_seen_ns WHERE alert_silent.last_seen_ns <> excluded.last_seen_ns`, s.host, s.ns)
		if err != nil {
			return fmt.Errorf("record silent host: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			continue // already reported
		}
		last := time.Unix(0, s.ns).UTC()
		f := facts{kind: KindAgentSilent, decision: "silent", summary: fmt.Sprintf("no events or heartbeats since %s (%s): the agent is down, cannot reach the collector, or its certificate is refused", last.Format(time.RFC3339), now.Sub(last).Round(time.Second))}
		ev := &pb.Event{Host: s.host, Time: timestampOf(last)}
		for i := range e.cfg.Rules {
			r := &e.cfg.Rules[i]
			if !r.matches(pb.Severity_SEVERITY_HIGH, f.kind, s.host, "") {
				continue
			}
			for _, out := range r.Outputs {
				if err := e.enqueue(ctx, tx, r, out, s.host, f, pb.Severity_SEVERITY_HIGH, ev, now.UnixNano()); err != nil {
					return err
				}
			}
		}
	}
	return tx.Commit()
}

// checkTampered raises chain_failed (critical) once per failed chain verification recorded in
// chain_verdicts (store.RecordVerdicts); the UPDATE that marks it alerted decides which collector raises it.
func (e *Engine) checkTampered(ctx context.Context) error {
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin chain-verdict check: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT host, verified_ns, problems FROM chain_verdicts WHERE ok = 0 AND alerted_ns < verified_ns`)
	if err != nil {
		return fmt.Errorf("read chain verdicts: %w", err)
	}
	type verdict struct {
		host         string
		ns, problems int64
	}
	var failed []verdict
	for rows.Next() {
		var v verdict
		if err := rows.Scan(&v.host, &v.ns, &v.problems); err != nil {
			rows.Close()
			return fmt.Errorf("read chain verdict: %w", err)
		}
		failed = append(failed, v)
	}
	rows.Close()
	now := e.now()
	for _, v := range failed {
		res, err := tx.ExecContext(ctx, `UPDATE chain_verdicts SET alerted_ns = $1 WHERE host = $2 AND alerted_ns < $1`, v.ns, v.host)
		if err != nil {
			return fmt.Errorf("mark chain verdict alerted: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			continue
		}
		at := time.Unix(0, v.ns).UTC()
		f := facts{kind: KindChainFailed, decision: "failed", summary: fmt.Sprintf("hash chain verification at %s found %d problem(s): stored events were modified, deleted or relinked; run keyguard-collector verify and protect the database", at.Format(time.RFC3339), v.problems)}
		ev := &pb.Event{Host: v.host, Time: timestampOf(at)}
		for i := range e.cfg.Rules {
			r := &e.cfg.Rules[i]
			if !r.matches(pb.Severity_SEVERITY_CRITICAL, f.kind, v.host, "") {
				continue
			}
			for _, out := range r.Outputs {
				if err := e.enqueue(ctx, tx, r, out, v.host, f, pb.Severity_SEVERITY_CRITICAL, ev, now.UnixNano()); err != nil {
					return err
				}
			}
		}
	}
	return tx.Commit()
}
