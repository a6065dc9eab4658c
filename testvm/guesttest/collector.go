package guesttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Collector is a keyguard-collector serving mTLS on a loopback port, with its trial PKI.
type Collector struct {
	Addr        string // host:port of the gRPC listener
	MetricsAddr string // host:port of /metrics, "" unless asked for
	Certs       string // the PKI folder: ca.crt, <name>.crt and <name>.key for every host and operator
}

// CA is the PKI's CA certificate.
func (c *Collector) CA() string { return filepath.Join(c.Certs, "ca.crt") }

// Cert and Key are the certificate and key of a host or operator the collector was started with.
func (c *Collector) Cert(name string) string { return filepath.Join(c.Certs, name+".crt") }
func (c *Collector) Key(name string) string  { return filepath.Join(c.Certs, name+".key") }

// StartCollector makes a trial PKI in Dir/<name>-certs (keyguard-collector certs) with the hosts and
// operators, and starts keyguard-collector serve on 127.0.0.1:0 with its database in Dir, and
// /metrics too if metrics is set. The test's cleanup stops it.
func StartCollector(t *testing.T, name string, hosts, operators []string, metrics bool) *Collector {
	t.Helper()
	c := &Collector{Certs: filepath.Join(Dir, name+"-certs")}
	cmds := [][]string{{"certs", "init", "-dir", c.Certs}}
	for _, h := range hosts {
		cmds = append(cmds, []string{"certs", "host", "-dir", c.Certs, "-name", h})
	}
	for _, o := range operators {
		cmds = append(cmds, []string{"certs", "operator", "-dir", c.Certs, "-name", o})
	}
	for _, args := range cmds {
		if out, err := exec.Command("/bin/keyguard-collector", args...).CombinedOutput(); err != nil {
			t.Fatalf("keyguard-collector %v: %v: %s", args, err, out)
		}
	}
	addrFile, maddrFile := filepath.Join(Dir, name+"-collector.addr"), filepath.Join(Dir, name+"-collector.maddr")
	args := []string{"serve", "-listen", "127.0.0.1:0", "-addr-file", addrFile, "-db", filepath.Join(Dir, name+"-events.db"),
		"-tls-cert", c.Cert("collector"), "-tls-key", c.Key("collector"),
		"-tls-client-ca", c.CA(), "-revoked-serials", filepath.Join(c.Certs, "revoked.txt")}
	if metrics {
		args = append(args, "-metrics-listen", "127.0.0.1:0", "-metrics-addr-file", maddrFile)
	}
	col := exec.Command("/bin/keyguard-collector", args...)
	col.Stdout, col.Stderr = os.Stdout, os.Stdout
	if err := col.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { col.Process.Kill(); col.Wait() })
	for i := 0; i < 300 && c.Addr == ""; i++ {
		b, _ := os.ReadFile(addrFile)
		c.Addr = strings.TrimSpace(string(b))
		time.Sleep(50 * time.Millisecond)
	}
	if metrics {
		b, _ := os.ReadFile(maddrFile)
		c.MetricsAddr = strings.TrimSpace(string(b))
	}
	if c.Addr == "" || metrics && c.MetricsAddr == "" {
		t.Fatal("collector did not start")
	}
	return c
}
