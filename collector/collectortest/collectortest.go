// Package collectortest runs the real keyguard-collector binary for end-to-end tests: build it once per
// test binary, create a demo PKI with its certs subcommand, start it on a free loopback port, SIGKILL or
// stop it, and restart it on the same database and port.
//
//	bin := collectortest.Build(t)
//	pki := collectortest.NewPKI(t, bin, "web1")            // CA, collector cert, host web1, operator "operator"
//	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn})
//	conn := pki.Dial(t, c.Addr(), "web1")                   // grpc.ClientConn with web1's certificate
//	c.Kill(); c.Restart(t)
package collectortest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildDir  string
)

// Build compiles keyguard-collector (once per test process) and returns the binary's path.
func Build(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		buildDir, buildErr = os.MkdirTemp("", "keyguard-collector-bin-")
		if buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "keyguard-collector")
		cmd := exec.Command("go", "build", "-o", buildPath, "./collector/cmd/keyguard-collector")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build keyguard-collector: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}

// PKI is a demo PKI created by 'keyguard-collector certs'.
type PKI struct {
	Dir string
}

// NewPKI creates a CA, the collector certificate, host certificates for hosts and an operator
// certificate named "operator".
func NewPKI(tb testing.TB, bin string, hosts ...string) *PKI {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "pki")
	run := func(args ...string) {
		tb.Helper()
		if out, err := exec.Command(bin, append([]string{"certs"}, args...)...).CombinedOutput(); err != nil {
			tb.Fatalf("keyguard-collector certs %v: %v\n%s", args, err, out)
		}
	}
	run("init", "-dir", dir)
	for _, h := range hosts {
		run("host", "-dir", dir, "-name", h)
	}
	run("operator", "-dir", dir, "-name", "operator")
	return &PKI{Dir: dir}
}

// File returns the path of a file in the PKI directory (e.g. "ca.crt", "web1.key").
func (p *PKI) File(name string) string { return filepath.Join(p.Dir, name) }

// TLSConfig is a client configuration presenting the named certificate (a host or "operator").
func (p *PKI) TLSConfig(tb testing.TB, name string) *tls.Config {
	tb.Helper()
	caPEM, err := os.ReadFile(p.File("ca.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(p.File(name+".crt"), p.File(name+".key"))
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: "localhost"}
}

// Dial returns a client connection to addr presenting the named certificate; closed at test end.
func (p *PKI) Dial(tb testing.TB, addr, name string, opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(p.TLSConfig(tb, name)))}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// Options configure Start.
type Options struct {
	PKI   *PKI     // required unless Plaintext
	DSN   string   // default: a SQLite file in a temp directory
	Name  string   // collector instance name
	Args  []string // extra flags
	Plain bool     // -insecure-plaintext on loopback
	// Metrics serves Prometheus metrics on a free loopback port (MetricsURL).
	Metrics bool
}

// Collector is a running keyguard-collector process.
type Collector struct {
	bin  string
	args []string
	addr string
	dir  string
	cmd  *exec.Cmd
	murl string
	done chan struct{}
	log  *bytes.Buffer
	mu   sync.Mutex
}

// Start runs the collector and waits until it listens; it is stopped at test end.
func Start(tb testing.TB, bin string, o Options) *Collector {
	tb.Helper()
	dir := tb.TempDir()
	if o.DSN == "" {
		o.DSN = filepath.Join(dir, "events.db")
	}
	args := []string{"serve", "-listen", "127.0.0.1:0", "-db", o.DSN}
	if o.Name != "" {
		args = append(args, "-name", o.Name)
	}
	if o.Plain {
		args = append(args, "-insecure-plaintext")
	} else {
		args = append(args, "-tls-cert", o.PKI.File("collector.crt"), "-tls-key", o.PKI.File("collector.key"),
			"-tls-client-ca", o.PKI.File("ca.crt"), "-revoked-serials", o.PKI.File("revoked.txt"))
	}
	if o.Metrics {
		args = append(args, "-metrics-listen", "127.0.0.1:0", "-metrics-addr-file", filepath.Join(dir, "metrics-addr"))
	}
	args = append(args, o.Args...)
	c := &Collector{bin: bin, args: args, dir: dir}
	c.launch(tb)
	tb.Cleanup(func() { c.Stop() })
	return c
}

func (c *Collector) launch(tb testing.TB) {
	tb.Helper()
	addrFile := filepath.Join(c.dir, "addr")
	os.Remove(addrFile)
	os.Remove(filepath.Join(c.dir, "metrics-addr"))
	args := append(append([]string(nil), c.args...), "-addr-file", addrFile)
	if c.addr != "" { // restart on the same port so clients reconnect to the same address
		for i, a := range args {
			if a == "127.0.0.1:0" {
				args[i] = c.addr
			}
		}
	}
	var log bytes.Buffer
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = &syncWriter{w: &log, mu: &c.mu}, &syncWriter{w: &log, mu: &c.mu}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start keyguard-collector: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c.cmd, c.done, c.log = cmd, done, &log
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil {
			c.addr = strings.TrimSpace(string(b))
			// The metrics address is written before the gRPC one.
			if b, err := os.ReadFile(filepath.Join(c.dir, "metrics-addr")); err == nil {
				c.murl = "http://" + strings.TrimSpace(string(b)) + "/metrics"
			}
			return
		}
		select {
		case <-done:
			tb.Fatalf("keyguard-collector exited during start:\n%s", c.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Kill()
			tb.Fatalf("keyguard-collector did not start within 60s:\n%s", c.Log())
		}
	}
}

type syncWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// MetricsURL is the collector's /metrics URL ("" unless Options.Metrics); the port changes on Restart.
func (c *Collector) MetricsURL() string { return c.murl }

// Addr is the collector's host:port (stable across Restart).
func (c *Collector) Addr() string { return c.addr }

// Log returns the process's output so far.
func (c *Collector) Log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.log.String()
}

// Kill sends SIGKILL and waits for the process to die.
func (c *Collector) Kill() {
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
	}
}

// Stop sends SIGTERM (graceful) and waits, killing after 15s.
func (c *Collector) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		c.Kill()
	}
}

// Restart starts the collector again with the same arguments, database and address.
func (c *Collector) Restart(tb testing.TB) {
	tb.Helper()
	select {
	case <-c.done:
	default:
		tb.Fatal("Restart while the collector is still running: Kill or Stop it first")
	}
	c.launch(tb) // Go listeners set SO_REUSEADDR, so the same port is free again at once
}
