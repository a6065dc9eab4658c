package export

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pki writes a CA, a host certificate (validity given) and returns the files.
func pki(t *testing.T, dir, name string, notAfter time.Time) (ca *certgen.Pair, caFile, cert, key string) {
	t.Helper()
	ca, err := certgen.NewCA(name+" CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	host, err := ca.Issue(certgen.Request{CommonName: "host1", OU: certgen.OUHost, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	caFile, cert, key = filepath.Join(dir, name+"-ca.pem"), filepath.Join(dir, name+"-host.pem"), filepath.Join(dir, name+"-host.key")
	for f, b := range map[string][]byte{caFile: ca.CertPEM, cert: host.CertPEM, key: host.KeyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, caFile, cert, key
}

// grpcTLSServer is a real gRPC server on loopback with a server certificate from serverCA that
// requires client certificates signed by clientCA.
func grpcTLSServer(t *testing.T, serverCA, clientCA *certgen.Pair) string {
	t.Helper()
	srv, err := serverCA.Issue(certgen.Request{CommonName: "127.0.0.1", OU: certgen.OUServer, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

// TestDeliveryProblemsAreReported: an agent that cannot deliver says why and what to do (log warning,
// Stats().Problem for keyguard status, Failures for metrics), against real gRPC servers on loopback.
func TestDeliveryProblemsAreReported(t *testing.T) {
	dir := t.TempDir()
	good, goodCA, goodCert, goodKey := pki(t, dir, "good", time.Now().Add(time.Hour))
	other, _, _, _ := pki(t, dir, "other", time.Now().Add(time.Hour))
	_, _, expCert, expKey := pki(t, dir, "expired", time.Now().Add(-time.Hour))
	cases := []struct {
		name   string
		cfg    func(t *testing.T) Config
		reason string
		advice string
	}{
		{"nothing listens", func(t *testing.T) Config { return plaintextConfig(t) }, ReasonUnreachable, "cannot reach the collector"},
		{"collector certificate from another CA", func(t *testing.T) Config {
			addr := grpcTLSServer(t, other, good)
			return Config{Collector: addr, CAFile: goodCA, CertFile: goodCert, KeyFile: goodKey, SpoolDir: filepath.Join(t.TempDir(), "spool"), BootID: "b", AgentVersion: "test"}
		}, ReasonTLSUntrusted, "ca_file"},
		{"host certificate not trusted by the collector", func(t *testing.T) Config {
			addr := grpcTLSServer(t, good, other)
			return Config{Collector: addr, CAFile: goodCA, CertFile: goodCert, KeyFile: goodKey, SpoolDir: filepath.Join(t.TempDir(), "spool"), BootID: "b", AgentVersion: "test"}
		}, ReasonCertRefused, "re-enroll"},
		{"host certificate expired", func(t *testing.T) Config {
			addr := grpcTLSServer(t, good, good)
			return Config{Collector: addr, CAFile: goodCA, CertFile: expCert, KeyFile: expKey, SpoolDir: filepath.Join(t.TempDir(), "spool"), BootID: "b", AgentVersion: "test"}
		}, ReasonCertExpired, "renew"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs syncBuf
			cfg := c.cfg(t)
			cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 100*time.Millisecond
			p, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { p.Run(ctx); close(done) }()
			defer func() { cancel(); <-done; p.Close() }()
			deadline := time.Now().Add(30 * time.Second)
			for {
				st := p.Stats()
				if st.Problem != nil && st.Problem.Reason == c.reason && st.Failures[c.reason] > 0 {
					if !strings.Contains(st.Problem.Advice, c.advice) {
						t.Errorf("advice %q lacks %q", st.Problem.Advice, c.advice)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no %s problem reported in 30s; stats %+v, problem %+v", c.reason, st, st.Problem)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, c.advice) || !strings.Contains(l, "reason="+c.reason) {
				t.Errorf("no warning with the advice logged:\n%s", l)
			}
		})
	}
}
