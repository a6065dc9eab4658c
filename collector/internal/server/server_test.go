package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"math/big"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestRefusedClients(t *testing.T) {
	p := newPKI(t)
	s := start(t, p.config(sqliteDSN(t)))
	ctx := context.Background()
	cases := []struct {
		name     string
		cert     string
		claim    string // Event.host to claim, if any
		wantCode codes.Code
		wantMsg  string
	}{
		{"no client certificate", "", "", codes.Unavailable, ""},
		{"certificate from another CA", "otherca", "", codes.Unavailable, ""},
		{"expired certificate", "expired", "", codes.Unavailable, ""},
		{"not yet valid certificate", "notyet", "", codes.Unavailable, ""},
		{"revoked certificate", "revokedhost", "", codes.Unavailable, ""},
		{"operator certificate pushing", "alice", "", codes.PermissionDenied, "may not push"},
		{"certificate without role", "noou", "", codes.PermissionDenied, "may not push"},
		{"host claiming another host", "web2", "web1", codes.PermissionDenied, "claims host \"web1\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc := p.dial(t, s.Addr(), tc.cert)
			ev := event(1)
			ev.Host = tc.claim
			pu, err := openPush(ctx, cc)
			if err == nil {
				_, err = pu.push([]*pb.Event{ev})
				pu.close()
			}
			t.Logf("refused: %v", err)
			if status.Code(err) != tc.wantCode || !strings.Contains(fmt.Sprint(err), tc.wantMsg) {
				t.Fatalf("got %v, want code %v containing %q", err, tc.wantCode, tc.wantMsg)
			}
		})
	}
	for _, h := range []string{"web1", "web2", "alice", "revokedhost"} {
		if n := countEvents(t, s, h); n != 0 {
			t.Fatalf("%d events stored for %s by refused clients", n, h)
		}
	}
	// Host certificates may not read the fleet's events.
	_, err := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "web1")).ListEvents(ctx, &pb.ListEventsRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("host certificate querying: %v, want PermissionDenied", err)
	}
	// And the server still serves a legitimate host.
	if r := mustPush(t, p.dial(t, s.Addr(), "web1"), events(1, 3)); r.AckedSeq != 3 || r.Host != "web1" {
		t.Fatalf("legitimate push after refusals: %v", r)
	}
}

