package detect

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"os"
	"slices"
	"strings"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
	"golang.org/x/crypto/ssh"
)

// Key fingerprints: keyed, truncated digests of every encoding of a private key's secret material,
// so a scanner that holds no private key (and does no public-key arithmetic) finds the key
// wherever it lands. See the package doc ("Fingerprints") and README.md for what they reveal.
//
// Each encoding E (bytes as they sit in memory: a big- or little-endian integer, a seed, a DER
// body, a PEM text, a JWK member's base64url text) of length L >= FingerprintAnchor gives one entry:
//
//	anchor = mix_K1(E[0:32]) mod 2^16   (a 16-bit prefilter over the first 32 bytes)
//	tag    = HMAC-SHA256_K2(E)[0:16]    (128-bit confirmation over all of E)
//
// where K1 and K2 are derived from the per-deployment key. A scanner hashes the 32 bytes at every
// aligned offset with mix (two 64x64-bit multiplications), looks the 16 bits up in a bitmap, and
// computes the HMAC only for the few offsets that pass (about n/65536 of them for n entries).

// FingerprintFormat names the file format written by WriteFingerprints.
const FingerprintFormat = "keyguard-fingerprints/1"

// FingerprintAnchor is the number of leading bytes of an encoding the prefilter hashes; shorter
// encodings get no fingerprint.
const FingerprintAnchor = 32

// DeploymentKeySize is the size of a per-deployment fingerprint key.
const DeploymentKeySize = 32

const tagSize = 16

// FingerprintSet is a per-deployment set of key fingerprints, as stored in a fingerprint file.
type FingerprintSet struct {
	Format string `json:"format"`
	// DeploymentKey keys every fingerprint. Scanners need it; it is not a secret of the signing
	// key (see README.md): it makes fingerprints of one deployment useless in another.
	DeploymentKey []byte `json:"deployment_key"`
	// Keys are the public keys the fingerprints belong to; PEM/DER/OpenSSH/JWK findings are
	// attributed to them by public key.
	Keys    []FingerprintKey   `json:"keys"`
	Entries []FingerprintEntry `json:"fingerprints"`
}

// FingerprintKey is one fingerprinted key's public half.
type FingerprintKey struct {
	Name string `json:"name"`
	// PublicKey is the PKIX (SubjectPublicKeyInfo) DER of the public key.
	PublicKey []byte `json:"public_key"`
}

// FingerprintEntry is one encoding of one key.
type FingerprintEntry struct {
	Key    string `json:"key"`
	Kind   string `json:"kind"`
	Length int    `json:"length"`
	// Skip is the number of leading bytes of the encoding that are not reported as key material
	// (the zero padding of a fixed-width big-endian buffer).
	Skip   int    `json:"skip,omitempty"`
	Anchor uint16 `json:"anchor"`
	Tag    []byte `json:"tag"`
}

// NewDeploymentKey returns a fresh random deployment key.
func NewDeploymentKey() []byte {
	k := make([]byte, DeploymentKeySize)
	_, _ = rand.Read(k) // crypto/rand.Read never fails
	return k
}

// fpKeys are the keys derived from a deployment key.
type fpKeys struct {
	mix [4]uint64
	tag []byte
}

func deriveFPKeys(deploy []byte) fpKeys {
	sub := func(label string) []byte {
		m := hmac.New(sha256.New, deploy)
		m.Write([]byte(label))
		return m.Sum(nil)
	}
	var k fpKeys
	mk := sub("keyguard fingerprint v1 anchor")
	for i := range k.mix {
		k.mix[i] = binary.LittleEndian.Uint64(mk[8*i:])
	}
	k.tag = sub("keyguard fingerprint v1 tag")
	return k
}

func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// anchorOf is the 16-bit prefilter of the first FingerprintAnchor bytes of b.
func (k *fpKeys) anchorOf(b []byte) uint16 {
	b = b[:FingerprintAnchor:FingerprintAnchor]
	h := mum(binary.LittleEndian.Uint64(b)^k.mix[0], binary.LittleEndian.Uint64(b[8:])^k.mix[1]) ^
		mum(binary.LittleEndian.Uint64(b[16:])^k.mix[2], binary.LittleEndian.Uint64(b[24:])^k.mix[3])
	h ^= h >> 32
	h ^= h >> 16
	return uint16(h)
}

