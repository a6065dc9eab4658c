package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keyguard/keyguard/collector/internal/server"
)

func serve(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (flags given explicitly override it)")
	d := server.Defaults()
	listen := fs.String("listen", d.Listen, "gRPC listen address")
	name := fs.String("name", "", "name of this collector instance (default: hostname)")
	cert := fs.String("tls-cert", "", "server certificate (PEM)")
	key := fs.String("tls-key", "", "server private key (PEM)")
	ca := fs.String("tls-client-ca", "", "CA bundle that client certificates must chain to (PEM)")
	crl := fs.String("tls-crl", "", "certificate revocation list signed by the client CA (PEM or DER), reloaded on change")
	revoked := fs.String("revoked-serials", "", "file of revoked client certificate serials (hex, one per line), reloaded on change")
	plaintext := fs.Bool("insecure-plaintext", false, "serve without TLS (loopback addresses only; demo)")
	dsn := fs.String("db", d.Storage.DSN, "storage: SQLite file path, or postgres://user@host/db URL")
	chainKey := fs.String("chain-key-file", "", "secret key file for HMAC hash chains (same on every collector sharing a database)")
	retention := fs.Duration("retention", 0, "delete events received longer ago than this (0 keeps all)")
	retentionEvery := fs.Duration("retention-interval", time.Duration(d.Retention.Interval), "how often the retention job runs")
	stale := fs.Duration("stale-after", time.Duration(d.StaleAfter), "list hosts not heard from for this long as stale")
	maxMsg := fs.Int("max-message-bytes", d.MaxMessageBytes, "largest gRPC message accepted")
	consoleListen := fs.String("console-listen", "", "web console HTTPS address (off unless set), e.g. 0.0.0.0:8443")
	consoleCert := fs.String("console-tls-cert", "", "console certificate (default: -tls-cert)")
	consoleKey := fs.String("console-tls-key", "", "console private key (default: -tls-key)")
	consolePlain := fs.Bool("console-insecure-plaintext", false, "serve the console over plain HTTP (loopback addresses only; demo)")
	consoleUsers := fs.String("console-users", "", "console users file (keyguard-collector console user add)")
	consoleOpKey := fs.String("console-operator-key", "", "Ed25519 operator private key for issuing tokens from the console")
	consoleAddrFile := fs.String("console-addr-file", "", "write the console's bound address to this file once listening")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9465 (empty: off)")
	metricsRemote := fs.Bool("metrics-allow-remote", false, "allow a non-loopback -metrics-listen address (plain HTTP, no authentication)")
	metricsAddrFile := fs.String("metrics-addr-file", "", "write the bound metrics address to this file once listening (for tests and scripts using port 0)")
	enrollF := addEnrollFlags(fs)
	addrFile := fs.String("addr-file", "", "write the bound address to this file once listening (for tests and scripts using port 0)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg := d
	if *configPath != "" {
		var err error
		if cfg, err = server.LoadFile(*configPath); err != nil {
			fmt.Fprintln(stderr, "keyguard-collector:", err)
			return 1
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = *listen
		case "name":
			cfg.Name = *name
		case "tls-cert":
			cfg.TLS.Cert = *cert
		case "tls-key":
			cfg.TLS.Key = *key
		case "tls-client-ca":
			cfg.TLS.ClientCA = *ca
		case "tls-crl":
			cfg.TLS.CRL = *crl
		case "revoked-serials":
			cfg.TLS.RevokedSerials = *revoked
		case "insecure-plaintext":
			cfg.InsecurePlaintext = *plaintext
		case "db":
			cfg.Storage.DSN = *dsn
		case "chain-key-file":
			cfg.Storage.ChainKeyFile = *chainKey
		case "retention":
			cfg.Retention.MaxAge = server.Duration(*retention)
		case "retention-interval":
			cfg.Retention.Interval = server.Duration(*retentionEvery)
		case "stale-after":
			cfg.StaleAfter = server.Duration(*stale)
		case "max-message-bytes":
			cfg.MaxMessageBytes = *maxMsg
		case "console-listen":
			cfg.Console.Listen = *consoleListen
		case "console-tls-cert":
			cfg.Console.TLSCert = *consoleCert
		case "console-tls-key":
			cfg.Console.TLSKey = *consoleKey
		case "console-insecure-plaintext":
			cfg.Console.InsecurePlaintext = *consolePlain
		case "console-users":
			cfg.Console.UsersFile = *consoleUsers
		case "console-operator-key":
			cfg.Console.OperatorKey = *consoleOpKey
		case "metrics-listen":
			cfg.MetricsListen = *metricsListen
		case "metrics-allow-remote":
			cfg.MetricsAllowRemote = *metricsRemote
		}
	})
	srv, err := server.New(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "keyguard-collector:", err)
		return 1
	}
	if a := srv.ConsoleAddr(); a != nil && *consoleAddrFile != "" {
		if err := writeAddr(*consoleAddrFile, a.String()); err != nil {
			fmt.Fprintln(stderr, "keyguard-collector: write -console-addr-file:", err)
			return 1
		}
	}
	if a := srv.MetricsAddr(); a != nil && *metricsAddrFile != "" {
		if err := writeAddr(*metricsAddrFile, a.String()); err != nil {
			fmt.Fprintln(stderr, "keyguard-collector: write -metrics-addr-file:", err)
			return 1
		}
	}
	if err := startEnroll(ctx, enrollF, cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.RevokedSerials, log); err != nil {
		fmt.Fprintln(stderr, "keyguard-collector:", err)
		return 1
	}
	if *addrFile != "" { // written last: tests wait for it
		if err := writeAddr(*addrFile, srv.Addr().String()); err != nil {
			fmt.Fprintln(stderr, "keyguard-collector: write -addr-file:", err)
			return 1
		}
	}
	if m := srv.TLS(); m != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					m.Reload()
				}
			}
		}()
	}
	if err := srv.Serve(ctx); err != nil {
		fmt.Fprintln(stderr, "keyguard-collector:", err)
		return 1
	}
	return 0
}

// writeAddr writes addr to path atomically (readers see the whole address or no file).
func writeAddr(path, addr string) error {
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	return err
}
