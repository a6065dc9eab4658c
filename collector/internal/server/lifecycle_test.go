package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestRetentionJobDeletesOldEventsAndChainStillVerifies(t *testing.T) {
	p := newPKI(t)
	cfg := p.config(sqliteDSN(t))
	cfg.Retention.MaxAge = Duration(300 * time.Millisecond)
	cfg.Retention.Interval = Duration(50 * time.Millisecond)
	s := start(t, cfg)
	cc := p.dial(t, s.Addr(), "web1")
	mustPush(t, cc, events(1, 20))
	time.Sleep(400 * time.Millisecond)
	mustPush(t, cc, events(21, 25))
	deadline := time.Now().Add(10 * time.Second)
	for countEvents(t, s, "web1") != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("retention left %d events, want the 5 recent ones", countEvents(t, s, "web1"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep, err := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "alice")).VerifyChain(context.Background(), &pb.VerifyChainRequest{})
	if err != nil || !rep.Reports[0].Ok {
		t.Fatalf("verify after retention: %v %v", rep, err)
	}
	// Replaying expired events does not bring them back.
	if r := mustPush(t, cc, events(1, 25)); r.Stored != 0 || r.AckedSeq != 25 {
		t.Fatalf("replay of expired events: %v", r)
	}
}

func TestChainKeyIsRequiredToVerify(t *testing.T) {
	p := newPKI(t)
	dsn := sqliteDSN(t)
	keyFile := filepath.Join(t.TempDir(), "chain.key")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := p.config(dsn)
	cfg.Storage.ChainKeyFile = keyFile
	s := start(t, cfg)
	mustPush(t, p.dial(t, s.Addr(), "web1"), events(1, 10))
	rep, err := pb.NewQueryServiceClient(p.dial(t, s.Addr(), "alice")).VerifyChain(context.Background(), &pb.VerifyChainRequest{})
	if err != nil || !rep.Reports[0].Ok {
		t.Fatalf("verify with key: %v %v", rep, err)
	}
	// Someone with only database access cannot recompute the chain: without the key nothing verifies.
	st, err := store.Open(context.Background(), store.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reps, err := st.Verify(context.Background(), nil)
	if err != nil || reps[0].Ok || len(reps[0].Problems) != 10 {
		t.Fatalf("verify without key should fail on every event: %v %v", reps, err)
	}
	bad := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(bad, []byte("short"), 0o600)
	cfg.Storage.ChainKeyFile = bad
	if _, err := New(context.Background(), cfg, nil); err == nil {
		t.Fatal("a 5-byte chain key was accepted")
	}
}

func TestServerCertificateRotatesWithoutRestart(t *testing.T) {
	p := newPKI(t)
	s := start(t, p.config(sqliteDSN(t)))
	serial := func() string {
		pool := x509.NewCertPool()
		pool.AddCert(p.ca.Cert)
		c := p.certs["web1"]
		conn, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2"},
			Certificates: []tls.Certificate{{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key}}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	next, err := p.ca.Issue(certgen.Request{CommonName: "collector", OU: certgen.OUServer, Server: true, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Write(p.dir, "collector"); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(2 * time.Second)
	os.Chtimes(filepath.Join(p.dir, "collector.crt"), future, future)
	if after := serial(); after == before || after != next.Cert.SerialNumber.String() {
		t.Fatalf("server certificate not rotated: before %s after %s want %s", before, after, next.Cert.SerialNumber)
	}
	// A broken replacement is ignored: the collector keeps serving with the last good certificate.
	os.WriteFile(filepath.Join(p.dir, "collector.crt"), []byte("garbage"), 0o644)
	if got := serial(); got != next.Cert.SerialNumber.String() {
		t.Fatalf("after a broken replacement the server presents %s", got)
	}
}

func TestExampleConfigParses(t *testing.T) {
	c, err := LoadFile("../../keyguard-collector.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "0.0.0.0:7443" || c.TLS.RevokedSerials == "" || time.Duration(c.Retention.MaxAge) != 90*24*time.Hour || c.Storage.ChainKeyFile == "" {
		t.Fatalf("parsed %+v", c)
	}
	if a := c.Alerts; a.SilentAfter != 15*time.Minute || len(a.Rules) != 2 || a.Rules[0].GroupWindow != time.Minute || len(a.Outputs) != 2 {
		t.Fatalf("alerts parsed as %+v", a)
	}
}
