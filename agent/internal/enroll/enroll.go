// Package enroll is the agent's side of enrollment (see collector/enroll): it makes a P-256 key and a
// CSR for its host or node name, trades a bootstrap token for a client certificate over HTTPS
// (server verified against the collector CA), writes cert and key where -cert and -key point, and
// renews with its current certificate before it expires (Renewer).
package enroll

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Client enrolls and renews one identity.
type Client struct {
	URL      string         // https://collector:port (the enrollment listener)
	CA       *x509.CertPool // signs the collector's server certificate
	Name     string         // host or node name: the certificate's CN
	CertFile string         // where the certificate goes (PEM)
	KeyFile  string         // where the private key goes (PEM, 0600)
}

// Enroll trades token for a certificate and writes it and its key.
func (c *Client) Enroll(ctx context.Context, token string) error {
	return c.request(ctx, "/v1/enroll", token, nil)
}

// Renew gets a new certificate and key using the current ones for mTLS; the old serial is revoked by
// the collector.
func (c *Client) Renew(ctx context.Context) error {
	cur, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return fmt.Errorf("renewal needs the current certificate (enroll first): %w", err)
	}
	return c.request(ctx, "/v1/renew", "", &cur)
}

func (c *Client) request(ctx context.Context, path, token string, cur *tls.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: c.Name}}, key)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"token": token, "csr": csr})
	tc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: c.CA}
	if cur != nil {
		tc.Certificates = []tls.Certificate{*cur}
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("enrollment at %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	var out struct{ Certificate, Error string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("enrollment at %s: %s: %w", c.URL, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("enrollment refused (%s): %s", resp.Status, out.Error)
	}
	blk, _ := pem.Decode([]byte(out.Certificate))
	if blk == nil {
		return fmt.Errorf("enrollment at %s: no certificate in the answer", c.URL)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || cert.Subject.CommonName != c.Name || !cert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		return fmt.Errorf("enrollment at %s: the certificate is not for this name and key (%v)", c.URL, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	// Key first: a certificate never sits next to a key it does not belong to for long.
	if err := writeAtomic(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return writeAtomic(c.CertFile, []byte(out.Certificate), 0o644)
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// NotAfter is the current certificate's expiry.
func (c *Client) NotAfter() (time.Time, error) {
	b, err := os.ReadFile(c.CertFile)
	if err != nil {
		return time.Time{}, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return time.Time{}, fmt.Errorf("%s is not PEM", c.CertFile)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return time.Time{}, err
	}
	return cert.NotAfter, nil
}

// Renewer renews the certificate when less than a third of its lifetime (as of now) is left, checking
// every interval, until ctx ends. Failures are logged and retried at the next check.
func (c *Client) Renewer(ctx context.Context, log *slog.Logger, interval time.Duration, lifetime time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if na, err := c.NotAfter(); err == nil && time.Until(na) < lifetime/3 {
			if err := c.Renew(ctx); err != nil {
				log.Warn("certificate renewal failed; retrying", "err", err, "expires", na)
			} else {
				log.Info("certificate renewed", "name", c.Name)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
