package delivery

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestCollectorRegressionReported replaces the collector's SQLite database, after the agent's spool
// had all of its events acknowledged, with a backup taken midway (a restore) or with an empty one
// (a new collector). The agent must resend what its spool still holds and report the rest as a loss
// with the exact ranges; the collector ends with every sequence number either stored or inside a
// reported range, and nothing skipped in silence.
func TestCollectorRegressionReported(t *testing.T) {
	b := buildBinaries(t)
	const first, more = 30000, 2000
	for _, tc := range []struct {
		name   string
		backup bool // restore a backup taken at about first/2; else an empty database
	}{
		{"restored backup", true},
		{"empty database", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newPKI(t)
			dsn := filepath.Join(t.TempDir(), "events.db")
			coll := startCollector(t, b, k, "c1", dsn)
			db := openDB(t, dsn)
			// A small spool: acknowledged segments are deleted, so part of what the collector loses
			// is gone from the agent too.
			agent := newAgent(t, b, k, "host-r", coll.addr, first, "-spool-max-bytes", "8388608", "-rate", "5000")
			agent.start()
			backup := filepath.Join(t.TempDir(), "backup.db")
			if tc.backup {
				waitAcked(t, db, "host-r", first/2, runTimeout)
				if _, err := db.Exec(fmt.Sprintf(`VACUUM INTO '%s'`, backup)); err != nil {
					t.Fatalf("back up the database: %v", err)
				}
			}
			agent.finish(runTimeout)
			coll.kill()
			db.Close()
			for _, suffix := range []string{"", "-wal", "-shm"} {
				os.Remove(dsn + suffix)
			}
			var restoredAcked uint64
			if tc.backup {
				data, err := os.ReadFile(backup)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dsn, data)
				bdb := openDB(t, dsn)
				restoredAcked = ackedSeq(bdb, "host-r")
				bdb.Close()
			}
			coll.restart()
			db = openDB(t, dsn)

			agent.target = first + more
			agent.args = append(agent.args, "-target", fmt.Sprint(first+more))
			agent.start()
			s := agent.finish(runTimeout)
			t.Logf("second run: %+v; collector restarted at acked %d", s, restoredAcked)

			stored, reports := regressionAudit(t, db, "host-r")
			if len(reports) != 1 {
				t.Fatalf("%d collector-regression loss reports, want 1: %v", len(reports), reports)
			}
			lr := reports[0]
			if lr.GetCollectorAckedSeq() != restoredAcked || lr.GetAgentAckedSeq() < first {
				t.Errorf("report says collector acked %d, agent acked %d; want %d and >= %d",
					lr.GetCollectorAckedSeq(), lr.GetAgentAckedSeq(), restoredAcked, first)
			}
			var inRanges uint64
			lost := map[uint64]bool{}
			for _, r := range lr.GetEvicted() {
				inRanges += r.GetLast() - r.GetFirst() + 1
				for q := r.GetFirst(); q <= r.GetLast(); q++ {
					lost[q] = true
				}
			}
			if inRanges != lr.GetCount() || lr.GetCount() == 0 {
				t.Errorf("report counts %d lost, its ranges cover %d", lr.GetCount(), inRanges)
			}
			acked := ackedSeq(db, "host-r")
			var resent uint64
			for q := uint64(1); q <= acked; q++ {
				switch {
				case stored[q] && lost[q]:
					t.Fatalf("seq %d both stored and reported lost", q)
				case !stored[q] && !lost[q]:
					t.Fatalf("seq %d neither stored nor reported lost: skipped in silence", q)
				case stored[q] && q > restoredAcked && q <= lr.GetAgentAckedSeq():
					resent++
				}
			}
			if acked < first+more {
				t.Errorf("collector acked %d, want at least %d", acked, first+more)
			}
			if resent == 0 {
				t.Errorf("nothing resent from the spool")
			}
			t.Logf("collector acked %d; of %d..%d, %d resent from the spool and %d reported lost in %d ranges",
				acked, restoredAcked+1, lr.GetAgentAckedSeq(), resent, lr.GetCount(), len(lr.GetEvicted()))
		})
	}
}

// regressionAudit returns the stored sequence numbers of host and its collector-regression loss
// reports.
func regressionAudit(t *testing.T, db *sql.DB, host string) (map[uint64]bool, []*keyguardv1.LossReport) {
	t.Helper()
	rows, err := db.Query(`SELECT seq, payload FROM events WHERE host = $1 ORDER BY seq`, host)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	stored := map[uint64]bool{}
	var reports []*keyguardv1.LossReport
	for rows.Next() {
		var seq int64
		var payload []byte
		if err := rows.Scan(&seq, &payload); err != nil {
			t.Fatal(err)
		}
		stored[uint64(seq)] = true
		var ev keyguardv1.Event
		if err := proto.Unmarshal(payload, &ev); err != nil {
			t.Fatal(err)
		}
		if lr := ev.GetLossReport(); lr.GetSource() == keyguardv1.LossSource_LOSS_SOURCE_COLLECTOR_REGRESSION {
			reports = append(reports, lr)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return stored, reports
}
