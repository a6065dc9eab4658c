package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/collectortest"
	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

func ev(seq uint64) *pb.Event {
	return &pb.Event{Seq: seq, BootId: "b", AgentVersion: "t", Time: timestamppb.New(time.Unix(1767225600, int64(seq)*1000)), // resends must be identical
		Kind: &pb.Event_KeyFileAccess{KeyFileAccess: &pb.KeyFileAccess{
			Process: &pb.Process{Pid: 7, Comm: "cat", ExePath: "/usr/bin/cat"}, Path: "/etc/signer/key.pem",
			Rule: "signer", Decision: pb.Decision_DECISION_DENIED}}}
}

// TestSIGKILLAndRestartLosesNothing SIGKILLs the real collector binary twice while an agent-like client
// pushes, restarts it on the same database, and checks every event is stored exactly once and the chain
// verifies.
func TestSIGKILLAndRestartLosesNothing(t *testing.T) {
	bin := collectortest.Build(t)
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			dsn := t.TempDir() + "/events.db"
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(t)
			}
			pki := collectortest.NewPKI(t, bin, "web1")
			c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn})
			cc := pki.Dial(t, c.Addr(), "web1")
			const total, batch = 10000, 250
			var acked atomic.Uint64
			var reconnects atomic.Int64
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				for ctx.Err() == nil {
					err := func() error {
						sctx, scancel := context.WithCancel(ctx)
						defer scancel()
						st, err := pb.NewIngestServiceClient(cc).Push(sctx)
						if err != nil {
							return err
						}
						first, err := st.Recv()
						if err != nil {
							return err
						}
						acked.Store(first.AckedSeq)
						// Replay a little before the resume point, as an agent whose acks were lost would.
						from := first.AckedSeq + 1
						if from > 300 {
							from -= 300
						}
						for from <= total {
							to := min(from+batch-1, total)
							var evs []*pb.Event
							for s := from; s <= to; s++ {
								evs = append(evs, ev(s))
							}
							if err := st.Send(&pb.PushRequest{Events: evs}); err != nil {
								return err
							}
							r, err := st.Recv()
							if err != nil {
								return err
							}
							acked.Store(r.AckedSeq)
							from = to + 1
						}
						return nil
					}()
					if err == nil {
						done <- nil
						return
					}
					switch status.Code(err) {
					case codes.AlreadyExists, codes.InvalidArgument, codes.PermissionDenied:
						done <- err // not retryable: a real agent would alert
						return
					}
					reconnects.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
				done <- ctx.Err()
			}()
			for _, killAt := range []uint64{3000, 7000} {
				for acked.Load() < killAt {
					if ctx.Err() != nil {
						t.Fatalf("stalled at %d:\n%s", acked.Load(), c.Log())
					}
					time.Sleep(5 * time.Millisecond)
				}
				c.Kill()
				time.Sleep(300 * time.Millisecond)
				c.Restart(t)
			}
			if err := <-done; err != nil {
				t.Fatalf("pusher: %v\n%s", err, c.Log())
			}
			if acked.Load() != total || reconnects.Load() < 2 {
				t.Fatalf("acked %d (want %d), reconnects %d (want >= 2)", acked.Load(), total, reconnects.Load())
			}
			c.Stop()
			out, err := exec.Command(bin, "verify", "-db", dsn).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "OK    web1: 10000 events") {
				t.Fatalf("verify after kills: %v\n%s", err, out)
			}
			// Exactly once: count and continuity straight from the database via a fresh collector.
			c.Restart(t)
			q := pb.NewQueryServiceClient(pki.Dial(t, c.Addr(), "operator"))
			hosts, err := q.ListHosts(ctx, &pb.ListHostsRequest{})
			if err != nil || len(hosts.Hosts) != 1 || hosts.Hosts[0].EventCount != total || hosts.Hosts[0].AckedSeq != total {
				t.Fatalf("hosts after kills: %v %v", hosts, err)
			}
			var seqs []uint64
			req := &pb.ListEventsRequest{PageSize: 1000}
			for {
				r, err := q.ListEvents(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range r.Events {
					seqs = append(seqs, e.Event.Seq)
				}
				if r.NextPageToken == "" {
					break
				}
				req.PageToken = r.NextPageToken
			}
			seen := make([]bool, total+1)
			for _, s := range seqs {
				if s == 0 || s > total || seen[s] {
					t.Fatalf("seq %d out of range or duplicated", s)
				}
				seen[s] = true
			}
			if len(seqs) != total {
				t.Fatalf("%d events listed, want %d", len(seqs), total)
			}
			t.Logf("%s: %d events exactly once across 2 SIGKILLs, %d reconnects", backend, total, reconnects.Load())
		})
	}
}

