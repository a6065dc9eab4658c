package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
)

func csrFor(t *testing.T, name string) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Bootstrap tokens: only an unexpired, untampered token whose scope matches the CSR's name enrolls.
func TestTokens(t *testing.T) {
	ca, err := certgen.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	a := &Authority{CA: ca, TokenKey: []byte(strings.Repeat("k", 32)), RevokedFile: t.TempDir() + "/revoked.txt", Now: func() time.Time { return now }}
	other := &Authority{CA: ca, TokenKey: []byte(strings.Repeat("x", 32)), Now: a.Now}
	mk := func(a *Authority, scope string, ttl time.Duration) string {
		tok, err := a.Token(scope, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	expired := mk(a, "web1", time.Minute)
	a.Now = func() time.Time { return now.Add(2 * time.Minute) }
	good := mk(a, "web*", time.Hour)
	parts := strings.Split(good, ".")
	for _, c := range []struct {
		name, token, host string
		want              error
	}{
		{"expired", expired, "web1", ErrToken},
		{"other key", mk(other, "web*", time.Hour), "web1", ErrToken},
		{"scope", good, "db1", ErrToken},
		{"tampered scope", parts[0] + "." + strings.Replace(parts[1], parts[1][:4], "AAAA", 1) + "." + parts[2], "web1", ErrToken},
		{"garbage", "kgb1.x.y", "web1", ErrToken},
		{"bad name", good, "web1/../x", ErrCSR},
		{"good", good, "web2", nil},
		{"spent", good, "web3", ErrToken},
	} {
		_, err := a.Enroll(context.Background(), c.token, csrFor(t, c.host))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	for _, c := range []struct {
		ttl  time.Duration
		uses int
		ok   bool
	}{
		{25 * time.Hour, 1, false}, {24 * time.Hour, 1, true}, {168 * time.Hour, 2, true},
		{169 * time.Hour, 2, false}, {time.Hour, 0, false}, {time.Hour, MaxTokenUses + 1, false},
	} {
		if _, err := a.TokenN("web*", c.ttl, c.uses); (err == nil) != c.ok {
			t.Errorf("token of %v, %d uses: %v, want ok=%v", c.ttl, c.uses, err, c.ok)
		}
	}
	// A node-pool token enrolls as many names as its uses, then no more.
	pool := poolToken(t, a, "node-*", 3)
	for i, name := range []string{"node-a", "node-b", "node-c", "node-d"} {
		_, err := a.Enroll(context.Background(), pool, csrFor(t, name))
		if (err == nil) != (i < 3) || err != nil && !errors.Is(err, ErrToken) {
			t.Errorf("use %d of a 3-use token (%s): %v", i+1, name, err)
		}
	}
}

func poolToken(t *testing.T, a *Authority, scope string, uses int) string {
	t.Helper()
	tok, err := a.TokenN(scope, 48*time.Hour, uses)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
