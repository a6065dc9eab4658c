// Package tlsconfig builds the collector's mTLS configuration from files and reloads it when the files
// change (checked at each new connection), so certificates, the client CA and revocations can be rotated
// without a restart.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"sync"
	"time"
)

// Files names the PEM files of the collector's TLS identity and trust.
type Files struct {
	Cert     string // server certificate chain
	Key      string // server private key
	ClientCA string // CA bundle client certificates must chain to
	// CRL is an optional PEM or DER certificate revocation list signed by a client CA.
	CRL string
	// RevokedSerials is an optional file of revoked certificate serial numbers, one per line, in hex
	// (colons allowed) or decimal prefixed with "d:"; '#' starts a comment.
	RevokedSerials string
}

type material struct {
	cert    tls.Certificate
	pool    *x509.CertPool
	revoked map[string]bool // lowercase hex serial
}

type stamp struct {
	size int64
	mod  time.Time
}

// Manager holds the current TLS material and reloads it on change. Safe for concurrent use.
type Manager struct {
	files Files
	log   *slog.Logger

	mu     sync.Mutex
	cur    *material
	stamps map[string]stamp
}

// New loads the files; it fails when they are missing or invalid.
func New(files Files, log *slog.Logger) (*Manager, error) {
	if files.Cert == "" || files.Key == "" || files.ClientCA == "" {
		return nil, errors.New("mTLS needs a server certificate, its key and a client CA file (tls.cert, tls.key, tls.client_ca); create demo ones with 'keyguard-collector certs init'")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{files: files, log: log}
	mat, st, err := load(files)
	if err != nil {
		return nil, err
	}
	m.cur, m.stamps = mat, st
	return m, nil
}

func (m *Manager) paths() []string {
	var p []string
	for _, f := range []string{m.files.Cert, m.files.Key, m.files.ClientCA, m.files.CRL, m.files.RevokedSerials} {
		if f != "" {
			p = append(p, f)
		}
	}
	return p
}

func statAll(paths []string) map[string]stamp {
	st := map[string]stamp{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			st[p] = stamp{fi.Size(), fi.ModTime()}
		}
	}
	return st
}

// current returns the material, reloading it first when any file changed. A failed reload keeps the
// previous material and logs why.
func (m *Manager) current() *material {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := statAll(m.paths())
	changed := len(st) != len(m.stamps)
	for p, s := range st {
		if o, ok := m.stamps[p]; !ok || o != s {
			changed = true
		}
	}
	if !changed {
		return m.cur
	}
	mat, nst, err := load(m.files)
	if err != nil {
		m.log.Error("TLS files changed but could not be reloaded; still using the previous ones", "err", err)
		m.stamps = st // do not retry on every handshake until they change again
		return m.cur
	}
	m.log.Info("reloaded TLS certificates, client CA and revocations", "revoked", len(mat.revoked))
	m.cur, m.stamps = mat, nst
	return m.cur
}

// Reload forces a check for changed files (tests and SIGHUP use it).
func (m *Manager) Reload() { m.current() }

// Revoked reports whether a certificate serial is revoked in the current material.
func (m *Manager) Revoked(serial *big.Int) bool {
	return m.current().revoked[serialKey(serial)]
}

func serialKey(s *big.Int) string { return strings.ToLower(s.Text(16)) }

// ServerConfig returns a TLS 1.3 configuration requiring a client certificate that chains to the client
// CA, is within its validity period and is not revoked.
func (m *Manager) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			mat := m.current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{mat.cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    mat.pool,
				NextProtos:   []string{"h2"},
				VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
					if len(chains) == 0 || len(chains[0]) == 0 {
						return errors.New("no verified client certificate chain")
					}
					leaf := chains[0][0]
					if mat.revoked[serialKey(leaf.SerialNumber)] {
						m.log.Warn("refused revoked client certificate", "cn", leaf.Subject.CommonName, "serial", leaf.SerialNumber.Text(16))
						return fmt.Errorf("client certificate %q (serial %s) is revoked", leaf.Subject.CommonName, leaf.SerialNumber.Text(16))
					}
					return nil
				},
			}, nil
		},
	}
}

func load(f Files) (*material, map[string]stamp, error) {
	paths := []string{f.Cert, f.Key, f.ClientCA, f.CRL, f.RevokedSerials}
	st := statAll(paths)
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("load server certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	caPEM, err := os.ReadFile(f.ClientCA)
	if err != nil {
		return nil, nil, fmt.Errorf("read client CA: %w", err)
	}
	pool := x509.NewCertPool()
	var cas []*x509.Certificate
	rest := caPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("parse client CA %s: %w", f.ClientCA, err)
		}
		pool.AddCert(c)
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, nil, fmt.Errorf("client CA file %s holds no PEM certificate", f.ClientCA)
	}
	revoked := map[string]bool{}
	if f.CRL != "" {
		if err := loadCRL(f.CRL, cas, revoked); err != nil {
			return nil, nil, err
		}
	}
	if f.RevokedSerials != "" {
		if err := loadSerials(f.RevokedSerials, revoked); err != nil {
			return nil, nil, err
		}
	}
	return &material{cert: cert, pool: pool, revoked: revoked}, st, nil
}

func loadCRL(path string, cas []*x509.Certificate, revoked map[string]bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read CRL: %w", err)
	}
	if b, _ := pem.Decode(raw); b != nil {
		raw = b.Bytes
	}
	crl, err := x509.ParseRevocationList(raw)
	if err != nil {
		return fmt.Errorf("parse CRL %s: %w", path, err)
	}
	var sigErr error = errors.New("no client CA")
	for _, ca := range cas {
		if sigErr = crl.CheckSignatureFrom(ca); sigErr == nil {
			break
		}
	}
	if sigErr != nil {
		return fmt.Errorf("CRL %s is not signed by a client CA: %w", path, sigErr)
	}
	for _, e := range crl.RevokedCertificateEntries {
		revoked[serialKey(e.SerialNumber)] = true
	}
	return nil
}

func loadSerials(path string, revoked map[string]bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read revoked serials: %w", err)
	}
	for i, line := range strings.Split(string(raw), "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		n := new(big.Int)
		var ok bool
		if d, isDec := strings.CutPrefix(line, "d:"); isDec {
			_, ok = n.SetString(d, 10)
		} else {
			_, ok = n.SetString(strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(line), "0x"), ":", ""), 16)
		}
		if !ok {
			return fmt.Errorf("%s line %d: %q is not a serial number (hex, or d:<decimal>)", path, i+1, line)
		}
		revoked[serialKey(n)] = true
	}
	return nil
}
