package main

import (
	"errors"
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
	"github.com/keyguard/keyguard/deploy/cmdline"
)

func certs(args []string, stdout, stderr io.Writer) int {
	cmd := func(name, synopsis, about string) cmdline.Command {
		return cmdline.Command{Name: name, Summary: about, Run: func(args []string, stdout, stderr io.Writer) int {
			return certsCmd(name, synopsis, about, args, stdout, stderr)
		}}
	}
	p := cmdline.Program{Name: "keyguard-collector certs", Version: version, Commands: []cmdline.Command{
		cmd("init", "-dir D [-server-name N]... [-days N]", "create CA (ca.crt/ca.key) and collector certificate (collector.crt/.key)"),
		cmd("host", "-dir D -name HOST [-days N] [-reissue]", "host client certificate HOST.crt/.key (OU keyguard-host, CN HOST); an existing one is replaced only with -reissue, which revokes it first"),
		cmd("operator", "-dir D -name NAME [-days N] [-reissue]", "operator client certificate NAME.crt/.key (OU keyguard-operator); -reissue as for host"),
		cmd("revoke", "-dir D -name NAME", "add NAME.crt's serial to revoked.txt and rewrite crl.pem"),
	}}
	return p.Main(args, stdout, stderr)
}

func certsCmd(cmd, synopsis, about string, args []string, stdout, stderr io.Writer) int {
	fs := cmdline.NewFlagSet("keyguard-collector certs "+cmd, synopsis, about)
	dir := fs.String("dir", "certs", "directory holding the CA and certificates")
	name := fs.String("name", "", "host or operator identity (certificate CN)")
	days := fs.Int("days", 365, "validity in days")
	reissue := fs.Bool("reissue", false, "host, operator: replace an existing certificate of this name, revoking the old one's serial")
	var serverNames multi
	fs.Var(&serverNames, "server-name", "extra DNS name or IP of the collector (repeatable; localhost and 127.0.0.1 are always included)")
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef(fs, stderr, "unexpected arguments %q", fs.Args())
	}
	validity := time.Duration(*days) * 24 * time.Hour
	var err error
	switch cmd {
	case "init":
		err = certsInit(*dir, serverNames, validity, stdout)
	case "host", "operator":
		err = certsIssue(cmd, *dir, *name, validity, *reissue, stdout)
	case "revoke":
		err = certsRevoke(*dir, *name, stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "certs:", err)
		return cmdline.ExitFailure
	}
	return cmdline.ExitOK
}
func certsInit(dir string, serverNames []string, validity time.Duration, stdout io.Writer) error {
	if _, err := os.Stat(filepath.Join(dir, "ca.key")); err == nil {
		return fmt.Errorf("%s/ca.key exists: refusing to overwrite the CA", dir)
	}
	ca, err := certgen.NewCA("keyguard demo CA", 10*validity)
	if err != nil {
		return err
	}
	if err := ca.Write(dir, "ca"); err != nil {
		return err
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
		return err
	}
	if err := srv.Write(dir, "collector"); err != nil {
		return err
	}
	if err := certgen.WriteFile(filepath.Join(dir, "revoked.txt"), []byte("# revoked client certificate serials (hex), one per line\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s/ca.crt, ca.key (keep private), collector.crt, collector.key, revoked.txt\n", dir)
	return nil
}

// certsIssue issues a host or operator certificate. One live certificate per name: an existing one is
// replaced only with reissue, which revokes its serial first.
func certsIssue(kind, dir, name string, validity time.Duration, reissue bool, stdout io.Writer) error {
	if !identity.ValidName(name) {
		return fmt.Errorf("-name %q: give the identity (letters, digits, '.', '-', '_')", name)
	}
	ca, err := certgen.Load(dir, "ca")
	if err != nil {
		return err
	}
	ou := certgen.OUHost
	if kind == "operator" {
		ou = certgen.OUOperator
	}
	if prev, err := certgen.Load(dir, name); err == nil {
		if !reissue {
			return fmt.Errorf("%s/%s.crt exists (serial %s): pass -reissue to revoke it and issue a new one", dir, name, prev.Cert.SerialNumber.Text(16))
		}
		if err := revoke(dir, name, ca, prev); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked the previous %s.crt (serial %s)\n", name, prev.Cert.SerialNumber.Text(16))
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the existing %s.crt: %w", name, err)
	}
	p, err := ca.Issue(certgen.Request{CommonName: name, OU: ou, NotAfter: time.Now().Add(validity)})
	if err != nil {
		return err
	}
	if err := p.Write(dir, name); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s/%s.crt and %s.key (%s, serial %s)\n", dir, name, name, ou, p.Cert.SerialNumber.Text(16))
	return nil
}

func certsRevoke(dir, name string, stdout io.Writer) error {
	ca, err := certgen.Load(dir, "ca")
	if err != nil {
		return err
	}
	p, err := certgen.Load(dir, name)
	if err != nil {
		return err
	}
	if err := revoke(dir, name, ca, p); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (serial %s): %s/revoked.txt and crl.pem updated; a running collector picks them up at the next connection\n", name, p.Cert.SerialNumber.Text(16), dir)
	return nil
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