func TestRevocationAndReloadWithoutRestart(t *testing.T) {
	p := newPKI(t)
	s := start(t, p.config(sqliteDSN(t)))
	ctx := context.Background()
	cc := p.dial(t, s.Addr(), "web3")
	pu, err := openPush(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer pu.close()
	if r, err := pu.push(events(1, 5)); err != nil || r.AckedSeq != 5 {
		t.Fatalf("before revocation: %v %v", r, err)
	}
	// Revoke web3 by editing the serials file; the collector is not restarted.
	f, err := os.OpenFile(p.revoked, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "%s # web3\n", p.certs["web3"].Cert.SerialNumber.Text(16))
	f.Close()
	future := time.Now().Add(2 * time.Second) // make the change visible even on coarse mtime file systems
	os.Chtimes(p.revoked, future, future)
	// The open stream is cut at its next batch, and nothing of that batch is stored.
	if _, err := pu.push(events(6, 10)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("open stream after revocation: %v, want PermissionDenied", err)
	}
	// New connections are refused during the handshake.
	if _, err := openPush(ctx, p.dial(t, s.Addr(), "web3")); err == nil || status.Code(err) != codes.Unavailable {
		t.Fatalf("new connection after revocation: %v, want handshake failure", err)
	}
	if n := countEvents(t, s, "web3"); n != 5 {
		t.Fatalf("%d events stored for web3, want 5", n)
	}
	// A CRL works too: revoke web4 with a CRL file and point a second collector at it.
	crl, err := p.ca.CRL([]*big.Int{p.certs["web4"].Cert.SerialNumber}, 1)
	if err != nil {
		t.Fatal(err)
	}
	crlPath := p.dir + "/crl.pem"
	if err := os.WriteFile(crlPath, crl, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := p.config(sqliteDSN(t))
	cfg.TLS.CRL = crlPath
	s2 := start(t, cfg)
	if _, err := openPush(ctx, p.dial(t, s2.Addr(), "web4")); err == nil {
		t.Fatal("certificate revoked by CRL was accepted")
	}
	if r := mustPush(t, p.dial(t, s2.Addr(), "web1"), events(1, 1)); r.AckedSeq != 1 {
		t.Fatalf("unrevoked host refused: %v", r)
	}
}

func TestPushAcknowledgesContiguousAndDeduplicates(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			dsn := sqliteDSN(t)
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(t)
			}
			p := newPKI(t)
			s := start(t, p.config(dsn))
			cc := p.dial(t, s.Addr(), "web1")
			ctx := context.Background()
			pu, err := openPush(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			if pu.first.AckedSeq != 0 || pu.first.Host != "web1" {
				t.Fatalf("initial response %v", pu.first)
			}
			steps := []struct {
				name         string
				evs          []*pb.Event
				skipped      []*pb.SequenceRange
				acked        uint64
				stored, dups uint32
			}{
				{"in order", events(1, 100), nil, 100, 100, 0},
				{"replayed", events(1, 100), nil, 100, 0, 100},
				{"overlap", events(90, 150), nil, 150, 50, 11},
				{"out of order, hole at 151..159", events(160, 170), nil, 150, 11, 0},
				{"hole filled backwards", reverse(events(151, 159)), nil, 170, 9, 0},
				{"evicted range declared", events(181, 190), []*pb.SequenceRange{{First: 171, Last: 180}}, 190, 10, 0},
				{"empty batch is a ping", nil, nil, 190, 0, 0},
			}
			for _, st := range steps {
				r, err := pu.push(st.evs, st.skipped...)
				if err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
				if r.AckedSeq != st.acked || r.Stored != st.stored || r.Duplicates != st.dups {
					t.Fatalf("%s: got acked %d stored %d dups %d, want %d %d %d", st.name, r.AckedSeq, r.Stored, r.Duplicates, st.acked, st.stored, st.dups)
				}
			}
			pu.close()
			// A reconnecting agent learns where to resume.
			pu2, err := openPush(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			defer pu2.close()
			if pu2.first.AckedSeq != 190 {
				t.Fatalf("resume point %d, want 190", pu2.first.AckedSeq)
			}
			// A wiped agent reusing old numbers with new content is refused, not silently dropped.
			fake := event(10)
			fake.GetMemoryAccess().Detail = "different"
			if _, err := pu2.push([]*pb.Event{fake}); status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "continue numbering after 190") {
				t.Fatalf("renumbered event: %v, want AlreadyExists", err)
			}
			if n := countEvents(t, s, "web1"); n != 180 {
				t.Fatalf("%d events stored, want 180 (190 minus 10 evicted)", n)
			}
			assertSeqs(t, s, "web1", 190, []uint64{171, 172, 173, 174, 175, 176, 177, 178, 179, 180})
			rep, err := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "alice")).VerifyChain(ctx, &pb.VerifyChainRequest{})
			if err != nil || len(rep.Reports) != 1 || !rep.Reports[0].Ok {
				t.Fatalf("verify: %v %v", rep, err)
			}
		})
	}
}

func reverse(evs []*pb.Event) []*pb.Event {
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return evs
}

