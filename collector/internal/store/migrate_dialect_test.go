package store

import (
	"reflect"
	"testing"
)

// TestMigrationDialects: the migrations written once with dialect substitutions (migration.both) expand
// to exactly the statements each backend ran before they were merged, so existing databases and new
// ones end up with identical schemas.
func TestMigrationDialects(t *testing.T) {
	before := map[int][2][]string{
		3: {
			{
				`ALTER TABLE events ADD COLUMN severity INTEGER NOT NULL DEFAULT 0`,
				`CREATE INDEX events_severity_time ON events (severity, time_ns)`,
			},
			{
				`ALTER TABLE events ADD COLUMN severity SMALLINT NOT NULL DEFAULT 0`,
				`CREATE INDEX events_severity_time ON events (severity, time_ns)`,
			},
		},
		4: {
			{
				`CREATE TABLE alert_cursor (
				host TEXT PRIMARY KEY,
				chain_pos INTEGER NOT NULL
			)`,
				`INSERT INTO alert_cursor (host, chain_pos) SELECT host, chain_len FROM hosts`,
				`CREATE TABLE alert_outbox (
				id INTEGER PRIMARY KEY AUTOINCREMENT,
				alert_rule TEXT NOT NULL,
				output TEXT NOT NULL,
				group_key TEXT NOT NULL,
				severity INTEGER NOT NULL,
				host TEXT NOT NULL,
				kind TEXT NOT NULL,
				summary TEXT NOT NULL,
				event_count INTEGER NOT NULL,
				first_ns INTEGER NOT NULL,
				last_ns INTEGER NOT NULL,
				first_seq INTEGER NOT NULL,
				last_seq INTEGER NOT NULL,
				event BLOB,
				created_ns INTEGER NOT NULL,
				not_before_ns INTEGER NOT NULL,
				next_ns INTEGER NOT NULL DEFAULT 0,
				attempts INTEGER NOT NULL DEFAULT 0,
				lease_owner TEXT NOT NULL DEFAULT '',
				lease_until_ns INTEGER NOT NULL DEFAULT 0,
				delivered_ns INTEGER NOT NULL DEFAULT 0,
				last_error TEXT NOT NULL DEFAULT '',
				suppressed INTEGER NOT NULL DEFAULT 0,
				collector TEXT NOT NULL
			)`,
				`CREATE INDEX alert_outbox_pending ON alert_outbox (delivered_ns, next_ns, id)`,
				`CREATE INDEX alert_outbox_group ON alert_outbox (alert_rule, output, group_key, delivered_ns)`,
				`CREATE INDEX alert_outbox_rate ON alert_outbox (alert_rule, output, created_ns)`,
				`CREATE TABLE alert_silent (
				host TEXT PRIMARY KEY,
				last_seen_ns INTEGER NOT NULL
			)`,
				`CREATE TABLE chain_verdicts (
				host TEXT PRIMARY KEY,
				verified_ns INTEGER NOT NULL,
				ok INTEGER NOT NULL,
				problems INTEGER NOT NULL,
				alerted_ns INTEGER NOT NULL DEFAULT 0
			)`,
			},
			{
				`CREATE TABLE alert_cursor (
				host TEXT PRIMARY KEY,
				chain_pos BIGINT NOT NULL
			)`,
				`INSERT INTO alert_cursor (host, chain_pos) SELECT host, chain_len FROM hosts`,
				`CREATE TABLE alert_outbox (
				id BIGSERIAL PRIMARY KEY,
				alert_rule TEXT NOT NULL,
				output TEXT NOT NULL,
				group_key TEXT NOT NULL,
				severity BIGINT NOT NULL,
				host TEXT NOT NULL,
				kind TEXT NOT NULL,
				summary TEXT NOT NULL,
				event_count BIGINT NOT NULL,
				first_ns BIGINT NOT NULL,
				last_ns BIGINT NOT NULL,
				first_seq BIGINT NOT NULL,
				last_seq BIGINT NOT NULL,
				event BYTEA,
				created_ns BIGINT NOT NULL,
				not_before_ns BIGINT NOT NULL,
				next_ns BIGINT NOT NULL DEFAULT 0,
				attempts BIGINT NOT NULL DEFAULT 0,
				lease_owner TEXT NOT NULL DEFAULT '',
				lease_until_ns BIGINT NOT NULL DEFAULT 0,
				delivered_ns BIGINT NOT NULL DEFAULT 0,
				last_error TEXT NOT NULL DEFAULT '',
				suppressed BIGINT NOT NULL DEFAULT 0,
				collector TEXT NOT NULL
			)`,
				`CREATE INDEX alert_outbox_pending ON alert_outbox (delivered_ns, next_ns, id)`,
				`CREATE INDEX alert_outbox_group ON alert_outbox (alert_rule, output, group_key, delivered_ns)`,
				`CREATE INDEX alert_outbox_rate ON alert_outbox (alert_rule, output, created_ns)`,
				`CREATE TABLE alert_silent (
				host TEXT PRIMARY KEY,
				last_seen_ns BIGINT NOT NULL
			)`,
				`CREATE TABLE chain_verdicts (
				host TEXT PRIMARY KEY,
				verified_ns BIGINT NOT NULL,
				ok BIGINT NOT NULL,
				problems BIGINT NOT NULL,
				alerted_ns BIGINT NOT NULL DEFAULT 0
			)`,
			},
		},
		5: {
			{
				`CREATE INDEX events_decision_time ON events (decision, time_ns)`,
				`CREATE INDEX events_rule_time ON events (rule, time_ns)`,
				`CREATE INDEX events_proc_comm_time ON events (proc_comm, time_ns)`,
				`CREATE INDEX events_proc_exe_time ON events (proc_exe, time_ns)`,
				`CREATE INDEX events_target_comm_time ON events (target_comm, time_ns)`,
				`CREATE INDEX events_target_exe_time ON events (target_exe, time_ns)`,
				`CREATE INDEX events_proc_pid_time ON events (proc_pid, time_ns)`,
				`CREATE INDEX events_target_pid_time ON events (target_pid, time_ns)`,
			},
			{
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
	}
	seen := 0
	for _, m := range migrations {
		want, ok := before[m.version]
		if !ok {
			continue
		}
		seen++
		if got := m.statements(SQLite); !reflect.DeepEqual(got, want[0]) {
			t.Errorf("migration %d, SQLite:\n got %q\nwant %q", m.version, got, want[0])
		}
		if got := m.statements(Postgres); !reflect.DeepEqual(got, want[1]) {
			t.Errorf("migration %d, PostgreSQL:\n got %q\nwant %q", m.version, got, want[1])
		}
	}
	if seen != len(before) {
		t.Fatalf("checked %d migrations, want %d", seen, len(before))
	}
}
