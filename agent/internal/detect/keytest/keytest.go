// Package keytest generates real keys and every in-memory encoding of them that package detect
// claims to find, plus memory-like filler, for detect's tests and the scan benchmarks.
package keytest

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

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
	"golang.org/x/crypto/ssh"
)

// Keys are real keys. Pubs holds the public keys of all but Other, named rsa.pem, p256.pem,
// p384.pem, p521.pem and ed.pem.
type Keys struct {
	RSA   *rsa.PrivateKey
	P256  *ecdsa.PrivateKey
	P384  *ecdsa.PrivateKey
	P521  *ecdsa.PrivateKey
	Ed    ed25519.PrivateKey
	Other *rsa.PrivateKey // not configured
	Pubs  []pubkeys.Key
}

// MaxGCD is the largest gcd(p-1, q-1) detect's raw d search covers; Generate draws RSA keys until
// one is inside it, since that is a documented limit rather than something to test by chance.
const MaxGCD = 256

var (
	keysOnce sync.Once
	theKeys  *Keys
)

// Generate returns keys generated once per process.
func Generate() *Keys {
	keysOnce.Do(func() {
		k := &Keys{}
		// The raw d search covers gcd(p-1, q-1) <= 256 (doc.go); keys outside that (about 0.5%) are
		// regenerated so the test is deterministic about what it claims.
		for {
			r, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			g := new(big.Int).GCD(nil, nil, new(big.Int).Sub(r.Primes[0], big.NewInt(1)), new(big.Int).Sub(r.Primes[1], big.NewInt(1)))
			if g.Cmp(big.NewInt(MaxGCD)) <= 0 {
				k.RSA = r
				break
			}
		}
		var err error
		k.Other, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		k.P256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		k.P384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(err)
		k.P521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		must(err)
		_, k.Ed, err = ed25519.GenerateKey(rand.Reader)
		must(err)
		for name, pk := range map[string]crypto.PublicKey{"rsa.pem": &k.RSA.PublicKey, "p256.pem": &k.P256.PublicKey, "p384.pem": &k.P384.PublicKey, "p521.pem": &k.P521.PublicKey, "ed.pem": k.Ed.Public()} {
			der, err := x509.MarshalPKIXPublicKey(pk)
			must(err)
			ks, err := pubkeys.Parse(name, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			must(err)
			k.Pubs = append(k.Pubs, ks...)
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

// Encoding is one way a key can sit in memory, and the finding detect must report for it.
type Encoding struct {
	Name  string
	Data  []byte
	Kind  string
	Key   string // expected Finding.Key
	Align bool   // must be planted at an 8-byte aligned offset
	// Off and Length of the finding relative to Data's start (Length 0 means len(Data)-Off).
	Off, Length int
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

// EncryptedPKCS8 builds an EncryptedPrivateKeyInfo with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC)
// parameters, as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes; the ciphertext is random bytes of
// the right length (the detector never decrypts).
func EncryptedPKCS8(plainLen int) []byte {
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
	type encryptedPKCS8 struct {
		Algo pkix.AlgorithmIdentifier
		Data []byte
	}
	der, err := asn1.Marshal(encryptedPKCS8{Algo: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}, Parameters: asn1.RawValue{FullBytes: params}}, Data: ct})
	must(err)
	return der
}

func jwkJSON(m map[string]string) []byte {
	b, err := json.Marshal(m)
	must(err)
	return b
}

// Encodings returns every encoding of the keys the detector claims to find.
func (k *Keys) Encodings() []Encoding {
	var out []Encoding
	add := func(e Encoding) {
		if bytes.HasPrefix(e.Data, []byte("-----BEGIN")) && e.Length == 0 {
			e.Length = len(e.Data) - 1 // the finding ends at the END line's dashes, before its newline
		}
		out = append(out, e)
	}

	// RSA.
	r := k.RSA
	pkcs1 := x509.MarshalPKCS1PrivateKey(r)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(r)
	must(err)
	sshBlk, err := ssh.MarshalPrivateKey(r, "signer")
	must(err)
	add(Encoding{Name: "rsa/pem-pkcs1", Data: pemOf("RSA PRIVATE KEY", pkcs1, nil), Kind: "pem-rsa-pkcs1", Key: "rsa.pem"})
	add(Encoding{Name: "rsa/pem-pkcs1-legacy-encrypted", Data: pemOf("RSA PRIVATE KEY", EncryptedPKCS8(1200)[40:], map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"}), Kind: "pem-rsa-pkcs1-encrypted"})
	add(Encoding{Name: "rsa/pem-pkcs8", Data: pemOf("PRIVATE KEY", pkcs8, nil), Kind: "pem-pkcs8", Key: "rsa.pem"})
	add(Encoding{Name: "rsa/pem-pkcs8-encrypted", Data: pemOf("ENCRYPTED PRIVATE KEY", EncryptedPKCS8(len(pkcs8)), nil), Kind: "pem-pkcs8-encrypted"})
	add(Encoding{Name: "rsa/pem-openssh", Data: pem.EncodeToMemory(sshBlk), Kind: "pem-openssh", Key: "rsa.pem"})
	escaped, err := json.Marshal(map[string]string{"private_key": string(pemOf("PRIVATE KEY", pkcs8, nil))})
	must(err)
	add(Encoding{Name: "rsa/pem-in-json-string", Data: escaped, Kind: "pem-pkcs8", Key: "rsa.pem", Off: len(`{"private_key":"`), Length: len(escaped) - len(`{"private_key":"`) - len(`\n"}`)})
	add(Encoding{Name: "rsa/der-pkcs1", Data: pkcs1, Kind: "der-rsa-pkcs1", Key: "rsa.pem"})
	add(Encoding{Name: "rsa/der-pkcs8", Data: pkcs8, Kind: "der-pkcs8", Key: "rsa.pem"})
	add(Encoding{Name: "rsa/der-pkcs8-encrypted", Data: EncryptedPKCS8(len(pkcs8)), Kind: "der-pkcs8-encrypted"})
	add(Encoding{Name: "rsa/openssh-binary", Data: sshBlk.Bytes, Kind: "openssh-binary", Key: "rsa.pem"})
	r.Precompute()
	add(Encoding{Name: "rsa/jwk", Data: jwkJSON(map[string]string{"kty": "RSA", "kid": "sig1", "n": b64u(r.N.Bytes()), "e": "AQAB", "d": b64u(r.D.Bytes()), "p": b64u(r.Primes[0].Bytes()), "q": b64u(r.Primes[1].Bytes()), "dp": b64u(r.Precomputed.Dp.Bytes()), "dq": b64u(r.Precomputed.Dq.Bytes()), "qi": b64u(r.Precomputed.Qinv.Bytes())}), Kind: "jwk-private", Key: "rsa.pem"})
	jwkStr, err := json.Marshal(map[string]string{"signing_jwk": string(jwkJSON(map[string]string{"kty": "RSA", "n": b64u(r.N.Bytes()), "e": "AQAB", "d": b64u(r.D.Bytes())}))})
	must(err)
	add(Encoding{Name: "rsa/jwk-in-json-string", Data: jwkStr, Kind: "jwk-private", Key: "rsa.pem", Off: len(`{"signing_jwk":"`), Length: len(jwkStr) - len(`{"signing_jwk":"`) - len(`"}`)})
	pb := (r.N.BitLen()/2 + 7) / 8
	for i, p := range r.Primes {
		n := []string{"p", "q"}[i]
		add(Encoding{Name: "rsa/prime-" + n + "-be", Data: be(p, pb), Kind: "rsa-prime-be", Key: "rsa.pem", Align: true})
		add(Encoding{Name: "rsa/prime-" + n + "-le64", Data: le(p, pb), Kind: "rsa-prime-le64", Key: "rsa.pem", Align: true})
	}
	add(Encoding{Name: "rsa/d-lambda-be", Data: r.D.Bytes(), Kind: "rsa-d-be", Key: "rsa.pem", Align: true})
	add(Encoding{Name: "rsa/d-lambda-be-fixed-width-3-zero-bytes", Data: be(r.D, len(r.D.Bytes())+3), Kind: "rsa-d-be", Key: "rsa.pem", Off: 3, Align: true})
	add(Encoding{Name: "rsa/d-lambda-le64", Data: le(r.D, 8*((r.D.BitLen()+63)/64)), Kind: "rsa-d-le64", Key: "rsa.pem", Align: true})
	one := big.NewInt(1)
	phi := new(big.Int).Mul(new(big.Int).Sub(r.Primes[0], one), new(big.Int).Sub(r.Primes[1], one))
	dphi := new(big.Int).ModInverse(big.NewInt(int64(r.E)), phi)
	add(Encoding{Name: "rsa/d-phi-be", Data: dphi.Bytes(), Kind: "rsa-d-be", Key: "rsa.pem", Align: true})
	add(Encoding{Name: "rsa/d-phi-le64", Data: le(dphi, 8*((dphi.BitLen()+63)/64)), Kind: "rsa-d-le64", Key: "rsa.pem", Align: true})

	// ECDSA.
	for _, c := range []struct {
		name string
		k    *ecdsa.PrivateKey
	}{{"p256", k.P256}, {"p384", k.P384}, {"p521", k.P521}} {
		key := c.name + ".pem"
		sec1, err := x509.MarshalECPrivateKey(c.k)
		must(err)
		p8, err := x509.MarshalPKCS8PrivateKey(c.k)
		must(err)
		size := (c.k.Curve.Params().BitSize + 7) / 8
		add(Encoding{Name: c.name + "/pem-sec1", Data: pemOf("EC PRIVATE KEY", sec1, nil), Kind: "pem-ec-sec1", Key: key})
		add(Encoding{Name: c.name + "/pem-pkcs8", Data: pemOf("PRIVATE KEY", p8, nil), Kind: "pem-pkcs8", Key: key})
		add(Encoding{Name: c.name + "/der-sec1", Data: sec1, Kind: "der-ec-sec1", Key: key})
		add(Encoding{Name: c.name + "/der-pkcs8", Data: p8, Kind: "der-pkcs8", Key: key})
		crv := map[string]string{"p256": "P-256", "p384": "P-384", "p521": "P-521"}[c.name]
		add(Encoding{Name: c.name + "/jwk", Data: jwkJSON(map[string]string{"kty": "EC", "crv": crv, "x": b64u(be(c.k.X, size)), "y": b64u(be(c.k.Y, size)), "d": b64u(be(c.k.D, size))}), Kind: "jwk-private", Key: key})
		add(Encoding{Name: c.name + "/scalar-be", Data: be(c.k.D, size), Kind: "ec-scalar-be", Key: key, Align: true})
		add(Encoding{Name: c.name + "/scalar-le64", Data: le(c.k.D, (size+7)&^7), Kind: "ec-scalar-le64", Key: key, Align: true})
		if c.name == "p256" {
			blk, err := ssh.MarshalPrivateKey(c.k, "")
			must(err)
			add(Encoding{Name: c.name + "/pem-openssh", Data: pem.EncodeToMemory(blk), Kind: "pem-openssh", Key: key})
		}
	}

	// Ed25519.
	seed := k.Ed.Seed()
	p8, err := x509.MarshalPKCS8PrivateKey(k.Ed)
	must(err)
	sshEd, err := ssh.MarshalPrivateKey(k.Ed, "ed")
	must(err)
	h := sha512.Sum512(seed)
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	add(Encoding{Name: "ed25519/pem-pkcs8", Data: pemOf("PRIVATE KEY", p8, nil), Kind: "pem-pkcs8", Key: "ed.pem"})
	add(Encoding{Name: "ed25519/der-pkcs8", Data: p8, Kind: "der-pkcs8", Key: "ed.pem"})
	add(Encoding{Name: "ed25519/pem-openssh", Data: pem.EncodeToMemory(sshEd), Kind: "pem-openssh", Key: "ed.pem"})
	add(Encoding{Name: "ed25519/openssh-binary", Data: sshEd.Bytes, Kind: "openssh-binary", Key: "ed.pem"})
	add(Encoding{Name: "ed25519/jwk", Data: jwkJSON(map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64u(k.Ed[32:]), "d": b64u(seed)}), Kind: "jwk-private", Key: "ed.pem"})
	add(Encoding{Name: "ed25519/seed", Data: seed, Kind: "ed25519-seed", Key: "ed.pem", Align: true})
	add(Encoding{Name: "ed25519/seed-pub", Data: []byte(k.Ed), Kind: "ed25519-seed-pub", Key: "ed.pem"})
	add(Encoding{Name: "ed25519/expanded", Data: h[:], Kind: "ed25519-expanded", Key: "ed.pem", Align: true})

	// A key that is not configured: found by format, attributed to nothing.
	add(Encoding{Name: "other/pem-pkcs1", Data: pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.Other), nil), Kind: "pem-rsa-pkcs1"})
	jwks := []byte(`{"keys":[{"kty":"oct","k":"` + b64u([]byte("0123456789abcdef0123456789abcdef")) + `","kid":"hmac"}]}`)
	add(Encoding{Name: "oct/jwks", Data: jwks, Kind: "jwk-private", Off: len(`{"keys":[`), Length: len(jwks) - len(`{"keys":[`) - len(`]}`)})
	return out
}

// Filler returns n bytes resembling process memory: zero runs, pointers, small integers, text,
// and, if random is set, stretches of random bytes (about a fifth).
func Filler(rng *mrand.Rand, n int, random bool) []byte {
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

// PrivatePEM is priv as a PKCS #8 "PRIVATE KEY" PEM block (a key file a signer loads).
func PrivatePEM(priv any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	must(err)
	return pemOf("PRIVATE KEY", der, nil)
}

// PublicPEM is pub as a PKIX "PUBLIC KEY" PEM block (a policy's public_keys file).
func PublicPEM(pub any) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	must(err)
	return pemOf("PUBLIC KEY", der, nil)
}
