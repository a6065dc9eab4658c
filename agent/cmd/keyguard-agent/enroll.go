package main

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/keyguard/keyguard/agent/internal/enroll"
	"github.com/keyguard/keyguard/agent/internal/export"
)

// enrollAndRenew enrolls when exp's certificate is missing (retrying until f.Timeout), then renews it
// in the background until ctx ends. hostname is the certificate's name.
func enrollAndRenew(ctx context.Context, f enrollConfig, exp *export.Config, hostname string, log *slog.Logger) error {
	if f.URL == "" || exp == nil || exp.Plaintext {
		return nil
	}
	caPEM, err := os.ReadFile(exp.CAFile)
	if err != nil {
		return fmt.Errorf("enrollment needs the collector CA (-collector-ca): %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no PEM certificate", exp.CAFile)
	}
	if hostname == "" {
		if hostname, err = os.Hostname(); err != nil {
			return err
		}
	}
	cl := &enroll.Client{URL: strings.TrimSuffix(f.URL, "/"), CA: pool, Name: hostname, CertFile: exp.CertFile, KeyFile: exp.KeyFile}
	if _, err := os.Stat(exp.CertFile); errors.Is(err, os.ErrNotExist) {
		tok, err := os.ReadFile(f.TokenFile)
		if err != nil {
			return fmt.Errorf("no certificate %s and no bootstrap token (keyguard-collector enroll token -scope %s): %w", exp.CertFile, hostname, err)
		}
		ectx, cancel := context.WithTimeout(ctx, f.Timeout)
		defer cancel()
		for {
			err = cl.Enroll(ectx, strings.TrimSpace(string(tok)))
			if err == nil || ectx.Err() != nil || strings.Contains(err.Error(), "refused") {
				break
			}
			log.Warn("enrollment failed; retrying", "url", cl.URL, "err", err)
			time.Sleep(5 * time.Second)
		}
		if err != nil {
			return fmt.Errorf("enrollment as %q: %w", hostname, err)
		}
		if singleUse(string(tok)) {
			os.Remove(f.TokenFile) // spent; a node pool's token (a Secret on Kubernetes) stays for the next node
		}
		log.Info("enrolled", "name", hostname, "cert", exp.CertFile)
	}
	na, err := cl.NotAfter()
	if err != nil {
		return err
	}
	go cl.Renewer(ctx, log, time.Minute, time.Until(na))
	return nil
}

// singleUse reports whether a bootstrap token (kgb1.CLAIMS.MAC, see collector/enroll) enrolls one
// name only: the claims are readable, only the collector can check the MAC.
func singleUse(tok string) bool {
	parts := strings.Split(strings.TrimSpace(tok), ".")
	if len(parts) != 3 {
		return true
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Uses int `json:"uses"`
	}
	if err != nil || json.Unmarshal(body, &c) != nil {
		return true
	}
	return c.Uses <= 1
}
