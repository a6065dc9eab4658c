package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/internal/identity"
)

func certs(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, `usage: keyguard-collector certs <command> [flags]
  init      -dir D [-server-name N]... [-days N]   create CA (ca.crt/ca.key) and collector certificate (collector.crt/.key)
  host      -dir D -name HOST [-days N] [-reissue] host client certificate HOST.crt/.key (OU keyguard-host, CN HOST)
  operator  -dir D -name NAME [-days N] [-reissue] operator client certificate NAME.crt/.key (OU keyguard-operator)
            an existing NAME.crt is replaced only with -reissue, which revokes its serial first
  revoke    -dir D -name NAME                      add NAME.crt's serial to revoked.txt and rewrite crl.pem`)
		return 2
	}
	fs := flag.NewFlagSet("certs "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "certs", "directory holding the CA and certificates")
	name := fs.String("name", "", "host or operator identity (certificate CN)")
	days := fs.Int("days", 365, "validity in days")
	reissue := fs.Bool("reissue", false, "host, operator: replace an existing certificate of this name, revoking the old one's serial")
	var serverNames multi
	fs.Var(&serverNames, "server-name", "extra DNS name or IP of the collector (repeatable; localhost and 127.0.0.1 are always included)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	validity := time.Duration(*days) * 24 * time.Hour
	fail := func(err error) int { fmt.Fprintln(stderr, "certs:", err); return 1 }
	switch args[0] {
	case "init":
		if _, err := os.Stat(filepath.Join(*dir, "ca.key")); err == nil {
			return fail(fmt.Errorf("%s/ca.key exists: refusing to overwrite the CA", *dir))
		}
		ca, err := certgen.NewCA("keyguard demo CA", 10*validity)
		if err != nil {
			return fail(err)
		}
		if err := ca.Write(*dir, "ca"); err != nil {
			return fail(err)
		}
		req := certgen.Request{CommonName: "keyguard-collector", OU: certgen.OUServer, Server: true, DNSNames: []string{"localhost"},
			IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, NotAfter: time.Now().Add(validity)}
		for _, n := range serverNames {
			if ip := net.ParseIP(n); ip != nil {
				req.IPs = append(req.IPs, ip)
			} else {
				req.DNSNames = append(req.DNSNames, n)
			}
		}
		srv, err := ca.Issue(req)
		if err != nil {
			return fail(err)
		}
		if err := srv.Write(*dir, "collector"); err != nil {
			return fail(err)
		}
		if err := certgen.WriteFile(filepath.Join(*dir, "revoked.txt"), []byte("# revoked client certificate serials (hex), one per line\n"), 0o644); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "created %s/ca.crt, ca.key (keep private), collector.crt, collector.key, revoked.txt\n", *dir)
		return 0
	case "host", "operator":
		if !identity.ValidName(*name) {
			return fail(fmt.Errorf("-name %q: give the identity (letters, digits, '.', '-', '_')", *name))
		}
		ca, err := certgen.Load(*dir, "ca")
		if err != nil {
			return fail(err)
		}
		ou := certgen.OUHost
		if args[0] == "operator" {
			ou = certgen.OUOperator
		}
		// One live certificate per name: a second one is issued only by revoking the first.
		if prev, err := certgen.Load(*dir, *name); err == nil {
			if !*reissue {
				return fail(fmt.Errorf("%s/%s.crt exists (serial %s): pass -reissue to revoke it and issue a new one", *dir, *name, prev.Cert.SerialNumber.Text(16)))
			}
			if err := revoke(*dir, *name, ca, prev); err != nil {
				return fail(err)
			}
			fmt.Fprintf(stdout, "revoked the previous %s.crt (serial %s)\n", *name, prev.Cert.SerialNumber.Text(16))
		} else if !errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("reading the existing %s.crt: %w", *name, err))
		}
		p, err := ca.Issue(certgen.Request{CommonName: *name, OU: ou, NotAfter: time.Now().Add(validity)})
		if err != nil {
			return fail(err)
		}
		if err := p.Write(*dir, *name); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "created %s/%s.crt and %s.key (%s, serial %s)\n", *dir, *name, *name, ou, p.Cert.SerialNumber.Text(16))
		return 0
	case "revoke":
		ca, err := certgen.Load(*dir, "ca")
		if err != nil {
			return fail(err)
		}
		p, err := certgen.Load(*dir, *name)
		if err != nil {
			return fail(err)
		}
		if err := revoke(*dir, *name, ca, p); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "revoked %s (serial %s): %s/revoked.txt and crl.pem updated; a running collector picks them up at the next connection\n", *name, p.Cert.SerialNumber.Text(16), *dir)
		return 0
	}
	fmt.Fprintf(stderr, "certs: unknown command %q\n", args[0])
	return 2
}

// revoke adds p's serial to dir/revoked.txt and rewrites dir/crl.pem signed by ca.
func revoke(dir, name string, ca, p *certgen.Pair) error {
	path := filepath.Join(dir, "revoked.txt")
	old, _ := os.ReadFile(path)
	list := string(old) + p.Cert.SerialNumber.Text(16) + " # " + name + "\n"
	if err := certgen.WriteFile(path, []byte(list), 0o644); err != nil {
		return err
	}
	var serials []*big.Int
	for _, line := range strings.Split(list, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if s, ok := new(big.Int).SetString(strings.TrimSpace(line), 16); ok {
			serials = append(serials, s)
		}
	}
	crl, err := ca.CRL(serials, time.Now().Unix())
	if err != nil {
		return err
	}
	return certgen.WriteFile(filepath.Join(dir, "crl.pem"), crl, 0o644)
}
