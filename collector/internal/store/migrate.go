package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"
)

// migration is one schema step; versions are applied in order, each once. A step is written either
// per backend (sqlite, postgres) or once (both) with dialect placeholders that statements expands.
type migration struct {
	version  int
	sqlite   []string
	postgres []string
	both     []string
	fill     func(context.Context, *sql.Tx) error // a data step after the statements, in the same transaction
}

// dialects are the placeholders of migration.both: column types that differ between the backends.
var dialects = map[Backend]*strings.Replacer{
	SQLite:   strings.NewReplacer("{int}", "INTEGER", "{smallint}", "INTEGER", "{blob}", "BLOB", "{serial_pk}", "INTEGER PRIMARY KEY AUTOINCREMENT", "{without_rowid}", " WITHOUT ROWID"),
	Postgres: strings.NewReplacer("{int}", "BIGINT", "{smallint}", "SMALLINT", "{blob}", "BYTEA", "{serial_pk}", "BIGSERIAL PRIMARY KEY", "{without_rowid}", ""),
}

// statements returns the migration's statements for backend b.
func (m migration) statements(b Backend) []string {
	if m.both != nil {
		out := make([]string, len(m.both))
		for i, q := range m.both {
			out[i] = dialects[b].Replace(q)
		}
		return out
	}
	if b == Postgres {
		return m.postgres
	}
	return m.sqlite
}

