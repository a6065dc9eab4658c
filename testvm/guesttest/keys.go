package guesttest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
)

// The test signer's keys: the crasher loads the private keys from TestKeysDir; the policy names the
// public keys in TestPubDir so the redactor can find the raw private numbers.
const (
	TestKeysDir = Dir + "/testkeys"
	TestPubDir  = Dir + "/testpub"
)

// Keys are the test signer's keys (written as rsa.pem, p256.pem and ed25519.pem).
type Keys struct {
	RSA *rsa.PrivateKey
	EC  *ecdsa.PrivateKey
	Ed  ed25519.PrivateKey
}

// TestKeys are the keys Main wrote into TestKeysDir, and PEM their PKCS#8 PEM files.
var TestKeys struct {
	Keys
	PEM [][]byte
}

// GenerateKeys makes an RSA-2048, a P-256 and an Ed25519 key.
func GenerateKeys() (*Keys, error) {
	k := &Keys{}
	var err error
	if k.RSA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	if k.EC, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	if _, k.Ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	return k, nil
}

func writeKeys(k *Keys) error {
	if k == nil {
		var err error
		if k, err = GenerateKeys(); err != nil {
			return err
		}
	}
	TestKeys.Keys, TestKeys.PEM = *k, nil
	os.MkdirAll(TestKeysDir, 0o755)
	os.MkdirAll(TestPubDir, 0o755)
	for _, nk := range []struct {
		name string
		key  crypto.Signer
	}{{"rsa", k.RSA}, {"p256", k.EC}, {"ed25519", k.Ed}} {
		der, err := x509.MarshalPKCS8PrivateKey(nk.key)
		if err != nil {
			return err
		}
		p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		TestKeys.PEM = append(TestKeys.PEM, p)
		if err := os.WriteFile(filepath.Join(TestKeysDir, nk.name+".pem"), p, 0o644); err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(nk.key.Public())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(TestPubDir, nk.name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// KeyEncodings lists every form of the test keys a dump must not contain: PEM, PKCS#8 and PKCS#1 DER,
// and the raw numbers big-endian and as little-endian 64-bit limbs.
func KeyEncodings() map[string][]byte {
	out := map[string][]byte{}
	for i, p := range TestKeys.PEM {
		blk, _ := pem.Decode(p)
		out["pem"+string(rune('0'+i))] = bytes.Split(p, []byte("\n"))[1] // the first base64 line: unique to the key
		out["pkcs8-der"+string(rune('0'+i))] = blk.Bytes
	}
	out["pkcs1-der"] = x509.MarshalPKCS1PrivateKey(TestKeys.RSA)
	num := func(name string, x *big.Int, n int) {
		b := x.FillBytes(make([]byte, n))
		out[name+"-be"] = b
		le := make([]byte, n)
		for i := range b {
			le[i] = b[n-1-i]
		}
		out[name+"-le"] = le
	}
	num("rsa-p", TestKeys.RSA.Primes[0], 128)
	num("rsa-q", TestKeys.RSA.Primes[1], 128)
	num("rsa-d", TestKeys.RSA.D, 256)
	num("ec-d", TestKeys.EC.D, 32)
	out["ed25519-seed"] = TestKeys.Ed.Seed()
	return out
}

// Leaks returns the names of key encodings found in b.
func Leaks(b []byte) []string {
	var found []string
	for name, enc := range KeyEncodings() {
		if bytes.Contains(b, enc) {
			found = append(found, name)
		}
	}
	return found
}

// writeKeyFiles creates the redactor rule's and the racer's key files before the agent starts.
func writeKeyFiles() error {
	for _, f := range []struct{ path, body string }{
		{HolderKey, "-----BEGIN PRIVATE KEY-----\nholder\n-----END PRIVATE KEY-----\n"},
		{RacerKey, "RACEKEY-0123456789abcdef0123456789abcdef\n"},
		{StrictKey, "-----BEGIN PRIVATE KEY-----\nstrict\n-----END PRIVATE KEY-----\n"},
	} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f.path, []byte(f.body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