// Fingerprinter derives fingerprint sets under one deployment key.
type Fingerprinter struct {
	set  FingerprintSet
	keys fpKeys
}

// NewFingerprinter returns a Fingerprinter for deploy (DeploymentKeySize bytes).
func NewFingerprinter(deploy []byte) (*Fingerprinter, error) {
	if len(deploy) != DeploymentKeySize {
		return nil, fmt.Errorf("detect: deployment key is %d bytes, want %d (generate one with keyguard fingerprint -new-deployment-key)", len(deploy), DeploymentKeySize)
	}
	return &Fingerprinter{set: FingerprintSet{Format: FingerprintFormat, DeploymentKey: slices.Clone(deploy)}, keys: deriveFPKeys(deploy)}, nil
}

// Set returns the fingerprints added so far.
func (f *Fingerprinter) Set() *FingerprintSet {
	s := f.set
	s.Keys = slices.Clone(s.Keys)
	s.Entries = slices.Clone(s.Entries)
	return &s
}

// AddKeyFile parses every private key in a key file (PEM: PKCS#1, PKCS#8, SEC1, OpenSSH; DER;
// a JWK or JWKS with private members) and adds their fingerprints under name (name#N when the
// file holds more than one key). It returns the number of keys added.
func (f *Fingerprinter) AddKeyFile(name string, data []byte) (int, error) {
	privs, err := ParsePrivateKeys(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	for i, p := range privs {
		n := name
		if len(privs) > 1 {
			n = fmt.Sprintf("%s#%d", name, i+1)
		}
		if err := f.AddKey(n, p); err != nil {
			return i, fmt.Errorf("%s: %w", n, err)
		}
	}
	return len(privs), nil
}

// AddKey adds the fingerprints of every encoding of priv (*rsa.PrivateKey, *ecdsa.PrivateKey,
// ed25519.PrivateKey) under name.
func (f *Fingerprinter) AddKey(name string, priv crypto.PrivateKey) error {
	encs, pub, err := secretEncodings(priv)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("marshal public key: %w", err)
	}
	f.set.Keys = append(f.set.Keys, FingerprintKey{Name: name, PublicKey: der})
	seen := map[string]bool{}
	for _, e := range encs {
		if len(e.data) < FingerprintAnchor || len(e.data) > MaxMatch || seen[string(e.data)] {
			continue
		}
		seen[string(e.data)] = true
		m := hmac.New(sha256.New, f.keys.tag)
		m.Write(e.data)
		f.set.Entries = append(f.set.Entries, FingerprintEntry{
			Key: name, Kind: e.kind, Length: len(e.data), Skip: e.skip,
			Anchor: f.keys.anchorOf(e.data), Tag: m.Sum(nil)[:tagSize],
		})
	}
	return nil
}

// encoding is one in-memory form of a key's secret material.
type encoding struct {
	kind string
	data []byte
	skip int
}