var migrations = []migration{
	{
		version: 1,
		sqlite: []string{
			`CREATE TABLE hosts (
				host TEXT PRIMARY KEY,
				first_seen_ns INTEGER NOT NULL,
				last_seen_ns INTEGER NOT NULL,
				acked_seq INTEGER NOT NULL DEFAULT 0,
				max_seq INTEGER NOT NULL DEFAULT 0,
				event_count INTEGER NOT NULL DEFAULT 0,
				chain_len INTEGER NOT NULL DEFAULT 0,
				chain_head BLOB NOT NULL,
				chain_base_pos INTEGER NOT NULL DEFAULT 0,
				chain_base_hash BLOB NOT NULL,
				agent_version TEXT NOT NULL DEFAULT '',
				boot_id TEXT NOT NULL DEFAULT '',
				latest_seq INTEGER NOT NULL DEFAULT 0,
				last_health BLOB,
				last_health_seq INTEGER NOT NULL DEFAULT 0,
				last_health_ns INTEGER NOT NULL DEFAULT 0
			)`,
			`CREATE TABLE events (
				id INTEGER PRIMARY KEY AUTOINCREMENT,
				host TEXT NOT NULL,
				seq INTEGER NOT NULL,
				chain_pos INTEGER NOT NULL,
				time_ns INTEGER NOT NULL,
				receive_ns INTEGER NOT NULL,
				kind INTEGER NOT NULL,
				decision INTEGER NOT NULL,
				rule TEXT NOT NULL,
				proc_pid INTEGER NOT NULL,
				proc_comm TEXT NOT NULL,
				proc_exe TEXT NOT NULL,
				target_pid INTEGER NOT NULL,
				target_comm TEXT NOT NULL,
				target_exe TEXT NOT NULL,
				payload BLOB NOT NULL,
				digest BLOB NOT NULL,
				prev_hash BLOB NOT NULL,
				hash BLOB NOT NULL,
				collector TEXT NOT NULL,
				UNIQUE (host, seq),
				UNIQUE (host, chain_pos)
			)`,
			`CREATE INDEX events_time ON events (time_ns, host, seq)`,
			`CREATE INDEX events_kind_time ON events (kind, time_ns)`,
			`CREATE INDEX events_host_receive ON events (host, receive_ns)`,
			`CREATE TABLE seq_gaps (
				host TEXT NOT NULL,
				first_seq INTEGER NOT NULL,
				last_seq INTEGER NOT NULL,
				PRIMARY KEY (host, first_seq)
			)`,
		},
		postgres: []string{
			`CREATE TABLE hosts (
				host TEXT PRIMARY KEY,
				first_seen_ns BIGINT NOT NULL,
				last_seen_ns BIGINT NOT NULL,
				acked_seq BIGINT NOT NULL DEFAULT 0,
				max_seq BIGINT NOT NULL DEFAULT 0,
				event_count BIGINT NOT NULL DEFAULT 0,
				chain_len BIGINT NOT NULL DEFAULT 0,
				chain_head BYTEA NOT NULL,
				chain_base_pos BIGINT NOT NULL DEFAULT 0,
				chain_base_hash BYTEA NOT NULL,
				agent_version TEXT NOT NULL DEFAULT '',
				boot_id TEXT NOT NULL DEFAULT '',
				latest_seq BIGINT NOT NULL DEFAULT 0,
				last_health BYTEA,
				last_health_seq BIGINT NOT NULL DEFAULT 0,
				last_health_ns BIGINT NOT NULL DEFAULT 0
			)`,
			`CREATE TABLE events (
				id BIGSERIAL PRIMARY KEY,
				host TEXT NOT NULL,
				seq BIGINT NOT NULL,
				chain_pos BIGINT NOT NULL,
				time_ns BIGINT NOT NULL,
				receive_ns BIGINT NOT NULL,
				kind SMALLINT NOT NULL,
				decision SMALLINT NOT NULL,
				rule TEXT NOT NULL,
				proc_pid BIGINT NOT NULL,
				proc_comm TEXT NOT NULL,
				proc_exe TEXT NOT NULL,
				target_pid BIGINT NOT NULL,
				target_comm TEXT NOT NULL,
				target_exe TEXT NOT NULL,
				payload BYTEA NOT NULL,
				digest BYTEA NOT NULL,
				prev_hash BYTEA NOT NULL,
				hash BYTEA NOT NULL,
				collector TEXT NOT NULL,
				UNIQUE (host, seq),
				UNIQUE (host, chain_pos)
			)`,
			`CREATE INDEX events_time ON events (time_ns, host, seq)`,
			`CREATE INDEX events_kind_time ON events (kind, time_ns)`,
			`CREATE INDEX events_host_receive ON events (host, receive_ns)`,
			`CREATE TABLE seq_gaps (
				host TEXT NOT NULL,
				first_seq BIGINT NOT NULL,
				last_seq BIGINT NOT NULL,
				PRIMARY KEY (host, first_seq)
			)`,
		},
	},
	{
		// Console: sessions shared by every collector of the database, a record of issued operator
		// tokens, and an index for the console's most common search (one host, a time range, newest first).
		version: 2,
		sqlite: []string{
			`CREATE INDEX events_host_time ON events (host, time_ns, seq)`,
			`CREATE TABLE console_sessions (
				id_hash BLOB PRIMARY KEY,
				username TEXT NOT NULL,
				csrf TEXT NOT NULL,
				created_ns INTEGER NOT NULL,
				last_ns INTEGER NOT NULL
			)`,
			`CREATE TABLE console_tokens (
				id INTEGER PRIMARY KEY AUTOINCREMENT,
				issued_ns INTEGER NOT NULL,
				expires_ns INTEGER NOT NULL,
				operator TEXT NOT NULL,
				action TEXT NOT NULL,
				host TEXT NOT NULL,
				reason TEXT NOT NULL,
				detail TEXT NOT NULL,
				nonce TEXT NOT NULL,
				token_sha256 BLOB NOT NULL,
				collector TEXT NOT NULL
			)`,
		},
		postgres: []string{
			`CREATE INDEX events_host_time ON events (host, time_ns, seq)`,
			`CREATE TABLE console_sessions (
				id_hash BYTEA PRIMARY KEY,
				username TEXT NOT NULL,
				csrf TEXT NOT NULL,
				created_ns BIGINT NOT NULL,
				last_ns BIGINT NOT NULL
			)`,
			`CREATE TABLE console_tokens (
				id BIGSERIAL PRIMARY KEY,
				issued_ns BIGINT NOT NULL,
				expires_ns BIGINT NOT NULL,
				operator TEXT NOT NULL,
				action TEXT NOT NULL,
				host TEXT NOT NULL,
				reason TEXT NOT NULL,
				detail TEXT NOT NULL,
				nonce TEXT NOT NULL,
				token_sha256 BYTEA NOT NULL,
				collector TEXT NOT NULL
			)`,
		},
	},
	{
		// Severity (proto/keyguard/v1/severity.go SeverityOf) as an indexed column; rows stored before
		// this migration are filled in by backfillSeverity.
		version: 3,
		both: []string{
			`ALTER TABLE events ADD COLUMN severity {smallint} NOT NULL DEFAULT 0`,
			`CREATE INDEX events_severity_time ON events (severity, time_ns)`,
		},
	},
	{
		// Alerts (package alert): a per-host cursor over the chain (events already evaluated; hosts known
		// now start at their current chain, so enabling alerts does not replay history), the outbox
		// delivered at least once, the hosts already reported silent, and each host's last chain verdict
		// (the console's fleet page shows "tampered").
		version: 4,
		both: []string{
			`CREATE TABLE alert_cursor (
				host TEXT PRIMARY KEY,
				chain_pos {int} NOT NULL
			)`,
			`INSERT INTO alert_cursor (host, chain_pos) SELECT host, chain_len FROM hosts`,
			`CREATE TABLE alert_outbox (
				id {serial_pk},
				alert_rule TEXT NOT NULL,
				output TEXT NOT NULL,
				group_key TEXT NOT NULL,
				severity {int} NOT NULL,
				host TEXT NOT NULL,
				kind TEXT NOT NULL,
				summary TEXT NOT NULL,
				event_count {int} NOT NULL,
				first_ns {int} NOT NULL,
				last_ns {int} NOT NULL,
				first_seq {int} NOT NULL,
				last_seq {int} NOT NULL,
				event {blob},
				created_ns {int} NOT NULL,
				not_before_ns {int} NOT NULL,
				next_ns {int} NOT NULL DEFAULT 0,
				attempts {int} NOT NULL DEFAULT 0,
				lease_owner TEXT NOT NULL DEFAULT '',
				lease_until_ns {int} NOT NULL DEFAULT 0,
				delivered_ns {int} NOT NULL DEFAULT 0,
				last_error TEXT NOT NULL DEFAULT '',
				suppressed {int} NOT NULL DEFAULT 0,
				collector TEXT NOT NULL
			)`,
			`CREATE INDEX alert_outbox_pending ON alert_outbox (delivered_ns, next_ns, id)`,
			`CREATE INDEX alert_outbox_group ON alert_outbox (alert_rule, output, group_key, delivered_ns)`,
			`CREATE INDEX alert_outbox_rate ON alert_outbox (alert_rule, output, created_ns)`,
			`CREATE TABLE alert_silent (
				host TEXT PRIMARY KEY,
				last_seen_ns {int} NOT NULL
			)`,
			`CREATE TABLE chain_verdicts (
				host TEXT PRIMARY KEY,
				verified_ns {int} NOT NULL,
				ok {int} NOT NULL,
				problems {int} NOT NULL,
				alerted_ns {int} NOT NULL DEFAULT 0
			)`,
		},
	},
	{
		// An index for every filter the console and the query API offer (host, kind and time have theirs
		// already), so that a filter matching little or nothing does not scan the table. After 3 (severity) and 4 (alert tables).
		version: 5,
		both: []string{
			`CREATE INDEX events_decision_time ON events (decision, time_ns)`,
			`CREATE INDEX events_rule_time ON events (rule, time_ns)`,
			`CREATE INDEX events_proc_comm_time ON events (proc_comm, time_ns)`,
			`CREATE INDEX events_proc_exe_time ON events (proc_exe, time_ns)`,
			`CREATE INDEX events_target_comm_time ON events (target_comm, time_ns)`,
			`CREATE INDEX events_target_exe_time ON events (target_exe, time_ns)`,
			`CREATE INDEX events_proc_pid_time ON events (proc_pid, time_ns)`,
			`CREATE INDEX events_target_pid_time ON events (target_pid, time_ns)`,
		},
	},
	{
		// Agents' signed checkpoints and the retention tombstones made at them (checkpoint.go); source
		// names the collector that forwarded an entry to this one as its witness ('' = this collector's
		// own agents); tombstone_ns is when retention cut there (0: a checkpoint).
		version: 6,
		both: []string{
			`CREATE TABLE agent_checkpoints (
				id {serial_pk},
				host TEXT NOT NULL,
				base_seq {int} NOT NULL,
				seq {int} NOT NULL,
				event_count {int} NOT NULL,
				signed_ns {int} NOT NULL,
				received_ns {int} NOT NULL,
				tombstone_ns {int} NOT NULL DEFAULT 0,
				source TEXT NOT NULL,
				signed {blob} NOT NULL
			)`,
			`CREATE INDEX agent_checkpoints_host ON agent_checkpoints (host, base_seq, seq)`,
		},
	},
	{
		// Agent enrollment (package collector/enroll): the certificate holding each name, operator
		// approvals of re-enrollment, and the uses of bootstrap tokens, shared by the collectors of the
		// database and kept across restarts.
		version: 7,
		both: []string{
			`CREATE TABLE enroll_names (
				name TEXT PRIMARY KEY,
				serial TEXT NOT NULL,
				not_after_ns BIGINT NOT NULL,
				approved INTEGER NOT NULL DEFAULT 0,
				updated_ns BIGINT NOT NULL
			)`,
			`CREATE TABLE enroll_tokens (
				nonce TEXT PRIMARY KEY,
				uses INTEGER NOT NULL,
				exp_ns BIGINT NOT NULL
			)`,
		},
	},
	{
		// How many attempts each row stands for (attempts.go): 1, or an in-kernel aggregate's
		// MemoryAccess.count, so that counts per actor, target and kind sum attempts. Not indexed: it is
		// only summed over rows another index found.
		version: 8,
		both:    []string{`ALTER TABLE events ADD COLUMN attempts {int} NOT NULL DEFAULT 1`},
		fill:    fillAttempts,
	},
	{
		// Filter terms per block of event ids (terms.go) instead of an index per filter column: each
		// of those indexes was a B-tree insert per event, together about half of ingest's CPU time.
		// The terms of the rows stored so far are filled in, then the per-column indexes go. Host,
		// time and receive time keep their indexes (listing order, one host's events, retention).
		version: 9,
		both: slices.Concat([]string{
			`CREATE TABLE event_terms (
				field {smallint} NOT NULL,
				value TEXT NOT NULL,
				block {int} NOT NULL,
				PRIMARY KEY (field, value, block)
			){without_rowid}`,
		}, backfillTermsStatements(), dropIndexes(droppedForTerms)),
	},
}

