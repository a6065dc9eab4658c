package pubkeys

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestLoad(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pkix1, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "signer"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ek.PublicKey, ek)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "r1", "n": b64(rk.N.Bytes()), "e": "AQAB"},
		{"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64(ek.X.FillBytes(make([]byte, 32))), "y": b64(ek.Y.FillBytes(make([]byte, 32)))},
		{"kty": "OKP", "crv": "Ed25519", "x": b64(edPub)},
	}})
	sshPub, _ := ssh.NewPublicKey(edPub)
	p8, _ := x509.MarshalPKCS8PrivateKey(edPriv)
	privJWK, _ := json.Marshal(map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(edPub), "d": b64(edPriv.Seed())})

	tests := []struct {
		name    string
		file    string
		want    []string // names
		wantErr string
	}{
		{"pem-pkix", write("rsa.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix1})), []string{"rsa.pem"}, ""},
		{"pem-pkcs1", write("rsa1.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rk.PublicKey)})), []string{"rsa1.pem"}, ""},
		{"cert-pem", write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert})), []string{"cert.pem"}, ""},
		{"cert-der", write("cert.der", cert), []string{"cert.der"}, ""},
		{"jwks", write("keys.jwks", jwks), []string{"keys.jwks#r1", "keys.jwks#e1", "keys.jwks#3"}, ""},
		{"ssh", write("id.pub", ssh.MarshalAuthorizedKey(sshPub)), []string{"id.pub"}, ""},
		{"private-pem-refused", write("priv.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})), nil, "holds a private key"},
		{"private-jwk-refused", write("priv.jwk", privJWK), nil, "private members"},
		{"garbage", write("x.txt", []byte("hello")), nil, "no public key"},
		{"missing", filepath.Join(dir, "nope"), nil, "read public keys"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := Load(tc.file)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != len(tc.want) {
				t.Fatalf("got %d keys, want %d", len(keys), len(tc.want))
			}
			for i, k := range keys {
				if want := filepath.Join(dir, tc.want[i]); k.Name != want {
					t.Errorf("key %d name %q, want %q", i, k.Name, want)
				}
				if !strings.HasPrefix(k.Fingerprint, "SHA256:") || len(k.Fingerprint) != 7+64 {
					t.Errorf("fingerprint %q", k.Fingerprint)
				}
			}
		})
	}
	// The same key from different containers matches.
	a, _ := Load(filepath.Join(dir, "rsa.pem"))
	b, _ := Load(filepath.Join(dir, "keys.jwks"))
	if Match(b, a[0].Public) != filepath.Join(dir, "keys.jwks#r1") || a[0].Fingerprint != b[0].Fingerprint {
		t.Error("RSA key from PEM and JWKS do not match")
	}
}
