package detect

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"math/big"
	mrand "math/rand/v2"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestRandomDataHasNoFindings(t *testing.T) {
	k := keytest.Generate()
	tests := []struct {
		name string
		opts Options
		size int
	}{
		{"formats+rsa", Options{Keys: k.Pubs, Modes: ModeFormats | ModeRSARaw}, 4 << 20},
		{"all-modes-all-keys", Options{Keys: k.Pubs}, 48 << 10},
		{"all-modes-align1", Options{Keys: k.Pubs, Modes: ModeFormats | ModeRSARaw, Align: 1}, 1 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, tc.size)
			rand.Read(buf)
			if got := d.ScanBytes(buf); len(got) != 0 {
				t.Errorf("findings in random data: %+v", got)
			}
		})
	}
}

func TestPublicMaterialHasNoFindings(t *testing.T) {
	k := keytest.Generate()
	d, err := New(Options{Keys: k.Pubs})
	if err != nil {
		t.Fatal(err)
	}
	var parts [][]byte
	for _, c := range []struct {
		pub  any
		priv any
	}{{&k.RSA.PublicKey, k.RSA}, {&k.P256.PublicKey, k.P256}, {&k.P384.PublicKey, k.P384}, {k.Ed.Public(), k.Ed}} {
		der, err := x509.MarshalPKIXPublicKey(c.pub)
		must(err)
		parts = append(parts, der, pemOf("PUBLIC KEY", der, nil))
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "signer"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, c.pub, c.priv)
		must(err)
		parts = append(parts, cert, pemOf("CERTIFICATE", cert, nil))
		sp, err := ssh.NewPublicKey(c.pub)
		must(err)
		parts = append(parts, ssh.MarshalAuthorizedKey(sp), sp.Marshal())
	}
	parts = append(parts, pemOf("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&k.RSA.PublicKey), nil))
	n := k.RSA.N
	parts = append(parts, be(n, 256), le(n, 256), be(big.NewInt(65537), 8))
	for _, e := range []*ecdsa.PrivateKey{k.P256, k.P384, k.P521} {
		pt, err := e.PublicKey.Bytes()
		must(err)
		parts = append(parts, pt, pt[1:], le(e.X, 72), le(e.Y, 72))
	}
	parts = append(parts, []byte(k.Ed[32:]))
	pubJWK, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "n": b64u(n.Bytes()), "e": "AQAB", "kid": "a"},
		{"kty": "EC", "crv": "P-256", "x": b64u(be(k.P256.X, 32)), "y": b64u(be(k.P256.Y, 32))},
		{"kty": "OKP", "crv": "Ed25519", "x": b64u(k.Ed[32:])},
	}})
	parts = append(parts, pubJWK)
	// Labels and fragments that appear in binaries linked with crypto libraries.
	parts = append(parts, []byte("-----BEGIN RSA PRIVATE KEY-----\x00-----END RSA PRIVATE KEY-----\x00"), []byte(`"kty":"RSA","d"`), []byte("openssh-key-v1\x00"))
	rng := mrand.New(mrand.NewPCG(9, 10))
	var buf []byte
	for _, p := range parts {
		buf = append(buf, keytest.Filler(rng, 256+rng.IntN(1024), true)...)
		for len(buf)%8 != 0 {
			buf = append(buf, 0)
		}
		buf = append(buf, p...)
	}
	if got := d.ScanBytes(buf); len(got) != 0 {
		t.Errorf("findings in public-only material: %+v", got)
	}
}