// assertSeqs checks host has exactly the seqs 1..upto once each, except missing.
func assertSeqs(t testing.TB, s *Server, host string, upto uint64, missing []uint64) {
	t.Helper()
	rows, err := s.Store().DB().Query(`SELECT seq, COUNT(*) FROM events WHERE host = $1 GROUP BY seq ORDER BY seq`, host)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	skip := map[uint64]bool{}
	for _, m := range missing {
		skip[m] = true
	}
	want := uint64(1)
	for rows.Next() {
		var seq uint64
		var n int
		if err := rows.Scan(&seq, &n); err != nil {
			t.Fatal(err)
		}
		for skip[want] {
			want++
		}
		if seq != want || n != 1 {
			t.Fatalf("host %s: found seq %d x%d, want seq %d once", host, seq, n, want)
		}
		want++
	}
	for skip[want] {
		want++
	}
	if want != upto+1 {
		t.Fatalf("host %s: seqs end at %d, want %d", host, want-1, upto)
	}
}

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func TestBadInput(t *testing.T) {
	p := newPKI(t)
	cfg := p.config(sqliteDSN(t))
	cfg.MaxMessageBytes = 1 << 20
	s := start(t, cfg)
	cc := p.dial(t, s.Addr(), "web1")
	ctx := context.Background()
	hostile := event(1)
	hostile.GetMemoryAccess().Accessor.Comm = "x'); DROP TABLE events;--\x00"
	hostile.GetMemoryAccess().Accessor.ExePath = "/tmp/\"; DELETE FROM hosts; --"
	hostile.GetMemoryAccess().Detail = strings.Repeat("é", 1000)
	noKind := event(2)
	noKind.Kind = nil
	noTime := event(2)
	noTime.Time = nil
	huge := event(2)
	huge.GetMemoryAccess().Detail = strings.Repeat("A", 2<<20)
	bigEvent := event(2)
	bigEvent.GetMemoryAccess().Detail = strings.Repeat("A", 300<<10)
	cases := []struct {
		name string
		send func() error
		want codes.Code
	}{
		{"hostile strings in event content are stored verbatim", func() error { _, err := mustPushErr(ctx, cc, []*pb.Event{hostile}); return err }, codes.OK},
		{"garbage bytes", func() error {
			st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/keyguard.v1.IngestService/Push", grpc.ForceCodec(rawCodec{}))
			if err != nil {
				return err
			}
			var first []byte
			if err := st.RecvMsg(&first); err != nil {
				return err
			}
			if err := st.SendMsg([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x08, 0x01, 0x12}); err != nil {
				return err
			}
			var resp []byte
			return st.RecvMsg(&resp)
		}, codes.Internal},
		{"oversized message", func() error { _, err := mustPushErr(ctx, cc, []*pb.Event{huge}); return err }, codes.ResourceExhausted},
		{"event over the per-event limit", func() error { _, err := mustPushErr(ctx, cc, []*pb.Event{bigEvent}); return err }, codes.InvalidArgument},
		{"seq zero", func() error { _, err := mustPushErr(ctx, cc, events(0, 0)); return err }, codes.InvalidArgument},
		{"no kind", func() error { _, err := mustPushErr(ctx, cc, []*pb.Event{noKind}); return err }, codes.InvalidArgument},
		{"no time", func() error { _, err := mustPushErr(ctx, cc, []*pb.Event{noTime}); return err }, codes.InvalidArgument},
		{"seq absurdly far ahead", func() error { _, err := mustPushErr(ctx, cc, events(1<<40, 1<<40)); return err }, codes.InvalidArgument},
		{"seq beyond int64", func() error { _, err := mustPushErr(ctx, cc, events(1<<63+5, 1<<63+5)); return err }, codes.InvalidArgument},
		{"inverted skipped range", func() error {
			pu, err := openPush(ctx, cc)
			if err != nil {
				return err
			}
			defer pu.close()
			_, err = pu.push(nil, &pb.SequenceRange{First: 9, Last: 3})
			return err
		}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.send(); status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			// The server keeps serving after each.
			hc := healthpb.NewHealthClient(cc)
			if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health after bad input: %v %v", r, err)
			}
		})
	}
	if n := countEvents(t, s, "web1"); n != 1 {
		t.Fatalf("%d events stored, want only the hostile-but-valid one", n)
	}
	q := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "alice"))
	got, err := q.ListEvents(ctx, &pb.ListEventsRequest{Filter: &pb.EventFilter{Process: "/tmp/\"; DELETE FROM hosts; --"}})
	if err != nil || len(got.Events) != 1 || got.Events[0].Event.GetMemoryAccess().GetAccessor().GetComm() != hostile.GetMemoryAccess().Accessor.Comm {
		t.Fatalf("hostile event not returned verbatim: %v %v", got, err)
	}

	// Hostile query filters: bound as values, so they match nothing and harm nothing; malformed ones
	// are refused with InvalidArgument.
	filters := []struct {
		name string
		req  *pb.ListEventsRequest
		want codes.Code
	}{
		{"quote injection in host", &pb.ListEventsRequest{Filter: &pb.EventFilter{Hosts: []string{"web1' OR '1'='1"}}}, codes.OK},
		{"statement injection in process", &pb.ListEventsRequest{Filter: &pb.EventFilter{Process: "'; DROP TABLE events; --"}}, codes.OK},
		{"comment injection in rule", &pb.ListEventsRequest{Filter: &pb.EventFilter{Rule: "signer' --"}}, codes.OK},
		{"union injection", &pb.ListEventsRequest{Filter: &pb.EventFilter{Hosts: []string{"x' UNION SELECT host, seq, chain_pos, receive_ns, payload, hash, collector, time_ns FROM events --"}}}, codes.OK},
		{"NUL byte", &pb.ListEventsRequest{Filter: &pb.EventFilter{Process: "gdb\x00"}}, codes.InvalidArgument},
		{"oversized string", &pb.ListEventsRequest{Filter: &pb.EventFilter{Rule: strings.Repeat("x", 5000)}}, codes.InvalidArgument},
		{"unknown kind", &pb.ListEventsRequest{Filter: &pb.EventFilter{Kinds: []pb.EventKind{99}}}, codes.InvalidArgument},
		{"unknown decision", &pb.ListEventsRequest{Filter: &pb.EventFilter{Decisions: []pb.Decision{-1}}}, codes.InvalidArgument},
		{"inverted time range", &pb.ListEventsRequest{Filter: &pb.EventFilter{StartTime: timestamppb.New(t0.Add(time.Hour)), EndTime: timestamppb.New(t0)}}, codes.InvalidArgument},
		{"forged page token", &pb.ListEventsRequest{PageToken: "eyJ0IjoiJzsgRFJPUCBUQUJMRSBldmVudHM7In0"}, codes.InvalidArgument},
		{"garbage page token", &pb.ListEventsRequest{PageToken: "!!!' OR 1=1"}, codes.InvalidArgument},
	}
	for _, tc := range filters {
		t.Run(tc.name, func(t *testing.T) {
			r, err := q.ListEvents(ctx, tc.req)
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && len(r.Events) != 0 {
				t.Fatalf("hostile filter matched %d events", len(r.Events))
			}
		})
	}
	if n := countEvents(t, s, "web1"); n != 1 {
		t.Fatalf("events table changed by hostile filters: %d rows", n)
	}
	hosts, err := q.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil || len(hosts.Hosts) != 1 {
		t.Fatalf("hosts table changed by hostile filters: %v %v", hosts, err)
	}
}