func TestVerifyCommandReportsTampering(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin, "web1")
	dsn := t.TempDir() + "/events.db"
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn})
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
	c.Stop()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"verify", "-db", dsn}, &stdout, &stderr); code != 0 {
		t.Fatalf("verify of untouched db: %d %s %s", code, stdout.String(), stderr.String())
	}
	db := openSQLite(t, dsn)
	if _, err := db.Exec(`DELETE FROM events WHERE seq = 7`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE events SET rule = 'nothing-to-see' WHERE seq = 12`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	stdout.Reset()
	code := run(ctx, []string{"verify", "-db", dsn}, &stdout, &stderr)
	out := stdout.String()
	if code != 1 || !strings.Contains(out, "FAIL  web1") || !strings.Contains(out, "DELETED at position 7") || !strings.Contains(out, "MODIFIED at position 12") {
		t.Fatalf("verify of tampered db: exit %d\n%s", code, out)
	}
}

func TestCertsAndConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"init", []string{"certs", "init", "-dir", dir}, 0, "created"},
		{"init twice refuses to overwrite the CA", []string{"certs", "init", "-dir", dir}, 1, "refusing to overwrite"},
		{"host", []string{"certs", "host", "-dir", dir, "-name", "web1"}, 0, "keyguard-host"},
		{"host with hostile name", []string{"certs", "host", "-dir", dir, "-name", "../../etc/x"}, 1, "-name"},
		{"revoke", []string{"certs", "revoke", "-dir", dir, "-name", "web1"}, 0, "revoked web1"},
		{"serve without TLS files", []string{"serve", "-listen", "127.0.0.1:0", "-db", dir + "/a.db"}, 1, "certs init"},
		{"plaintext off loopback", []string{"-insecure-plaintext", "-listen", "0.0.0.0:0", "-db", dir + "/a.db"}, 1, "loopback"},
		{"metrics off loopback", []string{"-insecure-plaintext", "-listen", "127.0.0.1:0", "-db", dir + "/a.db", "-metrics-listen", "0.0.0.0:0"}, 1, "-metrics-allow-remote"},
		{"metrics off loopback in YAML", []string{"-config", writeFile(t, dir+"/m.yaml", "listen: 127.0.0.1:0\ninsecure_plaintext: true\nmetrics_listen: \":9465\"\n"), "-db", dir + "/a.db"}, 1, "metrics_allow_remote"},
		{"bad config key", []string{"-config", writeFile(t, dir+"/bad.yaml", "listen: 127.0.0.1:0\nretension: 1h\n")}, 1, "retension"},
		{"bad duration", []string{"-config", writeFile(t, dir+"/bad2.yaml", "retention:\n  max_age: forever\n")}, 1, "not a duration"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := run(context.Background(), tc.args, &out, &out)
			if code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("exit %d (want %d), output:\n%s\nwant it to contain %q", code, tc.code, out.String(), tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, s string) string {
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// `certs host -name web1` twice does not leave two live certificates for web1: the second run refuses,
// and -reissue revokes the old serial (revoked.txt and the CRL) before issuing the new one.
func TestCertsReissue(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	var out bytes.Buffer
	if code := run(ctx, []string{"certs", "init", "-dir", dir}, &out, &out); code != 0 {
		t.Fatalf("init: %s", out.String())
	}
	serial := func() string {
		p, err := certgen.Load(dir, "web1")
		if err != nil {
			t.Fatal(err)
		}
		return p.Cert.SerialNumber.Text(16)
	}
	if code := run(ctx, []string{"certs", "host", "-dir", dir, "-name", "web1"}, &out, &out); code != 0 {
		t.Fatalf("host: %s", out.String())
	}
	first := serial()
	out.Reset()
	if code := run(ctx, []string{"certs", "host", "-dir", dir, "-name", "web1"}, &out, &out); code != 1 || !strings.Contains(out.String(), "-reissue") {
		t.Fatalf("second host web1: exit %d\n%s", code, out.String())
	}
	if serial() != first {
		t.Fatal("refused reissue replaced the certificate")
	}
	out.Reset()
	if code := run(ctx, []string{"certs", "host", "-dir", dir, "-name", "web1", "-reissue"}, &out, &out); code != 0 || !strings.Contains(out.String(), "revoked the previous web1.crt (serial "+first+")") {
		t.Fatalf("reissue: exit %d\n%s", code, out.String())
	}
	second := serial()
	revoked, _ := os.ReadFile(filepath.Join(dir, "revoked.txt"))
	if second == first || !strings.Contains(string(revoked), first+" # web1") || strings.Contains(string(revoked), second) {
		t.Fatalf("serials %s -> %s, revoked.txt:\n%s", first, second, revoked)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "crl.pem"))
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("crl.pem is not PEM")
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Text(16) != first {
		t.Fatalf("CRL entries %v, want only %s", crl.RevokedCertificateEntries, first)
	}
}
