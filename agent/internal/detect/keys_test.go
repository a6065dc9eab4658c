package detect

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	mrand "math/rand/v2"
	"sync"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
	"golang.org/x/crypto/ssh"
)

// testKeys are real keys generated once per test binary.
type testKeys struct {
	rsa   *rsa.PrivateKey
	p256  *ecdsa.PrivateKey
	p384  *ecdsa.PrivateKey
	p521  *ecdsa.PrivateKey
	ed    ed25519.PrivateKey
	other *rsa.PrivateKey // not configured
	pubs  []pubkeys.Key
}

var (
	keysOnce sync.Once
	theKeys  *testKeys
)

func keys(t testing.TB) *testKeys {
	t.Helper()
	keysOnce.Do(func() {
		k := &testKeys{}
		// The raw d search covers gcd(p-1, q-1) <= 256 (doc.go); keys outside that (about 0.5%) are
		// regenerated so the test is deterministic about what it claims.
		for {
			r, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			g := new(big.Int).GCD(nil, nil, new(big.Int).Sub(r.Primes[0], big.NewInt(1)), new(big.Int).Sub(r.Primes[1], big.NewInt(1)))
			if g.Cmp(big.NewInt(fracMaxDen)) <= 0 {
				k.rsa = r
				break
			}
		}
		var err error
		k.other, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		k.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		k.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(err)
		k.p521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		must(err)
		_, k.ed, err = ed25519.GenerateKey(rand.Reader)
		must(err)
		for name, pk := range map[string]crypto.PublicKey{"rsa.pem": &k.rsa.PublicKey, "p256.pem": &k.p256.PublicKey, "p384.pem": &k.p384.PublicKey, "p521.pem": &k.p521.PublicKey, "ed.pem": k.ed.Public()} {
			der, err := x509.MarshalPKIXPublicKey(pk)
			must(err)
			ks, err := pubkeys.Parse(name, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			must(err)
			k.pubs = append(k.pubs, ks...)
		}
		theKeys = k
	})
	return theKeys
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// encoding is one way a key can sit in memory.
type encoding struct {
	name  string
	data  []byte
	kind  string
	key   string // expected Finding.Key
	align bool   // must be planted at an 8-byte aligned offset
	// off and length of the finding relative to data's start (length 0 means len(data)).
	off, length int
}

func pemOf(typ string, der []byte, h map[string]string) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: h, Bytes: der})
}

func be(x *big.Int, n int) []byte { return x.FillBytes(make([]byte, n)) }

func le(x *big.Int, n int) []byte {
	b := be(x, n)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// encryptedPKCS8 builds an EncryptedPrivateKeyInfo with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC)
// parameters, as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes; the ciphertext is random bytes of
// the right length (the detector never decrypts).
func makeEncryptedPKCS8(plainLen int) []byte {
	type prf struct {
		Algo asn1.ObjectIdentifier
		Null asn1.RawValue
	}
	type pbkdf2Params struct {
		Salt []byte
		Iter int
		Prf  prf
	}
	type kdf struct {
		Algo   asn1.ObjectIdentifier
		Params pbkdf2Params
	}
	type enc struct {
		Algo asn1.ObjectIdentifier
		IV   []byte
	}
	type pbes2 struct {
		KDF kdf
		Enc enc
	}
	salt := make([]byte, 16)
	iv := make([]byte, 16)
	rand.Read(salt)
	rand.Read(iv)
	params, err := asn1.Marshal(pbes2{
		KDF: kdf{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}, pbkdf2Params{salt, 2048, prf{asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}, asn1.NullRawValue}}},
		Enc: enc{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}, iv},
	})
	must(err)
	ct := make([]byte, (plainLen/16+1)*16)
	rand.Read(ct)
	der, err := asn1.Marshal(encryptedPKCS8{Algo: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}, Parameters: asn1.RawValue{FullBytes: params}}, Data: ct})
	must(err)
	return der
}

func jwkJSON(m map[string]string) []byte {
	b, err := json.Marshal(m)
	must(err)
	return b
}

