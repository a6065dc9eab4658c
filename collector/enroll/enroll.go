// Package enroll is the collector's side of agent enrollment: an agent with no identity proves it may
// join with a short-lived bootstrap token scoped to the host names it may claim, sends a
// CSR, and gets a client certificate (OU keyguard-host, CN = its host or node name) signed by the
// collector's CA. An enrolled agent renews with its current certificate (mTLS) before it expires; the
// old serial is revoked (appended to the revoked-serials file the collector reloads). A name held by
// a live identity (a certificate neither expired nor revoked) is refused to a new bootstrap token
// unless an operator approved that name (Approve), and the old identity is then revoked.
//
// Handler serves it over HTTPS: POST /v1/enroll {"token","csr"} and POST /v1/renew {"csr"} (the
// client certificate authenticates the renewal); both answer {"certificate": PEM}.
//
// A token is single-use and lives at most 24h, or, for a pool of nodes that an autoscaler grows (the
// Kubernetes DaemonSet), has a use count and lives at most 7 days; the operator rotates it. The
// holders of names, approvals and token uses are kept in a Registry: the collector's store (SQLite or
// PostgreSQL: several collectors on one database agree, a restart keeps refusals), or Memory.
//
// Not yet: Kubernetes projected service-account tokens (TokenReview) are not accepted, and revoked
// serials go to each collector's own file (collectors sharing a database should share that file).
package enroll

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path"
	"strings"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
)

// Authority issues agents' identities. Fields are set before use.
type Authority struct {
	CA          *certgen.Pair
	TokenKey    []byte           // HMAC key of bootstrap tokens (32 random bytes; keep it secret)
	Validity    time.Duration    // certificate lifetime; default 24h
	RevokedFile string           // revoked serials (hex, one per line), as the collector's -revoked-serials
	Now         func() time.Time // default time.Now
	Registry    Registry         // holders, approvals, token uses; default: a Memory of its own

	mem Memory
}

// Token lifetimes.
const (
	MaxTokenTTL         = 24 * time.Hour     // single-use token
	MaxMultiUseTokenTTL = 7 * 24 * time.Hour // token with a use count (a node pool)
	MaxTokenUses        = 10000
)

func (a *Authority) registry() Registry {
	if a.Registry != nil {
		return a.Registry
	}
	return &a.mem
}

// Errors the handler maps to HTTP status codes.
var (
	ErrToken = errors.New("bootstrap token invalid, expired, already used or not for this name")
	ErrLive  = errors.New("the name is held by a live identity: an operator must approve its re-enrollment (keyguard-collector enroll approve)")
	ErrCSR   = errors.New("bad certificate request")
)

type claims struct {
	Scope string `json:"scope"` // path.Match pattern of names, e.g. "web*"
	Exp   int64  `json:"exp"`
	Nonce string `json:"nonce"`
	Uses  int    `json:"uses,omitempty"` // 0: once
}