func mustPushErr(ctx context.Context, cc *grpc.ClientConn, evs []*pb.Event) (*pb.PushResponse, error) {
	pu, err := openPush(ctx, cc)
	if err != nil {
		return nil, err
	}
	defer pu.close()
	return pu.push(evs)
}

func TestQueryListWatchHosts(t *testing.T) {
	p := newPKI(t)
	s := start(t, p.config(sqliteDSN(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "alice"))
	mustPush(t, p.dial(t, s.Addr(), "web1"), events(1, 40))
	health := &pb.Event{Seq: 41, Time: timestamppb.New(t0.Add(time.Second)), AgentVersion: "0.1.0",
		Kind: &pb.Event_AgentHealth{AgentHealth: &pb.AgentHealth{State: pb.AgentState_AGENT_STATE_STARTED, KernelRelease: "6.12.0", LsmActive: true, ProtectedProcessCount: 3}}}
	mustPush(t, p.dial(t, s.Addr(), "web1"), []*pb.Event{health})

	watch, err := q.WatchEvents(ctx, &pb.WatchEventsRequest{Filter: &pb.EventFilter{Decisions: []pb.Decision{pb.Decision_DECISION_DENIED}}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the watch take its starting point
	mustPush(t, p.dial(t, s.Addr(), "web2"), events(1, 8))
	var got []string
	for len(got) < 6 { // seqs 1,2,3,5,6,7 are denials; 4 and 8 are audit
		r, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s/%d", r.Event.Event.Host, r.Event.Event.Seq))
	}
	if fmt.Sprint(got) != "[web2/1 web2/2 web2/3 web2/5 web2/6 web2/7]" {
		t.Fatalf("watched %v", got)
	}

	var seen int
	req := &pb.ListEventsRequest{Filter: &pb.EventFilter{Hosts: []string{"web1"}, Kinds: []pb.EventKind{pb.EventKind_EVENT_KIND_MEMORY_ACCESS}}, PageSize: 7}
	for {
		r, err := q.ListEvents(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		seen += len(r.Events)
		if r.NextPageToken == "" {
			break
		}
		req.PageToken = r.NextPageToken
	}
	if seen != 40 {
		t.Fatalf("paged %d events, want 40", seen)
	}
	hosts, err := q.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil || len(hosts.Hosts) != 2 {
		t.Fatalf("hosts: %v %v", hosts, err)
	}
	h := hosts.Hosts[0]
	if h.Host != "web1" || h.AckedSeq != 41 || h.EventCount != 41 || h.Status != pb.HostStatus_HOST_STATUS_ONLINE ||
		h.LastHealth.GetKernelRelease() != "6.12.0" || h.AgentVersion != "0.1.0" || time.Since(h.LastSeenTime.AsTime()) > time.Minute {
		t.Fatalf("host web1: %v", h)
	}
	if hosts.Hosts[1].Status != pb.HostStatus_HOST_STATUS_UNSPECIFIED {
		t.Fatalf("host without health report: %v", hosts.Hosts[1])
	}
}

func TestPlaintextOnlyOnLoopback(t *testing.T) {
	cfg := Defaults()
	cfg.InsecurePlaintext = true
	cfg.Storage.DSN = sqliteDSN(t)
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:7443", "[::]:0"} {
		cfg.Listen = addr
		if _, err := New(context.Background(), cfg, nil); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Fatalf("plaintext on %s: %v", addr, err)
		}
	}
	cfg.Listen = "127.0.0.1:0"
	s := start(t, cfg)
	cc := dialPlain(t, s.Addr())
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-keyguard-host", "demo1")
	pu, err := openPush(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer pu.close()
	if r, err := pu.push(events(1, 2)); err != nil || r.Host != "demo1" || r.AckedSeq != 2 {
		t.Fatalf("plaintext push: %v %v", r, err)
	}
	if _, err := openPush(context.Background(), cc); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("plaintext push without host header: %v", err)
	}
}

func TestVerifyChainOverAPIDetectsTampering(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			dsn := sqliteDSN(t)
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(t)
			}
			p := newPKI(t)
			s := start(t, p.config(dsn))
			mustPush(t, p.dial(t, s.Addr(), "web1"), events(1, 50))
			mustPush(t, p.dial(t, s.Addr(), "web2"), events(1, 50))
			db := s.Store().DB()
			// An attacker turns a denial into an allowed access, and deletes another event.
			if _, err := db.Exec(`UPDATE events SET payload = $1, decision = 3 WHERE host = 'web1' AND seq = 10`, []byte("edited")); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`DELETE FROM events WHERE host = 'web1' AND seq = 20`); err != nil {
				t.Fatal(err)
			}
			q := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "alice"))
			rep, err := q.VerifyChain(context.Background(), &pb.VerifyChainRequest{})
			if err != nil {
				t.Fatal(err)
			}
			byHost := map[string]*pb.HostChainReport{}
			for _, r := range rep.Reports {
				byHost[r.Host] = r
			}
			if !byHost["web2"].GetOk() {
				t.Fatalf("untouched host reported: %v", byHost["web2"])
			}
			w1 := byHost["web1"]
			if w1.GetOk() || len(w1.Problems) != 2 ||
				w1.Problems[0].Kind != pb.ChainProblemKind_CHAIN_PROBLEM_KIND_MODIFIED || w1.Problems[0].Seq != 10 ||
				w1.Problems[1].Kind != pb.ChainProblemKind_CHAIN_PROBLEM_KIND_DELETED || w1.Problems[1].ChainPosition != 20 {
				t.Fatalf("web1 report: %v", w1)
			}
		})
	}
}