// encodings returns every encoding of the test keys the detector claims to find.
func (k *testKeys) encodings(t testing.TB) []encoding {
	t.Helper()
	var out []encoding
	add := func(e encoding) {
		if bytes.HasPrefix(e.data, []byte("-----BEGIN")) && e.length == 0 {
			e.length = len(e.data) - 1 // the finding ends at the END line's dashes, before its newline
		}
		out = append(out, e)
	}

	// RSA.
	r := k.rsa
	pkcs1 := x509.MarshalPKCS1PrivateKey(r)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(r)
	must(err)
	sshBlk, err := ssh.MarshalPrivateKey(r, "signer")
	must(err)
	add(encoding{name: "rsa/pem-pkcs1", data: pemOf("RSA PRIVATE KEY", pkcs1, nil), kind: KindPEMRSA, key: "rsa.pem"})
	add(encoding{name: "rsa/pem-pkcs1-legacy-encrypted", data: pemOf("RSA PRIVATE KEY", makeEncryptedPKCS8(1200)[40:], map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"}), kind: KindPEMRSAEncrypted})
	add(encoding{name: "rsa/pem-pkcs8", data: pemOf("PRIVATE KEY", pkcs8, nil), kind: KindPEMPKCS8, key: "rsa.pem"})
	add(encoding{name: "rsa/pem-pkcs8-encrypted", data: pemOf("ENCRYPTED PRIVATE KEY", makeEncryptedPKCS8(len(pkcs8)), nil), kind: KindPEMPKCS8Enc})
	add(encoding{name: "rsa/pem-openssh", data: pem.EncodeToMemory(sshBlk), kind: KindPEMOpenSSH, key: "rsa.pem"})
	escaped, err := json.Marshal(map[string]string{"private_key": string(pemOf("PRIVATE KEY", pkcs8, nil))})
	must(err)
	add(encoding{name: "rsa/pem-in-json-string", data: escaped, kind: KindPEMPKCS8, key: "rsa.pem", off: len(`{"private_key":"`), length: len(escaped) - len(`{"private_key":"`) - len(`\n"}`)})
	add(encoding{name: "rsa/der-pkcs1", data: pkcs1, kind: KindDERRSA, key: "rsa.pem"})
	add(encoding{name: "rsa/der-pkcs8", data: pkcs8, kind: KindDERPKCS8, key: "rsa.pem"})
	add(encoding{name: "rsa/der-pkcs8-encrypted", data: makeEncryptedPKCS8(len(pkcs8)), kind: KindDERPKCS8Enc})
	add(encoding{name: "rsa/openssh-binary", data: sshBlk.Bytes, kind: KindOpenSSHBinary, key: "rsa.pem"})
	r.Precompute()
	add(encoding{name: "rsa/jwk", data: jwkJSON(map[string]string{"kty": "RSA", "kid": "sig1", "n": b64u(r.N.Bytes()), "e": "AQAB", "d": b64u(r.D.Bytes()), "p": b64u(r.Primes[0].Bytes()), "q": b64u(r.Primes[1].Bytes()), "dp": b64u(r.Precomputed.Dp.Bytes()), "dq": b64u(r.Precomputed.Dq.Bytes()), "qi": b64u(r.Precomputed.Qinv.Bytes())}), kind: KindJWK, key: "rsa.pem"})
	pb := (r.N.BitLen()/2 + 7) / 8
	for i, p := range r.Primes {
		n := []string{"p", "q"}[i]
		add(encoding{name: "rsa/prime-" + n + "-be", data: be(p, pb), kind: KindRSAPrimeBE, key: "rsa.pem", align: true})
		add(encoding{name: "rsa/prime-" + n + "-le64", data: le(p, pb), kind: KindRSAPrimeLE, key: "rsa.pem", align: true})
	}
	add(encoding{name: "rsa/d-lambda-be", data: r.D.Bytes(), kind: KindRSADBE, key: "rsa.pem", align: true})
	add(encoding{name: "rsa/d-lambda-be-fixed-width-3-zero-bytes", data: be(r.D, len(r.D.Bytes())+3), kind: KindRSADBE, key: "rsa.pem", off: 3, align: true})
	add(encoding{name: "rsa/d-lambda-le64", data: le(r.D, 8*((r.D.BitLen()+63)/64)), kind: KindRSADLE, key: "rsa.pem", align: true})
	one := big.NewInt(1)
	phi := new(big.Int).Mul(new(big.Int).Sub(r.Primes[0], one), new(big.Int).Sub(r.Primes[1], one))
	dphi := new(big.Int).ModInverse(big.NewInt(int64(r.E)), phi)
	add(encoding{name: "rsa/d-phi-be", data: dphi.Bytes(), kind: KindRSADBE, key: "rsa.pem", align: true})
	add(encoding{name: "rsa/d-phi-le64", data: le(dphi, 8*((dphi.BitLen()+63)/64)), kind: KindRSADLE, key: "rsa.pem", align: true})

	// ECDSA.
	for _, c := range []struct {
		name string
		k    *ecdsa.PrivateKey
	}{{"p256", k.p256}, {"p384", k.p384}, {"p521", k.p521}} {
		key := c.name + ".pem"
		sec1, err := x509.MarshalECPrivateKey(c.k)
		must(err)
		p8, err := x509.MarshalPKCS8PrivateKey(c.k)
		must(err)
		size := (c.k.Curve.Params().BitSize + 7) / 8
		add(encoding{name: c.name + "/pem-sec1", data: pemOf("EC PRIVATE KEY", sec1, nil), kind: KindPEMEC, key: key})
		add(encoding{name: c.name + "/pem-pkcs8", data: pemOf("PRIVATE KEY", p8, nil), kind: KindPEMPKCS8, key: key})
		add(encoding{name: c.name + "/der-sec1", data: sec1, kind: KindDEREC, key: key})
		add(encoding{name: c.name + "/der-pkcs8", data: p8, kind: KindDERPKCS8, key: key})
		crv := map[string]string{"p256": "P-256", "p384": "P-384", "p521": "P-521"}[c.name]
		add(encoding{name: c.name + "/jwk", data: jwkJSON(map[string]string{"kty": "EC", "crv": crv, "x": b64u(be(c.k.X, size)), "y": b64u(be(c.k.Y, size)), "d": b64u(be(c.k.D, size))}), kind: KindJWK, key: key})
		add(encoding{name: c.name + "/scalar-be", data: be(c.k.D, size), kind: KindECScalarBE, key: key, align: true})
		add(encoding{name: c.name + "/scalar-le64", data: le(c.k.D, (size+7)&^7), kind: KindECScalarLE, key: key, align: true})
		if c.name == "p256" {
			blk, err := ssh.MarshalPrivateKey(c.k, "")
			must(err)
			add(encoding{name: c.name + "/pem-openssh", data: pem.EncodeToMemory(blk), kind: KindPEMOpenSSH, key: key})
		}
	}

	// Ed25519.
	seed := k.ed.Seed()
	p8, err := x509.MarshalPKCS8PrivateKey(k.ed)
	must(err)
	sshEd, err := ssh.MarshalPrivateKey(k.ed, "ed")
	must(err)
	h := sha512.Sum512(seed)
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	add(encoding{name: "ed25519/pem-pkcs8", data: pemOf("PRIVATE KEY", p8, nil), kind: KindPEMPKCS8, key: "ed.pem"})
	add(encoding{name: "ed25519/der-pkcs8", data: p8, kind: KindDERPKCS8, key: "ed.pem"})
	add(encoding{name: "ed25519/pem-openssh", data: pem.EncodeToMemory(sshEd), kind: KindPEMOpenSSH, key: "ed.pem"})
	add(encoding{name: "ed25519/openssh-binary", data: sshEd.Bytes, kind: KindOpenSSHBinary, key: "ed.pem"})
	add(encoding{name: "ed25519/jwk", data: jwkJSON(map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64u(k.ed[32:]), "d": b64u(seed)}), kind: KindJWK, key: "ed.pem"})
	add(encoding{name: "ed25519/seed", data: seed, kind: KindEd25519Seed, key: "ed.pem", align: true})
	add(encoding{name: "ed25519/seed-pub", data: []byte(k.ed), kind: KindEd25519SeedPub, key: "ed.pem"})
	add(encoding{name: "ed25519/expanded", data: h[:], kind: KindEd25519Expanded, key: "ed.pem", align: true})

	// A key that is not configured: found by format, attributed to nothing.
	add(encoding{name: "other/pem-pkcs1", data: pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.other), nil), kind: KindPEMRSA})
	jwks := []byte(`{"keys":[{"kty":"oct","k":"` + b64u([]byte("0123456789abcdef0123456789abcdef")) + `","kid":"hmac"}]}`)
	add(encoding{name: "oct/jwks", data: jwks, kind: KindJWK, off: len(`{"keys":[`), length: len(jwks) - len(`{"keys":[`) - len(`]}`)})
	return out
}

