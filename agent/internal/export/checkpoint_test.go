package export

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/keyguard/keyguard/collector/collectortest"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestSignedCheckpointsEndToEnd: the real pipeline sends 500 events over mTLS to the real collector,
// signs checkpoints with its host key while sending and at shutdown; the collector stores them and
// appends them to its witness file. 'keyguard-collector verify -checkpoints' accepts the untouched
// database and finds each cut its administrator can make without the agent's key: the end of the
// chain cut (head moved back), the start cut (base moved, no tombstone), the host deleted whole with
// its stored checkpoints.
func TestSignedCheckpointsEndToEnd(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin, "web1")
	dir := t.TempDir()
	dsn := filepath.Join(dir, "events.db")
	witness := filepath.Join(dir, "witness.jsonl")
	conf := filepath.Join(dir, "collector.yaml")
	if err := os.WriteFile(conf, []byte("witness:\n  file: "+witness+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn, Args: []string{"-config", conf}})

	const n = 500
	p, err := New(Config{Collector: c.Addr(), CAFile: pki.File("ca.crt"), CertFile: pki.File("web1.crt"), KeyFile: pki.File("web1.key"),
		ServerName: "localhost", SpoolDir: filepath.Join(dir, "spool"), BootID: "boot-1", AgentVersion: "test",
		CheckpointInterval: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	for i := range n {
		for !p.Submit(memEvent(keyguardv1.Decision_DECISION_DENIED, fmt.Sprint(i)), PriorityOf(memEvent(0, ""))) {
			time.Sleep(time.Millisecond)
		}
		if i == n/2 {
			time.Sleep(200 * time.Millisecond) // a periodic checkpoint in the middle
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for p.Stats().AckedSeq < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d acknowledged\n%s", p.Stats().AckedSeq, n, c.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel() // the final checkpoint
	<-errc
	p.Close()
	c.Stop()
	w, _ := os.ReadFile(witness)
	if got := bytes.Count(w, []byte(`"kind":"agent_checkpoint"`)); got < 2 {
		t.Fatalf("%d agent checkpoints in the witness file, want a periodic one and the final one:\n%s\n%s", got, w, c.Log())
	}

	verify := func(t *testing.T, db string, extra ...string) (int, string) {
		t.Helper()
		var out bytes.Buffer
		cmd := exec.Command(bin, append([]string{"verify", "-db", db}, extra...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	}
	if code, out := verify(t, dsn, "-checkpoints", witness); code != 0 || !strings.Contains(out, "agent-signed checkpoint(s) agree") {
		t.Fatalf("untouched database: exit %d\n%s", code, out)
	}
	cases := []struct {
		name, want string
		sql        []string
	}{
		{"end cut", "chain end cut", []string{
			`DELETE FROM events WHERE seq > 400`,
			`UPDATE hosts SET chain_len = 400, acked_seq = 400, max_seq = 400, latest_seq = 400, event_count = 400,
				chain_head = (SELECT hash FROM events WHERE chain_pos = 400)`,
			`DELETE FROM agent_checkpoints WHERE seq > 400`,
		}},
		{"start cut", "chain start cut", []string{
			`UPDATE hosts SET chain_base_pos = 50, chain_base_hash = (SELECT hash FROM events WHERE chain_pos = 50)`,
			`DELETE FROM events WHERE chain_pos <= 50`,
			`DELETE FROM agent_checkpoints`,
		}},
		{"host deleted", "host deleted", []string{
			`DELETE FROM events`, `DELETE FROM hosts`, `DELETE FROM agent_checkpoints`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "events.db")
			copyFile(t, dsn, db)
			h, err := sql.Open("sqlite", db)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range tc.sql {
				if _, err := h.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			h.Close()
			if code, out := verify(t, db); code != 0 && tc.name != "host deleted" {
				t.Logf("(the database alone already shows it: %s)", out)
			}
			code, out := verify(t, db, "-checkpoints", witness)
			if code != 1 || !strings.Contains(out, "FAIL  web1: "+tc.want) {
				t.Fatalf("after the %s: exit %d, want 1 naming %q:\n%s", tc.name, code, tc.want, out)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	for _, sfx := range []string{"", "-wal"} {
		src, err := os.Open(from + sfx)
		if os.IsNotExist(err) && sfx != "" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(to + sfx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		dst.Close()
	}
}
