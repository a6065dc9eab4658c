package detect

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"math/big"

	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// Structural parsers for private-key encodings. They accept exactly one complete ASN.1 element
// (no trailing bytes) whose fields have the types and ranges the standard requires; that is what
// keeps random bytes and ordinary ASN.1 (certificates, public keys) from matching. They return the
// public key when it can be derived, for attribution to configured keys.

var (
	oidRSA     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidEC      = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidX25519  = asn1.ObjectIdentifier{1, 3, 101, 110}
	oidEd448   = asn1.ObjectIdentifier{1, 3, 101, 113}
	oidX448    = asn1.ObjectIdentifier{1, 3, 101, 111}
	oidDSA     = asn1.ObjectIdentifier{1, 2, 840, 10040, 4, 1}
	oidP256    = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384    = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521    = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	oidP224    = asn1.ObjectIdentifier{1, 3, 132, 0, 33}
	oidK256    = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
)

type pkcs1Key struct {
	Version int
	N, E    *big.Int
	D, P, Q *big.Int
	Dp, Dq  *big.Int
	Qinv    *big.Int
	Extra   []asn1.RawValue `asn1:"optional"`
}

// privParts is what a parsed private key teaches the stream: its public key (for attribution)
// and the secret values to search for exactly in the rest of the stream (see learn.go).
type privParts struct {
	pub     crypto.PublicKey
	rsa     *pkcs1Key // RSA components
	scalar  []byte    // EC private scalar, big-endian
	edSeed  []byte    // Ed25519 seed
	present bool
}

// parsePKCS1 parses an RSAPrivateKey (RFC 8017 A.1.2).
func parsePKCS1(der []byte) (crypto.PublicKey, bool) {
	pp, ok := parsePKCS1Parts(der)
	return pp.pub, ok
}

func parsePKCS1Parts(der []byte) (privParts, bool) {
	var k pkcs1Key
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || len(rest) != 0 || k.Version < 0 || k.Version > 1 {
		return privParts{}, false
	}
	one := big.NewInt(1)
	if k.N.Sign() <= 0 || k.N.BitLen() < 256 || k.D.Sign() <= 0 || k.P.Cmp(one) <= 0 || k.Q.Cmp(one) <= 0 || k.E.Sign() <= 0 {
		return privParts{}, false
	}
	pp := privParts{rsa: &k, present: true}
	if !k.E.IsInt64() || k.E.Int64() > 1<<31-1 {
		pp.pub = &rsa.PublicKey{N: k.N}
	} else {
		pp.pub = &rsa.PublicKey{N: k.N, E: int(k.E.Int64())}
	}
	return pp, true
}

type pkcs8Key struct {
	Version    int
	Algo       pkix.AlgorithmIdentifier
	PrivateKey []byte
	Attrs      asn1.RawValue `asn1:"optional,tag:0"`
	Public     asn1.RawValue `asn1:"optional,tag:1"`
}

// parsePKCS8 parses a PrivateKeyInfo / OneAsymmetricKey (RFC 5208, RFC 5958).
func parsePKCS8(der []byte) (crypto.PublicKey, bool) {
	pp, ok := parsePKCS8Parts(der)
	return pp.pub, ok
}

func parsePKCS8Parts(der []byte) (privParts, bool) {
	var k pkcs8Key
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || len(rest) != 0 || k.Version < 0 || k.Version > 1 || len(k.PrivateKey) == 0 {
		return privParts{}, false
	}
	switch {
	case k.Algo.Algorithm.Equal(oidRSA):
		return parsePKCS1Parts(k.PrivateKey)
	case k.Algo.Algorithm.Equal(oidEC):
		var curve asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(k.Algo.Parameters.FullBytes, &curve); err != nil {
			return privParts{}, false
		}
		return parseSEC1Parts(k.PrivateKey, curve)
	case k.Algo.Algorithm.Equal(oidEd25519):
		var seed []byte
		if rest, err := asn1.Unmarshal(k.PrivateKey, &seed); err != nil || len(rest) != 0 || len(seed) != ed25519.SeedSize {
			return privParts{}, false
		}
		return privParts{pub: ed25519.NewKeyFromSeed(seed).Public(), edSeed: seed, present: true}, true
	case k.Algo.Algorithm.Equal(oidX25519), k.Algo.Algorithm.Equal(oidEd448), k.Algo.Algorithm.Equal(oidX448), k.Algo.Algorithm.Equal(oidDSA):
		return privParts{present: true}, true // a private key of a type keyguard cannot attribute
	}
	return privParts{}, false
}