// droppedForTerms are the per-column indexes schema version 9 replaces by event_terms.
var droppedForTerms = []string{"events_kind_time", "events_severity_time", "events_decision_time", "events_rule_time",
	"events_proc_comm_time", "events_proc_exe_time", "events_target_comm_time", "events_target_exe_time",
	"events_proc_pid_time", "events_target_pid_time"}

func dropIndexes(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = `DROP INDEX ` + n
	}
	return out
}

// migrationLockID is the PostgreSQL advisory lock serialising migrations of collectors starting together.
const migrationLockID = 0x6b6579677561 // "keygua"

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	if s.backend == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLockID)); err != nil {
			return fmt.Errorf("lock for migration: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ns BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	current := 0
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	latest := migrations[len(migrations)-1].version
	if current > latest {
		return fmt.Errorf("database schema version %d is newer than this collector understands (%d): upgrade the collector", current, latest)
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		if err := s.apply(ctx, tx, m); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_ns) VALUES ($1, $2)`, m.version, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("record migration %d: %w", m.version, err)
		}
		s.log.Info("applied schema migration", "version", m.version, "backend", s.backend)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migrations: %w", err)
	}
	return nil
}

// apply runs migration m's statements and data step in tx.
func (s *Store) apply(ctx context.Context, tx *sql.Tx, m migration) error {
	for _, q := range m.statements(s.backend) {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("migration %d: %w", m.version, err)
		}
	}
	if m.fill != nil {
		if err := m.fill(ctx, tx); err != nil {
			return fmt.Errorf("migration %d: %w", m.version, err)
		}
	}
	return nil
}

// SchemaVersion returns the applied schema version.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	v := 0
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}
