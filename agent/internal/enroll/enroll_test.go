package enroll

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/collectortest"
	collenroll "github.com/keyguard/keyguard/collector/enroll"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// enrollServer serves a's enrollment over HTTPS with the collector's certificate, asking for (not
// requiring) a client certificate from the CA, as the collector will.
func enrollServer(t *testing.T, pki *collectortest.PKI, a *collenroll.Authority) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	caPEM, err := os.ReadFile(pki.File("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	srvCert, err := tls.LoadX509KeyPair(pki.File("collector.crt"), pki.File("collector.key"))
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(a.Handler(slog.New(slog.NewTextHandler(io.Discard, nil))))
	s.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{srvCert}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s, pool
}

func serial(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

// An agent with no identity enrolls with a bootstrap token and its events reach a real collector over
// mTLS and are stored; a second enrollment of the live name is refused until an operator approves it;
// renewal replaces the certificate and the collector refuses the old one.
func TestEnrollPushRenew(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin)
	ca, err := certgen.Load(pki.Dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	a := &collenroll.Authority{CA: ca, TokenKey: key, Validity: time.Hour, RevokedFile: pki.File("revoked.txt")}
	srv, pool := enrollServer(t, pki, a)
	ctx := context.Background()

	tok, err := a.Token("web*", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cl := &Client{URL: srv.URL, CA: pool, Name: "web1", CertFile: pki.File("web1.crt"), KeyFile: pki.File("web1.key")}
	// The token is scoped: another name is refused.
	other := &Client{URL: srv.URL, CA: pool, Name: "db1", CertFile: t.TempDir() + "/db1.crt", KeyFile: t.TempDir() + "/db1.key"}
	if err := other.Enroll(ctx, tok); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("token for web* enrolled db1: %v", err)
	}
	if err := cl.Enroll(ctx, tok); err != nil {
		t.Fatal(err)
	}
	first := serial(t, cl.CertFile)
	if err := cl.Enroll(ctx, tok); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a used token enrolled again: %v", err)
	}

	// Events pushed with the enrolled identity are stored under its name.
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki})
	push(t, pki, c.Addr(), "web1", 3)
	stored, err := pb.NewQueryServiceClient(pki.Dial(t, c.Addr(), "operator")).ListEvents(ctx, &pb.ListEventsRequest{Filter: &pb.EventFilter{Hosts: []string{"web1"}}})
	if err != nil || len(stored.Events) != 3 {
		t.Fatalf("stored events for web1: %v, %v", stored, err)
	}

	// A fresh token cannot take the live name ...
	tok2, _ := a.Token("web1", time.Minute)
	thief := &Client{URL: srv.URL, CA: pool, Name: "web1", CertFile: t.TempDir() + "/w.crt", KeyFile: t.TempDir() + "/w.key"}
	if err := thief.Enroll(ctx, tok2); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second enrollment of live web1: %v", err)
	}
	// ... until an operator approves (over HTTPS with the operator certificate; a host certificate
	// cannot); the first identity is then revoked.
	if code := approve(t, srv.URL, pki, "web1", "web1"); code != http.StatusForbidden {
		t.Fatalf("approval with a host certificate: HTTP %d", code)
	}
	if code := approve(t, srv.URL, pki, "operator", "web1"); code != http.StatusOK {
		t.Fatalf("approval with the operator certificate: HTTP %d", code)
	}
	if err := thief.Enroll(ctx, tok2); err != nil {
		t.Fatalf("approved re-enrollment: %v", err)
	}
	if rev, _ := os.ReadFile(pki.File("revoked.txt")); !strings.Contains(string(rev), first) {
		t.Fatalf("approved re-enrollment did not revoke %s:\n%s", first, rev)
	}

	// Renewal with the current identity: a new serial, the old one revoked and refused by the collector.
	os.Rename(thief.CertFile, cl.CertFile)
	os.Rename(thief.KeyFile, cl.KeyFile)
	before := serial(t, cl.CertFile)
	copyFile(t, cl.CertFile, pki.File("web1old.crt"))
	copyFile(t, cl.KeyFile, pki.File("web1old.key"))
	if err := cl.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	after := serial(t, cl.CertFile)
	rev, _ := os.ReadFile(pki.File("revoked.txt"))
	if after == before || !strings.Contains(string(rev), before) {
		t.Fatalf("renewal %s -> %s, revoked:\n%s", before, after, rev)
	}
	push(t, pki, c.Addr(), "web1", 4) // the renewed certificate works (seq 4)
	// The replaced certificate can neither renew nor push.
	old := &Client{URL: srv.URL, CA: pool, Name: "web1", CertFile: pki.File("web1old.crt"), KeyFile: pki.File("web1old.key")}
	if err := old.Renew(ctx); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("renewal with the replaced certificate: %v", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := pb.NewIngestServiceClient(pki.Dial(t, c.Addr(), "web1old")).Push(pctx)
	if err == nil {
		_, err = st.Recv()
	}
	if err == nil {
		t.Fatal("the collector accepted the revoked certificate")
	}
	if !waitLog(c, "refused revoked client certificate", before) {
		t.Fatalf("the collector did not refuse serial %s as revoked (%v); log:\n%s", before, err, c.Log())
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// push sends events 1..n as host name and waits until the collector acknowledged n.
func push(t *testing.T, pki *collectortest.PKI, addr, name string, n uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := pb.NewIngestServiceClient(pki.Dial(t, addr, name)).Push(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatalf("push as %s: %v", name, err)
	}
	var evs []*pb.Event
	for seq := first.AckedSeq + 1; seq <= n; seq++ {
		evs = append(evs, &pb.Event{Seq: seq, BootId: "b", AgentVersion: "t", Time: timestamppb.New(time.Unix(1767225600, int64(seq)*1000)),
			Kind: &pb.Event_KeyFileAccess{KeyFileAccess: &pb.KeyFileAccess{Process: &pb.Process{Pid: 7, Comm: "cat", ExePath: "/usr/bin/cat"},
				Path: "/etc/signer/key.pem", Rule: "signer", Decision: pb.Decision_DECISION_DENIED}}})
	}
	if err := st.Send(&pb.PushRequest{Events: evs}); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				t.Fatal("stream ended before the ack")
			}
			t.Fatalf("push as %s: %v", name, err)
		}
		if r.AckedSeq >= n {
			return
		}
	}
}

