// Package pubkeys loads the public keys whose private material keyguard must find: PEM public keys
// (PKIX "PUBLIC KEY" and PKCS#1 "RSA PUBLIC KEY"), X.509 certificates (PEM or DER), JWK and JWKS
// JSON documents, and OpenSSH public-key lines. Public keys are all the agent ever needs; a file that
// holds private key material is refused, so a policy cannot quietly spread a private key.
//
// Supported algorithms: RSA, ECDSA on P-256, P-384 and P-521, and Ed25519.
package pubkeys

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

// Key is one configured public key.
type Key struct {
	// Name says where the key came from: the file path, followed by "#kid" or "#N" (1-based) when
	// the file holds more than one key. It is what detector findings report as their Key.
	Name string
	// Fingerprint is "SHA256:" and the hex SHA-256 of the key's PKIX (SubjectPublicKeyInfo) DER.
	Fingerprint string
	// Public is *rsa.PublicKey, *ecdsa.PublicKey (P-256, P-384, P-521) or ed25519.PublicKey.
	Public crypto.PublicKey
}

// Load reads every path and returns all the public keys they hold, in order. A path that cannot be
// read, holds no public key, holds an unsupported key type, or holds private key material is an error
// naming the path.
func Load(paths ...string) ([]Key, error) {
	var all []Key
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read public keys: %w (check the path given for the public key file)", err)
		}
		keys, err := Parse(p, data)
		if err != nil {
			return nil, err
		}
		all = append(all, keys...)
	}
	return all, nil
}

// Parse returns the public keys held in data, naming them after name (see Key.Name).
func Parse(name string, data []byte) ([]Key, error) {
	type named struct {
		id  string
		pub crypto.PublicKey
	}
	var found []named
	trimmed := bytes.TrimSpace(data)
	switch {
	case bytes.Contains(data, []byte("-----BEGIN ")):
		rest := data
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			if strings.Contains(blk.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("%s: holds a private key (%s); give keyguard only the public key, e.g. `openssl pkey -in KEY -pubout`", name, blk.Type)
			}
			var pub crypto.PublicKey
			var err error
			switch blk.Type {
			case "PUBLIC KEY":
				pub, err = x509.ParsePKIXPublicKey(blk.Bytes)
			case "RSA PUBLIC KEY":
				pub, err = x509.ParsePKCS1PublicKey(blk.Bytes)
			case "CERTIFICATE":
				var c *x509.Certificate
				c, err = x509.ParseCertificate(blk.Bytes)
				if err == nil {
					pub = c.PublicKey
				}
			default:
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: PEM block %q: %w", name, blk.Type, err)
			}
			found = append(found, named{pub: pub})
		}
	case len(trimmed) > 0 && trimmed[0] == '{':
		keys, err := parseJWKSet(trimmed)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, k := range keys {
			found = append(found, named{id: k.id, pub: k.pub})
		}
	case bytes.HasPrefix(trimmed, []byte("ssh-")) || bytes.HasPrefix(trimmed, []byte("ecdsa-sha2-")):
		for _, line := range bytes.Split(trimmed, []byte("\n")) {
			f := bytes.Fields(line)
			if len(f) < 2 || bytes.HasPrefix(f[0], []byte("#")) {
				continue
			}
			blob, err := base64.StdEncoding.DecodeString(string(f[1]))
			if err != nil {
				return nil, fmt.Errorf("%s: OpenSSH public key: %w", name, err)
			}
			pub, err := ParseSSHPublicKey(blob)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			found = append(found, named{pub: pub})
		}
	default:
		if pub, err := x509.ParsePKIXPublicKey(data); err == nil {
			found = append(found, named{pub: pub})
		} else if c, err := x509.ParseCertificate(data); err == nil {
			found = append(found, named{pub: c.PublicKey})
		}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%s: no public key found (expected PEM PUBLIC KEY/CERTIFICATE, DER, JWK/JWKS JSON or an OpenSSH public key line)", name)
	}
	out := make([]Key, 0, len(found))
	for i, f := range found {
		if err := supported(f.pub); err != nil {
			return nil, fmt.Errorf("%s: key %d: %w", name, i+1, err)
		}
		n := name
		switch {
		case f.id != "":
			n = name + "#" + f.id
		case len(found) > 1:
			n = fmt.Sprintf("%s#%d", name, i+1)
		}
		fp, err := Fingerprint(f.pub)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, Key{Name: n, Fingerprint: fp, Public: f.pub})
	}
	return out, nil
}

