// Package enroll is the collector's side of agent enrollment: an agent with no identity proves it may
// join with a short-lived, single-use bootstrap token scoped to the host names it may claim, sends a
// CSR, and gets a client certificate (OU keyguard-host, CN = its host or node name) signed by the
// collector's CA. An enrolled agent renews with its current certificate (mTLS) before it expires; the
// old serial is revoked (appended to the revoked-serials file the collector reloads). A name held by
// a live identity (a certificate neither expired nor revoked) is refused to a new bootstrap token
// unless an operator approved that name (Approve), and the old identity is then revoked.
//
// Handler serves it over HTTPS: POST /v1/enroll {"token","csr"} and POST /v1/renew {"csr"} (the
// client certificate authenticates the renewal); both answer {"certificate": PEM}.
//
// Not yet: the live-identity table is in memory (a restarted collector forgets it; revoked serials
// persist in the file), and Kubernetes projected service-account tokens (TokenReview) are not accepted.
package enroll

import (
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
	"sync"
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

	mu       sync.Mutex
	live     map[string]*x509.Certificate // name -> its current certificate
	approved map[string]bool              // names an operator allowed to be enrolled again
	used     map[string]time.Time         // spent token nonces -> expiry
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
	if _, err := path.Match(scope, ""); err != nil || scope == "" {
		return "", fmt.Errorf("scope %q: want a name or a pattern such as web*", scope)
	}
	if ttl <= 0 || ttl > 24*time.Hour {
		return "", fmt.Errorf("token lifetime %v: want at most 24h", ttl)
	}
	n := make([]byte, 16)
	if _, err := rand.Read(n); err != nil {
		return "", err
	}
	body, _ := json.Marshal(claims{Scope: scope, Exp: a.now().Add(ttl).Unix(), Nonce: base64.RawURLEncoding.EncodeToString(n)})
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
func (a *Authority) Approve(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.approved == nil {
		a.approved = map[string]bool{}
	}
	a.approved[name] = true
}

// Enroll checks the bootstrap token and the CSR and returns the new certificate (PEM).
func (a *Authority) Enroll(token string, csrDER []byte) ([]byte, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	name := csr.Subject.CommonName
	c, err := a.checkToken(token, name)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, spent := a.used[c.Nonce]; spent {
		return nil, ErrToken
	}
	prev := a.live[name]
	if prev != nil && a.now().Before(prev.NotAfter) && !a.approved[name] {
		return nil, fmt.Errorf("%q: %w", name, ErrLive)
	}
	if a.used == nil {
		a.used = map[string]time.Time{}
	}
	a.used[c.Nonce] = time.Unix(c.Exp, 0)
	delete(a.approved, name)
	return a.issue(name, csr, prev)
}

// Renew issues a new certificate to the holder of peer (verified by the TLS handshake) for the same
// name and revokes peer's serial.
func (a *Authority) Renew(peer *x509.Certificate, csrDER []byte) ([]byte, error) {
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if peer == nil || csr.Subject.CommonName != peer.Subject.CommonName || !slicesHas(peer.Subject.OrganizationalUnit, certgen.OUHost) {
		return nil, fmt.Errorf("%w: renew the host certificate for its own name", ErrCSR)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur := a.live[peer.Subject.CommonName]; cur != nil && cur.SerialNumber.Cmp(peer.SerialNumber) != 0 {
		return nil, fmt.Errorf("%w: this certificate was replaced", ErrToken)
	}
	return a.issue(peer.Subject.CommonName, csr, peer)
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

// issue signs csr's key for name (a.mu held), revokes prev, and records the new certificate as live.
func (a *Authority) issue(name string, csr *x509.CertificateRequest, prev *x509.Certificate) ([]byte, error) {
	v := a.Validity
	if v <= 0 {
		v = 24 * time.Hour
	}
	now := a.now()
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	cert, err := a.CA.SignPublicKey(certgen.Request{CommonName: name, OU: certgen.OUHost, NotBefore: now.Add(-time.Minute),
		NotAfter: now.Add(v)}, csr.PublicKey, sn)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		if err := a.revoke(prev.SerialNumber, name); err != nil {
			return nil, fmt.Errorf("revoking the previous certificate of %q: %w", name, err)
		}
	}
	if a.live == nil {
		a.live = map[string]*x509.Certificate{}
	}
	a.live[name] = cert
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
