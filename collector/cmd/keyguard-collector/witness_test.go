package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/collectortest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// A collector configured with a witness file writes checkpoints there; after its administrator cuts
// the end of a host's chain and moves the head back, plain verify passes and verify -checkpoints
// fails, naming the cut.
func TestWitnessCheckpointsFindTailCut(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin, "web1")
	dir := t.TempDir()
	dsn := filepath.Join(dir, "events.db")
	witness := filepath.Join(dir, "witness.jsonl")
	cfg := filepath.Join(dir, "collector.yaml")
	if err := os.WriteFile(cfg, []byte("witness:\n  file: "+witness+"\n  interval: 100ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn, Args: []string{"-config", cfg}})
	ctx := context.Background()
	sctx, scancel := context.WithCancel(ctx)
	st, err := pb.NewIngestServiceClient(pki.Dial(t, c.Addr(), "web1")).Push(sctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Recv()
	var evs []*pb.Event
	for s := uint64(1); s <= 20; s++ {
		evs = append(evs, ev(s))
	}
	st.Send(&pb.PushRequest{Events: evs})
	if r, err := st.Recv(); err != nil || r.AckedSeq != 20 {
		t.Fatalf("push: %v %v", r, err)
	}
	scancel()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(witness)
		if bytes.Contains(b, []byte(`"chain_len":20`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of the 20 events in the witness:\n%s\n%s", b, c.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Stop()

	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"verify", "-db", dsn, "-checkpoints", witness}, &stdout, &stderr); code != 0 {
		t.Fatalf("verify -checkpoints of an untouched db: %d\n%s%s", code, stdout.String(), stderr.String())
	}
	db := openSQLite(t, dsn)
	for _, q := range []string{
		`DELETE FROM events WHERE seq > 15`,
		`UPDATE hosts SET chain_len = 15, acked_seq = 15, max_seq = 15, latest_seq = 15, event_count = 15,
			chain_head = (SELECT hash FROM events WHERE host = 'web1' AND chain_pos = 15)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	stdout.Reset()
	if code := run(ctx, []string{"verify", "-db", dsn}, &stdout, &stderr); code != 0 {
		t.Fatalf("the chain alone should not see the cut (else this test proves nothing): %d\n%s", code, stdout.String())
	}
	stdout.Reset()
	code := run(ctx, []string{"verify", "-db", dsn, "-checkpoints", witness}, &stdout, &stderr)
	if out := stdout.String(); code != 1 || !strings.Contains(out, "FAIL  web1: chain end cut") {
		t.Fatalf("verify -checkpoints after a tail cut: exit %d\n%s%s", code, out, stderr.String())
	}

	// The checkpoint command appends the current state: after it, the cut database agrees with
	// the new line but still not with the old ones.
	stdout.Reset()
	if code := run(ctx, []string{"checkpoint", "-db", dsn, "-witness", witness}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "1 host checkpoint(s)") {
		t.Fatalf("checkpoint: %d %s %s", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := run(ctx, []string{"verify", "-db", dsn, "-checkpoints", witness}, &stdout, &stderr); code != 1 {
		t.Fatalf("a new checkpoint must not absolve the earlier cut: exit %d\n%s", code, stdout.String())
	}
}
