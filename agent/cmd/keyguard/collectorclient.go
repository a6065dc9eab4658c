package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// collectorFlags are the connection flags shared by events, hosts and verify. Defaults come from the
// environment (KEYGUARD_COLLECTOR, KEYGUARD_CA, KEYGUARD_CERT, KEYGUARD_KEY) so an operator sets them once.
type collectorFlags struct {
	addr, ca, cert, key, serverName string
	plaintext                       bool
	timeout                         time.Duration
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (c *collectorFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "collector", envOr("KEYGUARD_COLLECTOR", "127.0.0.1:7443"), "collector address host:port (env KEYGUARD_COLLECTOR)")
	fs.StringVar(&c.ca, "ca", envOr("KEYGUARD_CA", ""), "CA certificate that signed the collector's certificate (env KEYGUARD_CA)")
	fs.StringVar(&c.cert, "cert", envOr("KEYGUARD_CERT", ""), "operator client certificate, OU keyguard-operator (env KEYGUARD_CERT)")
	fs.StringVar(&c.key, "key", envOr("KEYGUARD_KEY", ""), "operator client key (env KEYGUARD_KEY)")
	fs.StringVar(&c.serverName, "server-name", "", "expected collector certificate name (default: the host part of -collector)")
	fs.BoolVar(&c.plaintext, "insecure-plaintext", false, "connect without TLS (only to a loopback demo collector)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "deadline for the request")
}

func (c *collectorFlags) dial() (*grpc.ClientConn, error) {
	if c.plaintext {
		return grpc.NewClient(c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if c.ca == "" || c.cert == "" || c.key == "" {
		return nil, errors.New("mTLS needs -ca, -cert and -key (an operator certificate: 'keyguard-collector certs operator -name NAME'), or -insecure-plaintext for a loopback demo collector")
	}
	caPEM, err := os.ReadFile(c.ca)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.ca)
	}
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		return nil, fmt.Errorf("load client certificate: %w", err)
	}
	name := c.serverName
	if name == "" {
		name = c.addr
		if i := strings.LastIndexByte(name, ':'); i >= 0 {
			name = name[:i]
		}
		name = strings.Trim(name, "[]")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: name}
	return grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
}

// multiFlag collects a repeatable flag; each value may also be comma-separated.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*m = append(*m, p)
		}
	}
	return nil
}

// parseWhen reads an absolute RFC 3339 time or a duration meaning that long ago.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (e.g. 2h) nor an RFC 3339 time (e.g. 2026-01-02T15:04:05Z)", s)
	}
	return t, nil
}