func (a *Authority) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Token makes a bootstrap token for names matching scope (path.Match syntax), valid for ttl (at most
// 24h), usable once.
func (a *Authority) Token(scope string, ttl time.Duration) (string, error) {
	return a.TokenN(scope, ttl, 1)
}

// TokenN makes a bootstrap token usable uses times (each use enrolls one name) for names matching
// scope, valid for ttl: at most MaxTokenTTL when uses is 1, MaxMultiUseTokenTTL otherwise.
func (a *Authority) TokenN(scope string, ttl time.Duration, uses int) (string, error) {
	if _, err := path.Match(scope, ""); err != nil || scope == "" {
		return "", fmt.Errorf("scope %q: want a name or a pattern such as web*", scope)
	}
	if uses < 1 || uses > MaxTokenUses {
		return "", fmt.Errorf("token uses %d: want 1 to %d", uses, MaxTokenUses)
	}
	if limit := map[bool]time.Duration{true: MaxTokenTTL, false: MaxMultiUseTokenTTL}[uses == 1]; ttl <= 0 || ttl > limit {
		return "", fmt.Errorf("token lifetime %v: want at most %v for a token of %d use(s)", ttl, limit, uses)
	}
	n := make([]byte, 16)
	if _, err := rand.Read(n); err != nil {
		return "", err
	}
	body, _ := json.Marshal(claims{Scope: scope, Exp: a.now().Add(ttl).Unix(), Nonce: base64.RawURLEncoding.EncodeToString(n), Uses: uses})
	b := base64.RawURLEncoding.EncodeToString(body)
	return "kgb1." + b + "." + base64.RawURLEncoding.EncodeToString(a.mac(b)), nil
}

func (a *Authority) mac(s string) []byte {
	m := hmac.New(sha256.New, a.TokenKey)
	m.Write([]byte("keyguard bootstrap token\x00" + s))
	return m.Sum(nil)
}

func (a *Authority) checkToken(tok, name string) (claims, error) {
	var c claims
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || parts[0] != "kgb1" {
		return c, ErrToken
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, a.mac(parts[1])) {
		return c, ErrToken
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(body, &c) != nil {
		return c, ErrToken
	}
	if ok, _ := path.Match(c.Scope, name); !ok || a.now().Unix() >= c.Exp {
		return c, ErrToken
	}
	return c, nil
}

// Approve lets name be enrolled once more although a live identity holds it (that identity is
// revoked when the new one is issued).
func (a *Authority) Approve(ctx context.Context, name string) error {
	return a.registry().Approve(ctx, name)
}

// Enroll checks the bootstrap token and the CSR and returns the new certificate (PEM).
func (a *Authority) Enroll(ctx context.Context, token string, csrDER []byte) ([]byte, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	name := csr.Subject.CommonName
	c, err := a.checkToken(token, name)
	if err != nil {
		return nil, err
	}
	cert, err := a.sign(name, csr)
	if err != nil {
		return nil, err
	}
	prev, err := a.registry().Claim(ctx, Claim{Name: name, Nonce: c.Nonce, MaxUses: max(c.Uses, 1), NonceExp: time.Unix(c.Exp, 0),
		Now: a.now(), Holder: Holder{Serial: cert.SerialNumber, NotAfter: cert.NotAfter}})
	if errors.Is(err, ErrLive) {
		return nil, fmt.Errorf("%q: %w", name, err)
	}
	if err != nil {
		return nil, err
	}
	return a.finish(name, cert, prev)
}

// Renew issues a new certificate to the holder of peer (verified by the TLS handshake) for the same
// name and revokes peer's serial.
func (a *Authority) Renew(ctx context.Context, peer *x509.Certificate, csrDER []byte) ([]byte, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if peer == nil || csr.Subject.CommonName != peer.Subject.CommonName || !slicesHas(peer.Subject.OrganizationalUnit, certgen.OUHost) {
		return nil, fmt.Errorf("%w: renew the host certificate for its own name", ErrCSR)
	}
	name := peer.Subject.CommonName
	cert, err := a.sign(name, csr)
	if err != nil {
		return nil, err
	}
	if err := a.registry().Replace(ctx, name, peer.SerialNumber, Holder{Serial: cert.SerialNumber, NotAfter: cert.NotAfter}); err != nil {
		if errors.Is(err, ErrToken) {
			return nil, fmt.Errorf("%w: this certificate was replaced", ErrToken)
		}
		return nil, err
	}
	return a.finish(name, cert, peer.SerialNumber)
}

func slicesHas(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrCSR, err)
	}
	if !validName(csr.Subject.CommonName) {
		return nil, fmt.Errorf("%w: common name %q is not a host name", ErrCSR, csr.Subject.CommonName)
	}
	return csr, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// sign makes name's certificate for csr's key.
func (a *Authority) sign(name string, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	v := a.Validity
	if v <= 0 {
		v = 24 * time.Hour
	}
	now := a.now()
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	return a.CA.SignPublicKey(certgen.Request{CommonName: name, OU: certgen.OUHost, NotBefore: now.Add(-time.Minute),
		NotAfter: now.Add(v)}, csr.PublicKey, sn)
}

// finish revokes prev (the registry already names cert as the holder) and returns cert as PEM.
func (a *Authority) finish(name string, cert *x509.Certificate, prev *big.Int) ([]byte, error) {
	if prev != nil {
		if err := a.revoke(prev, name); err != nil {
			return nil, fmt.Errorf("revoking the previous certificate of %q: %w", name, err)
		}
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), nil
}

func (a *Authority) revoke(sn *big.Int, name string) error {
	if a.RevokedFile == "" {
		return errors.New("no revoked-serials file configured")
	}
	f, err := os.OpenFile(a.RevokedFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "%s # %s (replaced by enrollment)\n", sn.Text(16), name); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