func supported(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < 512 {
			return errors.New("RSA modulus missing or shorter than 512 bits")
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("unsupported elliptic curve %s (P-256, P-384 and P-521 are supported)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("Ed25519 public key of wrong length")
		}
		return nil
	}
	return fmt.Errorf("unsupported public key type %T (RSA, ECDSA P-256/384/521 and Ed25519 are supported)", pub)
}

// Fingerprint returns "SHA256:" and the hex SHA-256 of pub's PKIX DER encoding.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("fingerprint public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + hex.EncodeToString(sum[:]), nil
}

// Equal reports whether a and b are the same public key.
func Equal(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := a.(equaler); ok && b != nil {
		return e.Equal(b)
	}
	return false
}

// Match returns the name of the key in keys equal to pub, or "".
func Match(keys []Key, pub crypto.PublicKey) string {
	if pub == nil {
		return ""
	}
	for _, k := range keys {
		if Equal(k.Public, pub) {
			return k.Name
		}
	}
	return ""
}

// JWK is the subset of RFC 7517/7518/8037 members keyguard reads.
type JWK struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
	P   string `json:"p"`
	Q   string `json:"q"`
	DP  string `json:"dp"`
	DQ  string `json:"dq"`
	QI  string `json:"qi"`
	K   string `json:"k"`
	Oth []any  `json:"oth"`
}

// HasPrivate reports whether the JWK carries private members ("d", "p", "q", "dp", "dq", "qi",
// "oth", or "k" of a symmetric key).
func (j *JWK) HasPrivate() bool {
	return j.D != "" || j.P != "" || j.Q != "" || j.DP != "" || j.DQ != "" || j.QI != "" || len(j.Oth) > 0 || j.K != ""
}

func b64url(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	return base64.RawURLEncoding.DecodeString(s)
}