func TestTwoCollectorsShareOnePostgres(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	p, a, b := startPair(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A watcher on B must see every event, including those stored through A.
	watch, err := pb.NewQueryServiceClient(p.dial(t, b.Addr(), "alice")).WatchEvents(ctx, &pb.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	const perHost, batch = 3000, 100
	hosts := []string{"web1", "web2", "web3", "web4"}
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(hosts))
	for i, h := range hosts {
		ccs := []*grpc.ClientConn{p.dial(t, a.Addr(), h), p.dial(t, b.Addr(), h)}
		// Two concurrent pushers per host, one through each collector, both sending every event (as an
		// agent would after failing over while the old stream still delivers): heavy duplication racing
		// across collectors.
		for j := range ccs {
			wg.Add(1)
			go func(cc *grpc.ClientConn, offset int) {
				defer wg.Done()
				pu, err := openPush(ctx, cc)
				if err != nil {
					errs <- err
					return
				}
				defer pu.close()
				for from := uint64(1); from <= perHost; from += batch {
					if _, err := pu.push(events(from, from+batch-1)); err != nil {
						errs <- fmt.Errorf("push %d: %w", from, err)
						return
					}
					if offset == 1 && from%1000 == 1 { // and switch collector now and then
						pu.close()
						if pu, err = openPush(ctx, ccs[(j+1+i)%2]); err != nil {
							errs <- err
							return
						}
					}
				}
			}(ccs[j], j)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, h := range hosts {
		assertSeqs(t, a, h, perHost, nil)
	}
	seen := map[string]int{}
	for n := 0; n < perHost*len(hosts); n++ {
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch after %d events: %v", n, err)
		}
		seen[fmt.Sprintf("%s/%d", r.Event.Event.Host, r.Event.Event.Seq)]++
	}
	if len(seen) != perHost*len(hosts) {
		t.Fatalf("watch saw %d distinct events, want %d", len(seen), perHost*len(hosts))
	}
	var byCollector = map[string]int{}
	rows, err := a.Store().DB().Query(`SELECT collector, COUNT(*) FROM events GROUP BY collector`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c string
		var n int
		rows.Scan(&c, &n)
		byCollector[c] = n
	}
	rows.Close()
	if byCollector["collector-a"] == 0 || byCollector["collector-b"] == 0 {
		t.Fatalf("both collectors should have stored events: %v", byCollector)
	}
	rep, err := pb.NewQueryServiceClient(p.dial(t, a.Addr(), "alice")).VerifyChain(ctx, &pb.VerifyChainRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Reports {
		if !r.Ok || r.EventsChecked != perHost {
			t.Fatalf("chain of %s: %v", r.Host, r)
		}
	}
	t.Logf("stored per collector: %v", byCollector)
}

var _ = errors.Is
var _ = io.EOF