// secretEncodings lists the encodings of priv the detector knows, and priv's public key.
func secretEncodings(priv crypto.PrivateKey) ([]encoding, crypto.PublicKey, error) {
	var out []encoding
	add := func(kind string, data []byte) { out = append(out, encoding{kind: kind, data: data}) }
	ints := func(x *big.Int, width int, kindBE, kindLE string) {
		if x == nil || x.Sign() <= 0 {
			return
		}
		add(kindBE, x.FillBytes(make([]byte, max(width, (x.BitLen()+7)/8))))
		add(kindLE, leLimbs(x))
	}
	formats := func(kindDER, kindPEM, label string, der []byte) {
		add(kindDER, der)
		add(kindPEM, bytes.TrimSuffix(pem.EncodeToMemory(&pem.Block{Type: label, Bytes: der}), []byte("\n")))
	}
	jwk := func(x []byte) { add(KindJWK, []byte(base64.RawURLEncoding.EncodeToString(x))) }
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if len(k.Primes) != 2 {
			return nil, nil, errors.New("RSA keys with more than two primes are not supported")
		}
		k.Precompute()
		p, q := k.Primes[0], k.Primes[1]
		for _, x := range []*big.Int{p, q} {
			ints(x, (x.BitLen()+7)/8, KindRSAPrimeBE, KindRSAPrimeLE)
			jwk(x.Bytes())
		}
		for _, d := range rsaDs(k) {
			// d as math/big Bytes() gives it, possibly right-aligned in a wider zeroed buffer.
			db := d.Bytes()
			for z := range 8 {
				out = append(out, encoding{kind: KindRSADBE, data: append(make([]byte, z), db...), skip: z})
			}
			add(KindRSADLE, leLimbs(d))
			jwk(db)
		}
		for _, x := range []*big.Int{k.Precomputed.Dp, k.Precomputed.Dq, k.Precomputed.Qinv} {
			ints(x, 0, KindRSACRTBE, KindRSACRTLE)
			jwk(x.Bytes())
		}
		formats(KindDERRSA, KindPEMRSA, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
		if der, err := x509.MarshalPKCS8PrivateKey(k); err == nil {
			formats(KindDERPKCS8, KindPEMPKCS8, "PRIVATE KEY", der)
		}
		return out, &k.PublicKey, nil
	case *ecdsa.PrivateKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		ints(k.D, size, KindECScalarBE, KindECScalarLE)
		jwk(k.D.FillBytes(make([]byte, size)))
		if der, err := x509.MarshalECPrivateKey(k); err == nil {
			formats(KindDEREC, KindPEMEC, "EC PRIVATE KEY", der)
		}
		if der, err := x509.MarshalPKCS8PrivateKey(k); err == nil {
			formats(KindDERPKCS8, KindPEMPKCS8, "PRIVATE KEY", der)
		}
		return out, &k.PublicKey, nil
	case *ed25519.PrivateKey:
		return secretEncodings(*k)
	case ed25519.PrivateKey:
		seed := k.Seed()
		add(KindEd25519Seed, seed)
		add(KindEd25519SeedPub, slices.Clone(k))
		h := sha512.Sum512(seed)
		h[0] &= 248
		h[31] &= 127
		h[31] |= 64
		add(KindEd25519Expanded, h[:])
		jwk(seed)
		if der, err := x509.MarshalPKCS8PrivateKey(k); err == nil {
			formats(KindDERPKCS8, KindPEMPKCS8, "PRIVATE KEY", der)
		}
		return out, k.Public(), nil
	}
	return nil, nil, fmt.Errorf("unsupported private key type %T (keyguard fingerprints RSA, ECDSA P-256/P-384/P-521 and Ed25519 keys)", priv)
}

// rsaDs returns d as given and the other common variant (e⁻¹ mod λ(N) or mod φ(N)).
func rsaDs(k *rsa.PrivateKey) []*big.Int {
	one := big.NewInt(1)
	p1 := new(big.Int).Sub(k.Primes[0], one)
	q1 := new(big.Int).Sub(k.Primes[1], one)
	phi := new(big.Int).Mul(p1, q1)
	lambda := new(big.Int).Div(phi, new(big.Int).GCD(nil, nil, p1, q1))
	e := big.NewInt(int64(k.E))
	out := []*big.Int{k.D}
	for _, m := range []*big.Int{phi, lambda} {
		if d := new(big.Int).ModInverse(e, m); d != nil && d.Cmp(k.D) != 0 && (len(out) < 2 || d.Cmp(out[1]) != 0) {
			out = append(out, d)
		}
	}
	return out
}

// leLimbs returns x as 64-bit little-endian limbs (math/big, OpenSSL BIGNUM on 64-bit hosts).
func leLimbs(x *big.Int) []byte {
	be := x.Bytes()
	n := (len(be) + 7) &^ 7
	out := make([]byte, n)
	for i, c := range be {
		out[len(be)-1-i] = c
	}
	return out
}

// ParsePrivateKeys returns every private key in data: PEM blocks (PKCS#1, PKCS#8, SEC1, OpenSSH),
// a DER PKCS#8/PKCS#1/SEC1 key, or a JWK/JWKS with private members. Encrypted keys are an error.
func ParsePrivateKeys(data []byte) ([]crypto.PrivateKey, error) {
	var out []crypto.PrivateKey
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if !strings.HasSuffix(blk.Type, "PRIVATE KEY") {
			continue
		}
		k, err := ssh.ParseRawPrivateKey(pem.EncodeToMemory(blk))
		if err != nil {
			return nil, fmt.Errorf("parse %s PEM block: %w (encrypted keys must be decrypted first)", blk.Type, err)
		}
		out = append(out, k)
	}
	if len(out) > 0 {
		return out, nil
	}
	if k, err := x509.ParsePKCS8PrivateKey(data); err == nil {
		return []crypto.PrivateKey{k}, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(data); err == nil {
		return []crypto.PrivateKey{k}, nil
	}
	if k, err := x509.ParseECPrivateKey(data); err == nil {
		return []crypto.PrivateKey{k}, nil
	}
	if ks, err := privateFromJWKs(data); err == nil && len(ks) > 0 {
		return ks, nil
	}
	return nil, errors.New("no private key found (give PEM, DER or JWK private key files)")
}

