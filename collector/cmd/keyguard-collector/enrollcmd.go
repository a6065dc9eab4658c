package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/enroll"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

// enrollFlags are serve's enrollment flags (off unless -enroll-listen is set).
type enrollFlags struct {
	listen, caDir, tokenKey, addrFile *string
	validity                          *time.Duration
}

func addEnrollFlags(fs *flag.FlagSet) enrollFlags {
	return enrollFlags{
		listen:   fs.String("enroll-listen", "", "agent enrollment HTTPS address (off unless set), e.g. 0.0.0.0:7444"),
		caDir:    fs.String("enroll-ca-dir", "", "folder with ca.crt and ca.key, the CA that signs enrolled agents (the -tls-client-ca)"),
		tokenKey: fs.String("enroll-token-key", "", "file with the secret that signs bootstrap tokens ('keyguard-collector enroll token' uses the same file)"),
		addrFile: fs.String("enroll-addr-file", "", "write the bound enrollment address to this file once listening"),
		validity: fs.Duration("enroll-validity", 24*time.Hour, "lifetime of enrolled agents' certificates (agents renew at 2/3)"),
	}
}

// startEnroll serves enrollment over HTTPS with the collector's certificate until ctx ends.
// Holders of names, approvals and token uses are kept in reg (the collector's store).
func startEnroll(ctx context.Context, f enrollFlags, certFile, keyFile, revoked string, reg enroll.Registry, log *slog.Logger) error {
	if *f.listen == "" {
		return nil
	}
	if *f.caDir == "" || *f.tokenKey == "" || revoked == "" || certFile == "" {
		return errors.New("-enroll-listen needs -enroll-ca-dir, -enroll-token-key, -revoked-serials and -tls-cert/-tls-key")
	}
	ca, err := certgen.Load(*f.caDir, "ca")
	if err != nil {
		return fmt.Errorf("enrollment CA: %w", err)
	}
	key, err := readTokenKey(*f.tokenKey)
	if err != nil {
		return err
	}
	srvCert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("enrollment listener certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	a := &enroll.Authority{CA: ca, TokenKey: key, Validity: *f.validity, RevokedFile: revoked, Registry: reg}
	ln, err := net.Listen("tcp", *f.listen)
	if err != nil {
		return fmt.Errorf("-enroll-listen: %w", err)
	}
	hs := &http.Server{Handler: a.Handler(log), ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{srvCert}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}}
	go func() { <-ctx.Done(); hs.Close() }()
	go func() {
		if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("enrollment listener stopped", "err", err)
		}
	}()
	log.Info("agent enrollment listening", "addr", ln.Addr().String())
	if *f.addrFile != "" {
		return writeAddr(*f.addrFile, ln.Addr().String())
	}
	return nil
}

// createRevokedFile creates an empty -revoked-serials file when enrollment is on and there is none
// yet: enrollment appends to it (e.g. on the chart's data volume, at the first start).
func createRevokedFile(f enrollFlags, path string) error {
	if *f.listen == "" || path == "" {
		return nil
	}
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("-revoked-serials (enrollment writes revocations to it): %w", err)
	}
	return file.Close()
}

func readTokenKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bootstrap token key (make one: keyguard-collector enroll token-key -out FILE): %w", err)
	}
	if len(b) < 32 {
		return nil, fmt.Errorf("bootstrap token key %s: want at least 32 bytes", path)
	}
	return b, nil
}

// enrollCmd: `enroll token-key -out FILE` makes the secret; `enroll token -token-key FILE -scope
// PATTERN [-ttl D]` prints a bootstrap token for names matching PATTERN.
func enrollCmd(args []string, stdout, stderr io.Writer) int {
	cmd := func(name, synopsis, about string) cmdline.Command {
		return cmdline.Command{Name: name, Summary: about, Run: func(args []string, stdout, stderr io.Writer) int {
			return enrollSub(name, synopsis, about, args, stdout, stderr)
		}}
	}
	p := cmdline.Program{Name: "keyguard-collector enroll", Version: version, Commands: []cmdline.Command{
		cmd("token-key", "-out FILE", "write a new bootstrap-token secret (32 random bytes, mode 0600) for serve -enroll-token-key"),
		cmd("token", "-token-key FILE -scope NAME|PATTERN [-ttl 1h] [-uses N]", "print a bootstrap token for names matching the scope: single-use and at most 24h, or N uses and at most 7 days (a node pool)"),
	}}
	return p.Main(args, stdout, stderr)
}

func enrollSub(cmd, synopsis, about string, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-collector enroll "+cmd, synopsis, about)
	out := fs.String("out", "", "token-key: file to write (0600)")
	keyFile := fs.String("token-key", "", "token: the collector's -enroll-token-key file")
	scope := fs.String("scope", "", "token: host name, or pattern such as web* (path.Match), the token may enroll")
	ttl := fs.Duration("ttl", time.Hour, "token: lifetime (at most 24h; 168h with -uses above 1)")
	uses := fs.Int("uses", 1, "token: how many names it may enroll (a node pool that an autoscaler grows); rotate it before it expires")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef(fs, stderr, "unexpected arguments %q", fs.Args())
	}
	fail := func(err error) int { fmt.Fprintln(stderr, "enroll:", err); return 1 }
	switch cmd {
	case "token-key":
		if *out == "" {
			return fail(errors.New("-out is required"))
		}
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return fail(err)
		}
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fail(fmt.Errorf("refusing to overwrite a token key: %w", err))
		}
		if _, err := f.Write(b); err != nil {
			f.Close()
			return fail(err)
		}
		return map[bool]int{true: 0, false: 1}[f.Close() == nil]
	case "token":
		key, err := readTokenKey(*keyFile)
		if err != nil {
			return fail(err)
		}
		tok, err := (&enroll.Authority{TokenKey: key}).TokenN(strings.TrimSpace(*scope), *ttl, *uses)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, tok)
		return 0
	}
	return cmdline.Usagef(fs, stderr, "unknown command %q", cmd)
}
