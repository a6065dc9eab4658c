package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

// pki is a demo PKI written to disk the way an operator would have it.
type pki struct {
	dir     string
	ca      *certgen.Pair
	certs   map[string]*certgen.Pair
	revoked string // path of the revoked-serials file
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	dir := t.TempDir()
	ca, err := certgen.NewCA("test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, ca: ca, certs: map[string]*certgen.Pair{}, revoked: filepath.Join(dir, "revoked.txt")}
	must := func(pair *certgen.Pair, err error) *certgen.Pair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	if err := ca.Write(dir, "ca"); err != nil {
		t.Fatal(err)
	}
	srv := must(ca.Issue(certgen.Request{CommonName: "collector", OU: certgen.OUServer, Server: true, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}))
	if err := srv.Write(dir, "collector"); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"web1", "web2", "web3", "web4", "revokedhost"} {
		p.certs[h] = must(ca.Issue(certgen.Request{CommonName: h, OU: certgen.OUHost}))
	}
	p.certs["alice"] = must(ca.Issue(certgen.Request{CommonName: "alice", OU: certgen.OUOperator}))
	p.certs["expired"] = must(ca.Issue(certgen.Request{CommonName: "web1", OU: certgen.OUHost,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}))
	p.certs["notyet"] = must(ca.Issue(certgen.Request{CommonName: "web1", OU: certgen.OUHost,
		NotBefore: time.Now().Add(24 * time.Hour), NotAfter: time.Now().Add(48 * time.Hour)}))
	p.certs["noou"] = must(ca.Issue(certgen.Request{CommonName: "web1"}))
	other, err := certgen.NewCA("other CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.certs["otherca"] = must(other.Issue(certgen.Request{CommonName: "web1", OU: certgen.OUHost}))
	if err := os.WriteFile(p.revoked, []byte(p.certs["revokedhost"].Cert.SerialNumber.Text(16)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) config(dsn string) Config {
	c := Defaults()
	c.Listen = "127.0.0.1:0"
	c.Name = "test-collector"
	c.TLS.Cert = filepath.Join(p.dir, "collector.crt")
	c.TLS.Key = filepath.Join(p.dir, "collector.key")
	c.TLS.ClientCA = filepath.Join(p.dir, "ca.crt")
	c.TLS.RevokedSerials = p.revoked
	c.Storage.DSN = dsn
	c.WatchPoll = Duration(100 * time.Millisecond)
	return c
}

// start runs a collector until the test ends.
func start(t testing.TB, cfg Config) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s
}

// dial connects with the named client certificate ("" for none).
func (p *pki) dial(t testing.TB, addr net.Addr, cert string) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	tc := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if cert != "" {
		pair := p.certs[cert]
		c := tls.Certificate{Certificate: [][]byte{pair.Cert.Raw}, PrivateKey: pair.Key, Leaf: pair.Cert}
		// Always present the certificate, even when the server would not accept its issuer, so the
		// server's own verification is what refuses it.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func dialPlain(t testing.TB, addr net.Addr) *grpc.ClientConn {
	cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func event(seq uint64) *pb.Event {
	d := pb.Decision_DECISION_DENIED
	if seq%4 == 0 {
		d = pb.Decision_DECISION_ALLOWED_AUDIT
	}
	return &pb.Event{
		Seq: seq, BootId: "6f1c-boot", AgentVersion: "0.1.0",
		Time: timestamppb.New(t0.Add(time.Duration(seq) * time.Microsecond)),
		Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
			Accessor:        &pb.Process{Pid: 4242, Tid: 4242, Comm: "gdb", ExePath: "/usr/bin/gdb", Uid: 1000, Euid: 1000, CgroupPath: "/user.slice", CgroupId: 77},
			Target:          &pb.Process{Pid: 1234, Tid: 1234, Comm: "signer", ExePath: "/opt/signer/bin/signer", CgroupPath: "/system.slice/signer.service", CgroupId: 88},
			Operation:       pb.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH,
			AccessMode:      0x12,
			AccessModeNames: []string{"PTRACE_MODE_ATTACH", "PTRACE_MODE_REALCREDS"},
			Rule:            "signer", PolicyMode: pb.PolicyMode_POLICY_MODE_ENFORCE, Decision: d,
		}},
	}
}

func events(from, to uint64) []*pb.Event {
	out := make([]*pb.Event, 0, to-from+1)
	for s := from; s <= to; s++ {
		out = append(out, event(s))
	}
	return out
}

// pusher is a minimal agent-side stream client.
type pusher struct {
	stream pb.IngestService_PushClient
	cancel context.CancelFunc
	first  *pb.PushResponse
}

// recvAcks receives n acknowledgements in a goroutine: each on acks (closed after the n-th), or the
// first receive error on errc.
func (pu *pusher) recvAcks(n int) (<-chan *pb.PushResponse, <-chan error) {
	acks := make(chan *pb.PushResponse, n)
	errc := make(chan error, 1)
	go func() {
		for range n {
			r, err := pu.stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			acks <- r
		}
		close(acks)
	}()
	return acks, errc
}

// startPair starts two collectors, collector-a and collector-b, sharing the PostgreSQL database dsn.
func startPair(t *testing.T, dsn string) (p *pki, a, b *Server) {
	t.Helper()
	p = newPKI(t)
	cfgA, cfgB := p.config(dsn), p.config(dsn)
	cfgA.Name, cfgB.Name = "collector-a", "collector-b"
	return p, start(t, cfgA), start(t, cfgB)
}

func openPush(ctx context.Context, cc *grpc.ClientConn) (*pusher, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := pb.NewIngestServiceClient(cc).Push(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	first, err := st.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	return &pusher{stream: st, cancel: cancel, first: first}, nil
}

func (p *pusher) push(evs []*pb.Event, skipped ...*pb.SequenceRange) (*pb.PushResponse, error) {
	if err := p.stream.Send(&pb.PushRequest{Events: evs, Skipped: skipped}); err != nil {
		_, rerr := p.stream.Recv() // the real error is on the receive side
		if rerr != nil {
			return nil, rerr
		}
		return nil, err
	}
	return p.stream.Recv()
}

func (p *pusher) close() { p.cancel() }

func mustPush(t testing.TB, cc *grpc.ClientConn, evs []*pb.Event) *pb.PushResponse {
	t.Helper()
	p, err := openPush(context.Background(), cc)
	if err != nil {
		t.Fatalf("open push stream: %v", err)
	}
	defer p.close()
	r, err := p.push(evs)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return r
}

func countEvents(t testing.TB, s *Server, host string) int {
	t.Helper()
	var n int
	if err := s.Store().DB().QueryRow(`SELECT COUNT(*) FROM events WHERE host = $1`, host).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func sqliteDSN(t testing.TB) string { return filepath.Join(t.TempDir(), "events.db") }

var _ = fmt.Sprintf
