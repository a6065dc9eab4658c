package guard

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

// The test signer's keys: the crasher loads the private keys from testKeysDir; the policy names the
// public keys in testPubDir so the redactor can find the raw private numbers.
const (
	testKeysDir = dir + "/testkeys"
	testPubDir  = dir + "/testpub"
)

var testKeys struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
	pem [][]byte
}

func writeTestKeys() error {
	var err error
	if testKeys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return err
	}
	if testKeys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return err
	}
	if _, testKeys.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return err
	}
	os.MkdirAll(testKeysDir, 0o755)
	os.MkdirAll(testPubDir, 0o755)
	for name, k := range map[string]crypto.Signer{"rsa": testKeys.rsa, "p256": testKeys.ec, "ed25519": testKeys.ed} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		testKeys.pem = append(testKeys.pem, p)
		if err := os.WriteFile(filepath.Join(testKeysDir, name+".pem"), p, 0o644); err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(k.Public())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(testPubDir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// keyEncodings lists every form of the test keys a dump must not contain: PEM, PKCS#8 and PKCS#1 DER,
// and the raw numbers big-endian and as little-endian 64-bit limbs.
func keyEncodings() map[string][]byte {
	out := map[string][]byte{}
	for i, p := range testKeys.pem {
		blk, _ := pem.Decode(p)
		out["pem"+string(rune('0'+i))] = bytes.Split(p, []byte("\n"))[1] // the first base64 line: unique to the key
		out["pkcs8-der"+string(rune('0'+i))] = blk.Bytes
	}
	out["pkcs1-der"] = x509.MarshalPKCS1PrivateKey(testKeys.rsa)
	num := func(name string, x *big.Int, n int) {
		b := x.FillBytes(make([]byte, n))
		out[name+"-be"] = b
		le := make([]byte, n)
		for i := range b {
			le[i] = b[n-1-i]
		}
		out[name+"-le"] = le
	}
	num("rsa-p", testKeys.rsa.Primes[0], 128)
	num("rsa-q", testKeys.rsa.Primes[1], 128)
	num("rsa-d", testKeys.rsa.D, 256)
	num("ec-d", testKeys.ec.D, 32)
	out["ed25519-seed"] = testKeys.ed.Seed()
	return out
}

// leaks returns the names of key encodings found in b.
func leaks(b []byte) []string {
	var found []string
	for name, enc := range keyEncodings() {
		if bytes.Contains(b, enc) {
			found = append(found, name)
		}
	}
	return found
}
