package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/enroll"
	"github.com/keyguard/keyguard/collector/pgtest"
)

func enrollCSR(t *testing.T, name string) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func parsePEM(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The enrollment registry in the store: two collectors on one database agree on who holds a name and
// which tokens are spent, a restarted collector keeps refusing a live name, an approval recorded by
// one collector lets another re-enroll, a token's use count holds across collectors, a replaced
// certificate cannot renew, and of concurrent claims of one new name exactly one wins.
func TestEnrollRegistry(t *testing.T) {
	ca, err := certgen.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key := []byte(strings.Repeat("k", 32))
	for _, b := range []struct {
		name string
		dsn  func(t testing.TB) string
	}{
		{"sqlite", func(t testing.TB) string { return filepath.Join(t.TempDir(), "events.db") }},
		{"postgres", pgtest.NewDatabase},
	} {
		t.Run(b.name, func(t *testing.T) {
			dsn := b.dsn(t)
			revoked := filepath.Join(t.TempDir(), "revoked.txt")
			authority := func(s *Store) *enroll.Authority {
				return &enroll.Authority{CA: ca, TokenKey: key, Validity: time.Hour, RevokedFile: revoked, Registry: s}
			}
			one, two := open(t, dsn), open(t, dsn)
			a1, a2 := authority(one), authority(two)
			ctx := context.Background()
			tok := func(scope string, uses int) string {
				s, err := a1.TokenN(scope, time.Hour, uses)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			t1 := tok("web*", 1)
			first, err := a1.Enroll(ctx, t1, enrollCSR(t, "web1"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a2.Enroll(ctx, tok("web1", 1), enrollCSR(t, "web1")); !errors.Is(err, enroll.ErrLive) {
				t.Errorf("other collector, live name: %v, want ErrLive", err)
			}
			if _, err := a2.Enroll(ctx, t1, enrollCSR(t, "web2")); !errors.Is(err, enroll.ErrToken) {
				t.Errorf("other collector, spent token: %v, want ErrToken", err)
			}
			one.Close()
			three := open(t, dsn) // the first collector restarted
			a3 := authority(three)
			t3 := tok("web1", 1)
			if _, err := a3.Enroll(ctx, t3, enrollCSR(t, "web1")); !errors.Is(err, enroll.ErrLive) {
				t.Errorf("after restart, live name: %v, want ErrLive", err)
			}
			if err := a2.Approve(ctx, "web1"); err != nil {
				t.Fatal(err)
			}
			second, err := a3.Enroll(ctx, tok("web1", 1), enrollCSR(t, "web1"))
			if err != nil {
				t.Fatalf("approved on another collector: %v", err)
			}
			rev, _ := os.ReadFile(revoked)
			if !strings.Contains(string(rev), parsePEM(t, first).SerialNumber.Text(16)) {
				t.Errorf("the replaced certificate was not revoked: %q", rev)
			}
			if _, err := a2.Enroll(ctx, tok("web1", 1), enrollCSR(t, "web1")); !errors.Is(err, enroll.ErrLive) {
				t.Errorf("an approval is used once: %v, want ErrLive", err)
			}
			if _, err := a2.Renew(ctx, parsePEM(t, first), enrollCSR(t, "web1")); !errors.Is(err, enroll.ErrToken) {
				t.Errorf("renewal with the replaced certificate: %v, want ErrToken", err)
			}
			if _, err := a2.Renew(ctx, parsePEM(t, second), enrollCSR(t, "web1")); err != nil {
				t.Errorf("renewal with the current certificate: %v", err)
			}
			pool := tok("node-*", 2)
			for i, c := range []struct {
				a    *enroll.Authority
				name string
				want error
			}{{a3, "node-a", nil}, {a2, "node-b", nil}, {a3, "node-c", enroll.ErrToken}} {
				if _, err := c.a.Enroll(ctx, pool, enrollCSR(t, c.name)); !errors.Is(err, c.want) {
					t.Errorf("use %d of a 2-use token: %v, want %v", i+1, err, c.want)
				}
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			won := 0
			for i := range 8 {
				a, tk := []*enroll.Authority{a2, a3}[i%2], tok("race", 1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := a.Enroll(ctx, tk, enrollCSR(t, "race"))
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						won++
					case !errors.Is(err, enroll.ErrLive):
						t.Errorf("concurrent claim: %v", err)
					}
				}()
			}
			wg.Wait()
			if won != 1 {
				t.Errorf("%d concurrent claims of one name won, want 1", won)
			}
		})
	}
}