// filler returns n bytes resembling process memory: zero pages, pointers, small integers, text,
// and stretches of random bytes.
func filler(rng *mrand.Rand, n int) []byte { return fill(rng, n, true) }

// fill is filler, optionally without random stretches (cheaper to scan for raw EC/Ed25519 keys).
func fill(rng *mrand.Rand, n int, random bool) []byte {
	b := make([]byte, 0, n)
	text := []byte("GET /v1/sign HTTP/1.1\r\nHost: signer.internal\r\nUser-Agent: keyguard-test\r\n\r\n{\"ok\":true,\"ts\":1731400000} ")
	for len(b) < n {
		c := rng.IntN(5)
		if c == 3 && !random {
			c = 2
		}
		switch c {
		case 0:
			b = append(b, make([]byte, 64+rng.IntN(4096))...)
		case 1:
			for range 1 + rng.IntN(64) {
				v := uint64(0x7f00_0000_0000) + uint64(rng.IntN(1<<30))*8
				for i := range 8 {
					b = append(b, byte(v>>(8*i)))
				}
			}
		case 2:
			for range 1 + rng.IntN(20) {
				b = append(b, text...)
			}
		case 3:
			r := make([]byte, 32+rng.IntN(2048))
			for i := range r {
				r[i] = byte(rng.Uint32())
			}
			b = append(b, r...)
		case 4:
			for range 1 + rng.IntN(128) {
				b = append(b, byte(rng.IntN(16)), 0, 0, 0)
			}
		}
	}
	return b[:n]
}