func waitLog(c *collectortest.Collector, want ...string) bool {
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(c.Log(), w)
		}
		if ok {
			return true
		}
	}
	return false
}

// The collector binary's own enrollment listener (serve -enroll-listen) and token command
// (enroll token): a fresh agent enrolls with a token from the CLI and pushes over mTLS.
func TestCollectorEnrollmentListener(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin)
	dir := t.TempDir()
	tokenKey, addrFile := dir+"/token.key", dir+"/enroll-addr"
	if out, err := exec.Command(bin, "enroll", "token-key", "-out", tokenKey).CombinedOutput(); err != nil {
		t.Fatalf("enroll token-key: %v\n%s", err, out)
	}
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, Args: []string{"-enroll-listen", "127.0.0.1:0",
		"-enroll-ca-dir", pki.Dir, "-enroll-token-key", tokenKey, "-enroll-addr-file", addrFile, "-enroll-validity", "1h"}})
	addr, err := os.ReadFile(addrFile)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := exec.Command(bin, "enroll", "token", "-token-key", tokenKey, "-scope", "node-*", "-ttl", "5m").Output()
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(pki.File("ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cl := &Client{URL: "https://" + strings.TrimSpace(string(addr)), CA: pool, Name: "node-7", CertFile: pki.File("node-7.crt"), KeyFile: pki.File("node-7.key")}
	if err := cl.Enroll(context.Background(), strings.TrimSpace(string(tok))); err != nil {
		t.Fatal(err)
	}
	if na, err := cl.NotAfter(); err != nil || time.Until(na) > time.Hour || time.Until(na) < 50*time.Minute {
		t.Errorf("certificate expires %v (%v), want in 1h", na, err)
	}
	push(t, pki, c.Addr(), "node-7", 2)
	stored, err := pb.NewQueryServiceClient(pki.Dial(t, c.Addr(), "operator")).ListEvents(context.Background(),
		&pb.ListEventsRequest{Filter: &pb.EventFilter{Hosts: []string{"node-7"}}})
	if err != nil || len(stored.Events) != 2 {
		t.Fatalf("stored events for node-7: %v, %v", stored, err)
	}
}

// approve POSTs /v1/approve for name presenting the PKI certificate who.
func approve(t *testing.T, url string, pki *collectortest.PKI, who, name string) int {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.TLSConfig(t, who)}}
	resp, err := hc.Post(url+"/v1/approve", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
