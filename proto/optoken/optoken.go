// Package optoken signs and verifies operator tokens: short-lived statements, signed with an operator's
// Ed25519 key, that authorise one act on one host (uninstall keyguard, a break-glass grant, a policy
// change). The agent holds only the public key, pinned at install time; the private key stays off the host
// (with the operator or the collector's console).
//
// A token is "kgt1." + base64url(JSON claims) + "." + base64url(Ed25519 signature over "kgt1." + payload).
package optoken

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Actions a token can authorise.
const (
	ActionUninstall  = "uninstall"
	ActionBreakGlass = "break-glass"
	ActionPolicy     = "policy"
)

// MaxValidity is the longest a token may be valid.
const MaxValidity = 24 * time.Hour

// prefix marks the token format version.
const prefix = "kgt1."

// clockSkew is how far in the future IssuedAt may be (hosts' clocks differ a little).
const clockSkew = 5 * time.Minute

// Claims is what a token says.
type Claims struct {
	Action   string `json:"action"`
	Host     string `json:"host"`
	Operator string `json:"operator"`
	Reason   string `json:"reason"`

	// break-glass
	Rule       string `json:"rule,omitempty"`
	Executable string `json:"executable,omitempty"`
	UID        *int64 `json:"uid,omitempty"` // -1: any uid
	Duration   string `json:"duration,omitempty"`

	// policy: the SHA-256 (hex) of the policy file's bytes it approves
	PolicySHA256 string `json:"policy_sha256,omitempty"`

	IssuedAt  time.Time `json:"iat"`
	ExpiresAt time.Time `json:"exp"`
	Nonce     string    `json:"nonce"`
}

// Check validates the claims' own consistency (not the signature or the time).
func (c Claims) Check() error {
	switch c.Action {
	case ActionUninstall:
	case ActionBreakGlass:
		if c.Rule == "" || c.Executable == "" || c.UID == nil || c.Duration == "" {
			return errors.New("a break-glass token needs rule, executable, uid and duration")
		}
		if _, err := time.ParseDuration(c.Duration); err != nil {
			return fmt.Errorf("duration %q: %w", c.Duration, err)
		}
	case ActionPolicy:
		if b, err := hex.DecodeString(c.PolicySHA256); err != nil || len(b) != 32 {
			return errors.New("a policy token needs policy_sha256, the hex SHA-256 of the policy file")
		}
	default:
		return fmt.Errorf("unknown action %q: use %s, %s or %s", c.Action, ActionUninstall, ActionBreakGlass, ActionPolicy)
	}
	if c.Host == "" {
		return errors.New("the token must name the host it is for")
	}
	if c.Operator == "" {
		return errors.New("the token must name the operator")
	}
	if len(strings.TrimSpace(c.Reason)) < 10 {
		return errors.New("the token needs a written reason of at least 10 characters")
	}
	if c.IssuedAt.IsZero() || c.ExpiresAt.IsZero() || !c.ExpiresAt.After(c.IssuedAt) {
		return errors.New("the token needs an issue time before its expiry")
	}
	if c.ExpiresAt.Sub(c.IssuedAt) > MaxValidity {
		return fmt.Errorf("a token may be valid for at most %s", MaxValidity)
	}
	if len(c.Nonce) < 16 {
		return errors.New("the token needs a nonce of at least 16 characters")
	}
	return nil
}

// Sign fills in IssuedAt (now), ExpiresAt (IssuedAt+1h) and Nonce when empty, checks the claims and signs them.
func Sign(priv ed25519.PrivateKey, c Claims) (string, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return "", errors.New("not an Ed25519 private key")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now().UTC().Truncate(time.Second)
	}
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = c.IssuedAt.Add(time.Hour)
	}
	if c.Nonce == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		c.Nonce = hex.EncodeToString(b[:])
	}
	if err := c.Check(); err != nil {
		return "", err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	signed := prefix + base64.RawURLEncoding.EncodeToString(payload)
	sig := ed25519.Sign(priv, []byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// Verify checks the token's signature with pub, its claims and that now is within its validity, and returns
// the claims. Checking the host, the action and nonce reuse is the caller's job.
func Verify(pub ed25519.PublicKey, token string, now time.Time) (Claims, error) {
	var c Claims
	if len(pub) != ed25519.PublicKeySize {
		return c, errors.New("not an Ed25519 public key")
	}
	token = strings.TrimSpace(token)
	if !strings.HasPrefix(token, prefix) {
		return c, errors.New("not a keyguard operator token (it must start with kgt1.)")
	}
	dot := strings.LastIndexByte(token, '.')
	if dot <= len(prefix) {
		return c, errors.New("malformed token: no signature")
	}
	signed, sigText := token[:dot], token[dot+1:]
	sig, err := base64.RawURLEncoding.DecodeString(sigText)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return c, errors.New("malformed token: bad signature encoding")
	}
	if !ed25519.Verify(pub, []byte(signed), sig) {
		return c, errors.New("token signature does not verify with the operator key installed on this host")
	}
	payload, err := base64.RawURLEncoding.DecodeString(signed[len(prefix):])
	if err != nil {
		return c, errors.New("malformed token: bad claims encoding")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("malformed token claims: %w", err)
	}
	if err := c.Check(); err != nil {
		return c, fmt.Errorf("token claims: %w", err)
	}
	if now.Add(clockSkew).Before(c.IssuedAt) {
		return c, fmt.Errorf("token issued in the future (%s); check the clocks", c.IssuedAt.Format(time.RFC3339))
	}
	if !now.Before(c.ExpiresAt) {
		return c, fmt.Errorf("token expired at %s; ask for a new one", c.ExpiresAt.Format(time.RFC3339))
	}
	return c, nil
}

// GenerateKey makes a new operator key pair.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// MarshalPrivateKeyPEM encodes a private key as PKCS#8 PEM.
func MarshalPrivateKeyPEM(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes a public key as PKIX PEM.
func MarshalPublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes a PKCS#8 PEM Ed25519 private key.
func ParsePrivateKeyPEM(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM \"PRIVATE KEY\" block (make one with `keyguard token keygen`)")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("operator keys are Ed25519, this is a %T", k)
	}
	return priv, nil
}

// ParsePublicKeyPEM decodes a PKIX PEM Ed25519 public key.
func ParsePublicKeyPEM(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("no PEM \"PUBLIC KEY\" block (make one with `keyguard token keygen`)")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("operator keys are Ed25519, this is a %T", k)
	}
	return pub, nil
}

// LoadPrivateKey reads a private key file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read operator private key: %w", err)
	}
	k, err := ParsePrivateKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads a public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read operator public key: %w", err)
	}
	k, err := ParsePublicKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteKeyPair writes base.key (0600) and base.pub (0644), refusing to overwrite either.
func WriteKeyPair(base string) error {
	pub, priv, err := GenerateKey()
	if err != nil {
		return err
	}
	privPEM, err := MarshalPrivateKeyPEM(priv)
	if err != nil {
		return err
	}
	pubPEM, err := MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{base + ".key", privPEM, 0o600}, {base + ".pub", pubPEM, 0o644}} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return fmt.Errorf("write key (an existing key is never overwritten): %w", err)
		}
		if _, err := fh.Write(f.data); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	return nil
}