// PublicFromJWK returns the public key a JWK describes. For an OKP or EC JWK without "x" but with
// "d", the public key is derived from the private member.
func PublicFromJWK(j *JWK) (crypto.PublicKey, error) {
	switch j.Kty {
	case "RSA":
		n, err1 := b64url(j.N)
		e, err2 := b64url(j.E)
		if err := errors.Join(err1, err2); err != nil || len(n) == 0 || len(e) == 0 || len(e) > 8 {
			return nil, fmt.Errorf("JWK RSA key: bad or missing n/e: %w", err)
		}
		var ev uint64
		for _, b := range e {
			ev = ev<<8 | uint64(b)
		}
		if ev > 1<<31-1 {
			return nil, errors.New("JWK RSA key: exponent too large")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(ev)}, nil
	case "EC":
		var c elliptic.Curve
		switch j.Crv {
		case "P-256":
			c = elliptic.P256()
		case "P-384":
			c = elliptic.P384()
		case "P-521":
			c = elliptic.P521()
		default:
			return nil, fmt.Errorf("JWK EC key: unsupported curve %q", j.Crv)
		}
		x, err1 := b64url(j.X)
		y, err2 := b64url(j.Y)
		if err := errors.Join(err1, err2); err != nil || len(x) == 0 || len(y) == 0 {
			return nil, fmt.Errorf("JWK EC key: bad or missing x/y: %w", err)
		}
		size := (c.Params().BitSize + 7) / 8
		pt := make([]byte, 1+2*size)
		pt[0] = 4
		if len(x) > size || len(y) > size {
			return nil, errors.New("JWK EC key: coordinate too long")
		}
		copy(pt[1+size-len(x):], x)
		copy(pt[1+2*size-len(y):], y)
		return ecdsa.ParseUncompressedPublicKey(c, pt)
	case "OKP":
		if j.Crv != "Ed25519" {
			return nil, fmt.Errorf("JWK OKP key: unsupported curve %q", j.Crv)
		}
		if j.X == "" && j.D != "" {
			d, err := b64url(j.D)
			if err != nil || len(d) != ed25519.SeedSize {
				return nil, errors.New("JWK Ed25519 key: bad d")
			}
			return ed25519.NewKeyFromSeed(d).Public(), nil
		}
		x, err := b64url(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("JWK Ed25519 key: bad x")
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, fmt.Errorf("JWK: unsupported kty %q", j.Kty)
}

type jwkEntry struct {
	id  string
	pub crypto.PublicKey
}

func parseJWKSet(data []byte) ([]jwkEntry, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWK/JWKS: %w", err)
	}
	raws := set.Keys
	if raws == nil {
		raws = []json.RawMessage{data}
	}
	var out []jwkEntry
	for i, r := range raws {
		var j JWK
		if err := json.Unmarshal(r, &j); err != nil {
			return nil, fmt.Errorf("JWK %d: %w", i+1, err)
		}
		if j.HasPrivate() {
			return nil, fmt.Errorf("JWK %d holds private members; give keyguard only the public JWKS", i+1)
		}
		if j.Kty == "oct" {
			return nil, fmt.Errorf("JWK %d is a symmetric (oct) key; only public keys can be configured", i+1)
		}
		pub, err := PublicFromJWK(&j)
		if err != nil {
			return nil, fmt.Errorf("JWK %d: %w", i+1, err)
		}
		out = append(out, jwkEntry{id: j.Kid, pub: pub})
	}
	return out, nil
}

// ParseSSHPublicKey parses an SSH wire-format public key blob (RFC 4253 6.6, RFC 5656, RFC 8709):
// ssh-rsa, ecdsa-sha2-nistp256/384/521 and ssh-ed25519.
func ParseSSHPublicKey(blob []byte) (crypto.PublicKey, error) {
	r := sshReader{b: blob}
	typ := string(r.str())
	switch typ {
	case "ssh-rsa":
		e := r.str()
		n := r.str()
		if r.bad || len(e) == 0 || len(e) > 4 || len(n) == 0 {
			return nil, errors.New("ssh-rsa public key: malformed")
		}
		var ev int
		for _, b := range e {
			ev = ev<<8 | int(b)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: ev}, nil
	case "ssh-ed25519":
		k := r.str()
		if r.bad || len(k) != ed25519.PublicKeySize {
			return nil, errors.New("ssh-ed25519 public key: malformed")
		}
		return ed25519.PublicKey(bytes.Clone(k)), nil
	case "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521":
		_ = r.str()
		pt := r.str()
		if r.bad {
			return nil, errors.New(typ + " public key: malformed")
		}
		c := map[string]elliptic.Curve{"ecdsa-sha2-nistp256": elliptic.P256(), "ecdsa-sha2-nistp384": elliptic.P384(), "ecdsa-sha2-nistp521": elliptic.P521()}[typ]
		return ecdsa.ParseUncompressedPublicKey(c, pt)
	}
	return nil, fmt.Errorf("unsupported SSH public key type %q", typ)
}

type sshReader struct {
	b   []byte
	bad bool
}

func (r *sshReader) str() []byte {
	if len(r.b) < 4 {
		r.bad = true
		return nil
	}
	n := binary.BigEndian.Uint32(r.b)
	if uint64(n) > uint64(len(r.b)-4) {
		r.bad = true
		return nil
	}
	s := r.b[4 : 4+n]
	r.b = r.b[4+n:]
	return s
}