type sec1Key struct {
	Version    int
	PrivateKey []byte
	Curve      asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
	Public     asn1.BitString        `asn1:"optional,explicit,tag:1"`
}

// parseSEC1 parses an ECPrivateKey (RFC 5915). curve, if not nil, is the curve named outside it.
func parseSEC1(der []byte, curve asn1.ObjectIdentifier) (crypto.PublicKey, bool) {
	pp, ok := parseSEC1Parts(der, curve)
	return pp.pub, ok
}

func parseSEC1Parts(der []byte, curve asn1.ObjectIdentifier) (privParts, bool) {
	var k sec1Key
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || len(rest) != 0 || k.Version != 1 || len(k.PrivateKey) < 20 || len(k.PrivateKey) > 66 {
		return privParts{}, false
	}
	pp := privParts{scalar: k.PrivateKey, present: true}
	pub, _ := sec1Public(&k, curve)
	pp.pub = pub
	return pp, true
}

func sec1Public(k *sec1Key, curve asn1.ObjectIdentifier) (crypto.PublicKey, bool) {
	if k.Curve != nil {
		curve = k.Curve
	}
	var c elliptic.Curve
	var ec ecdh.Curve
	switch {
	case curve.Equal(oidP256):
		c, ec = elliptic.P256(), ecdh.P256()
	case curve.Equal(oidP384):
		c, ec = elliptic.P384(), ecdh.P384()
	case curve.Equal(oidP521):
		c, ec = elliptic.P521(), ecdh.P521()
	case curve.Equal(oidP224), curve.Equal(oidK256), curve == nil:
		return nil, true // valid SEC1 structure, curve keyguard does not attribute
	default:
		return nil, true
	}
	if len(k.Public.Bytes) > 0 {
		if pub, err := ecdsa.ParseUncompressedPublicKey(c, k.Public.Bytes); err == nil {
			return pub, true
		}
	}
	size := (c.Params().BitSize + 7) / 8
	if len(k.PrivateKey) > size {
		return nil, true
	}
	scalar := make([]byte, size)
	copy(scalar[size-len(k.PrivateKey):], k.PrivateKey)
	priv, err := ec.NewPrivateKey(scalar)
	if err != nil {
		return nil, true
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(c, priv.PublicKey().Bytes())
	if err != nil {
		return nil, true
	}
	return pub, true
}

type encryptedPKCS8 struct {
	Algo pkix.AlgorithmIdentifier
	Data []byte
}

// parseEncryptedPKCS8 parses an EncryptedPrivateKeyInfo (RFC 5958 3) with a PKCS#5 or PKCS#12
// password-based encryption algorithm.
func parseEncryptedPKCS8(der []byte) bool {
	var k encryptedPKCS8
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || len(rest) != 0 || len(k.Data) < 32 {
		return false
	}
	a := k.Algo.Algorithm
	return len(a) >= 7 && a[0] == 1 && a[1] == 2 && a[2] == 840 && a[3] == 113549 && a[4] == 1 && (a[5] == 5 || a[5] == 12)
}

var opensshMagic = []byte("openssh-key-v1\x00")

// parseOpenSSH parses the binary openssh-key-v1 container (PROTOCOL.key) at the start of b and
// returns its length and first public key. b may extend past the container.
func parseOpenSSH(b []byte) (n int, pub crypto.PublicKey, ok bool) {
	if len(b) < len(opensshMagic) || string(b[:len(opensshMagic)]) != string(opensshMagic) {
		return 0, nil, false
	}
	off := len(opensshMagic)
	str := func(max int) []byte {
		if off < 0 || len(b)-off < 4 {
			off = -1
			return nil
		}
		l := int(binary.BigEndian.Uint32(b[off:]))
		if l > max || l > len(b)-off-4 {
			off = -1
			return nil
		}
		s := b[off+4 : off+4+l]
		off += 4 + l
		return s
	}
	cipher := str(64)
	kdf := str(64)
	_ = str(1024)
	if off < 0 || len(cipher) == 0 || len(kdf) == 0 || !printable(cipher) || !printable(kdf) || len(b)-off < 4 {
		return 0, nil, false
	}
	nkeys := binary.BigEndian.Uint32(b[off:])
	off += 4
	if nkeys < 1 || nkeys > 16 {
		return 0, nil, false
	}
	var first []byte
	for i := uint32(0); i < nkeys; i++ {
		p := str(16 << 10)
		if i == 0 {
			first = p
		}
	}
	priv := str(MaxMatch)
	if off < 0 || len(priv) < 8 {
		return 0, nil, false
	}
	if pk, err := pubkeys.ParseSSHPublicKey(first); err == nil {
		pub = pk
	}
	return off, pub, true
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}
