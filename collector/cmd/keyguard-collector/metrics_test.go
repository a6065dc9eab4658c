package main

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyguard/keyguard/collector/collectortest"
	"github.com/keyguard/keyguard/collector/promtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestMetricsEndpoint runs the real collector with -metrics-listen, pushes real batches over mTLS gRPC
// from two hosts (new events, a resend, refused batches), queries and verifies (before and after
// tampering with the database), and checks each metric's exact value from a scrape over HTTP.
func TestMetricsEndpoint(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin, "web1", "web2")
	dsn := t.TempDir() + "/events.db"
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn, Metrics: true})
	if c.MetricsURL() == "" {
		t.Fatalf("no metrics address:\n%s", c.Log())
	}
	scrape := func() promtest.Families {
		t.Helper()
		f, err := promtest.Scrape(c.MetricsURL())
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	type want struct {
		name   string
		labels []string
		value  float64
	}
	check := func(f promtest.Families, when string, ws ...want) {
		t.Helper()
		for _, w := range ws {
			if got, err := f.Value(w.name, w.labels...); err != nil || got != w.value {
				t.Errorf("%s: %s%v = %v (%v), want %v", when, w.name, w.labels, got, err, w.value)
			}
		}
	}
	// The refusal reasons exist, at 0, before any refusal.
	check(scrape(), "at start",
		want{"keyguard_collector_open_streams", nil, 0},
		want{"keyguard_collector_rejected_batches_total", []string{"reason", "zero_sequence"}, 0},
		want{"keyguard_collector_rejected_events_total", []string{"reason", "host_mismatch"}, 0})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func(host string) pb.IngestService_PushClient {
		t.Helper()
		st, err := pb.NewIngestServiceClient(pki.Dial(t, c.Addr(), host)).Push(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		return st
	}
	push := func(st pb.IngestService_PushClient, first, last uint64) (*pb.PushResponse, error) {
		var evs []*pb.Event
		for s := first; s <= last; s++ {
			evs = append(evs, ev(s))
		}
		if err := st.Send(&pb.PushRequest{Events: evs}); err != nil {
			return nil, err
		}
		return st.Recv()
	}
	w1 := open("web1")
	w2 := open("web2")
	check(scrape(), "two streams open", want{"keyguard_collector_open_streams", nil, 2})
	for _, b := range []struct {
		st          pb.IngestService_PushClient
		first, last uint64
		acked       uint64
	}{{w1, 1, 10, 10}, {w1, 11, 25, 25}, {w1, 1, 10, 25}, {w2, 1, 5, 5}} {
		if r, err := push(b.st, b.first, b.last); err != nil || r.GetAckedSeq() != b.acked {
			t.Fatalf("push %d..%d: %v %v, want acked %d", b.first, b.last, r, err, b.acked)
		}
	}
	// Refused: a batch of 3 with a zero sequence number (web2), an event claiming another host (web1),
	// and a known sequence number with different content (web1 again).
	bad := []*pb.Event{ev(6), ev(0), ev(8)}
	if err := w2.Send(&pb.PushRequest{Events: bad}); err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("zero seq: %v", err)
	}
	claim := ev(26)
	claim.Host = "web2"
	if err := w1.Send(&pb.PushRequest{Events: []*pb.Event{claim}}); err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("host claim: %v", err)
	}
	w1 = open("web1")
	changed := ev(26)
	if _, err := push(w1, 26, 27); err != nil {
		t.Fatal(err)
	}
	changed.Time.Nanos++ // seq 26 again, different content
	if err := w1.Send(&pb.PushRequest{Events: []*pb.Event{changed, ev(28)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Recv(); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("conflict: %v", err)
	}
	waitMetric(t, c.MetricsURL(), "keyguard_collector_open_streams", 0)

	q := pb.NewQueryServiceClient(pki.Dial(t, c.Addr(), "operator"))
	if _, err := q.ListEvents(ctx, &pb.ListEventsRequest{PageSize: 10}); err != nil {
		t.Fatal(err)
	}
	if r, err := q.VerifyChain(ctx, &pb.VerifyChainRequest{}); err != nil || len(r.GetReports()) != 2 {
		t.Fatalf("verify: %v %v", r, err)
	}
	db := openSQLite(t, dsn)
	if _, err := db.Exec(`UPDATE events SET rule = 'nothing-to-see' WHERE host = 'web1' AND seq = 12`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if r, err := q.VerifyChain(ctx, &pb.VerifyChainRequest{Hosts: []string{"web1"}}); err != nil || r.GetReports()[0].GetOk() {
		t.Fatalf("verify after tampering: %v %v", r, err)
	}

	f := scrape()
	check(f, "at end",
		want{"keyguard_collector_ingested_events_total", []string{"host", "web1"}, 27},
		want{"keyguard_collector_ingested_events_total", []string{"host", "web2"}, 5},
		want{"keyguard_collector_duplicate_events_total", []string{"host", "web1"}, 10},
		want{"keyguard_collector_duplicate_events_total", []string{"host", "web2"}, 0},
		want{"keyguard_collector_ingested_batches_total", []string{"host", "web1"}, 4},
		want{"keyguard_collector_ingested_batches_total", []string{"host", "web2"}, 1},
		want{"keyguard_collector_acked_sequence", []string{"host", "web1"}, 27},
		want{"keyguard_collector_acked_sequence", []string{"host", "web2"}, 5},
		want{"keyguard_collector_rejected_batches_total", []string{"reason", "zero_sequence"}, 1},
		want{"keyguard_collector_rejected_events_total", []string{"reason", "zero_sequence"}, 3},
		want{"keyguard_collector_rejected_batches_total", []string{"reason", "host_mismatch"}, 1},
		want{"keyguard_collector_rejected_events_total", []string{"reason", "host_mismatch"}, 1},
		want{"keyguard_collector_rejected_batches_total", []string{"reason", "sequence_conflict"}, 1},
		want{"keyguard_collector_rejected_events_total", []string{"reason", "sequence_conflict"}, 2},
		want{"keyguard_collector_rejected_batches_total", []string{"reason", "storage_error"}, 0},
		want{"keyguard_collector_open_streams", nil, 0},
		want{"keyguard_collector_chain_verifications_total", []string{"result", "ok"}, 2},
		want{"keyguard_collector_chain_verifications_total", []string{"result", "failed"}, 1},
		want{"keyguard_collector_chain_verification_failures_total", []string{"host", "web1"}, 1},
	)
	if _, err := f.Value("keyguard_collector_chain_verification_failures_total", "host", "web2"); err == nil {
		t.Error("a verification failure series for web2, whose chain is intact")
	}
	for _, h := range []struct {
		op string
		n  uint64
	}{{"append", 5}, {"commit", 5}, {"list", 1}, {"verify", 2}} {
		n, sum, err := f.Histogram("keyguard_collector_store_duration_seconds", "operation", h.op)
		if err != nil || n != h.n || sum <= 0 {
			t.Errorf("store_duration_seconds{operation=%s}: %d samples, sum %v (%v); want %d samples, sum > 0", h.op, n, sum, err, h.n)
		}
	}
}

func waitMetric(t *testing.T, url, name string, want float64) {
	t.Helper()
	var got float64
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		f, err := promtest.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		if got, err = f.Value(name); err == nil && got == want {
			return
		}
	}
	t.Fatalf("%s = %v, want %v", name, got, want)
}