func privateFromJWKs(data []byte) ([]crypto.PrivateKey, error) {
	var set struct {
		Keys []pubkeys.JWK `json:"keys"`
	}
	var one pubkeys.JWK
	var list []pubkeys.JWK
	if err := json.Unmarshal(data, &set); err == nil && len(set.Keys) > 0 {
		list = set.Keys
	} else if err := json.Unmarshal(data, &one); err == nil && one.Kty != "" {
		list = []pubkeys.JWK{one}
	} else {
		return nil, errors.New("not a JWK")
	}
	var out []crypto.PrivateKey
	for _, j := range list {
		k, err := privateFromJWK(&j)
		if err != nil {
			return nil, err
		}
		if k != nil {
			out = append(out, k)
		}
	}
	return out, nil
}

func privateFromJWK(j *pubkeys.JWK) (crypto.PrivateKey, error) {
	b := func(s string) []byte {
		v, _ := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		return v
	}
	n := func(s string) *big.Int { return new(big.Int).SetBytes(b(s)) }
	if j.D == "" {
		return nil, nil
	}
	pub, err := pubkeys.PublicFromJWK(j)
	if err != nil {
		return nil, err
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		k := &rsa.PrivateKey{PublicKey: *p, D: n(j.D), Primes: []*big.Int{n(j.P), n(j.Q)}}
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("JWK RSA key: %w", err)
		}
		return k, nil
	case *ecdsa.PublicKey:
		return ecdsa.ParseRawPrivateKey(p.Curve, b(j.D))
	case ed25519.PublicKey:
		seed := b(j.D)
		if len(seed) != ed25519.SeedSize {
			return nil, errors.New("JWK Ed25519 key: d is not a 32-byte seed")
		}
		return ed25519.NewKeyFromSeed(seed), nil
	}
	return nil, fmt.Errorf("JWK key type %T not supported", pub)
}

// WriteFingerprints writes set to path (mode 0600).
func WriteFingerprints(path string, set *FingerprintSet) error {
	b, err := json.MarshalIndent(set, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// LoadFingerprints reads a fingerprint file written by WriteFingerprints.
func LoadFingerprints(path string) (*FingerprintSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseFingerprints(b)
}

// ParseFingerprints parses and checks a fingerprint file's content.
func ParseFingerprints(b []byte) (*FingerprintSet, error) {
	var s FingerprintSet
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("fingerprint file: %w", err)
	}
	if s.Format != FingerprintFormat {
		return nil, fmt.Errorf("fingerprint file: format %q, want %q (write it with keyguard fingerprint)", s.Format, FingerprintFormat)
	}
	return &s, s.check()
}

var errDeployment = errors.New("fingerprints: the sets are keyed with different deployment keys (fingerprint every key of a deployment with one key)")

func errMalformed(kind, key string) error {
	return fmt.Errorf("fingerprints: entry (%s of %s) is malformed", kind, key)
}

// check validates the deployment key and every entry.
func (s *FingerprintSet) check() error {
	if len(s.DeploymentKey) != DeploymentKeySize {
		return fmt.Errorf("fingerprints: deployment key is %d bytes, want %d", len(s.DeploymentKey), DeploymentKeySize)
	}
	for _, e := range s.Entries {
		if e.Length < FingerprintAnchor || e.Length > MaxMatch || e.Skip < 0 || e.Skip >= e.Length || len(e.Tag) != tagSize {
			return errMalformed(e.Kind, e.Key)
		}
	}
	return nil
}

// PublicKeys returns the public keys of the fingerprinted keys, named as in the fingerprints.
func (s *FingerprintSet) PublicKeys() ([]pubkeys.Key, error) {
	var out []pubkeys.Key
	for _, k := range s.Keys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("fingerprint file: public key of %s: %w", k.Name, err)
		}
		sum := sha256.Sum256(k.PublicKey)
		out = append(out, pubkeys.Key{Name: k.Name, Fingerprint: fmt.Sprintf("SHA256:%x", sum), Public: pub})
	}
	return out, nil
}
