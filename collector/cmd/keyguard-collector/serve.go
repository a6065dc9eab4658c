package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyguard/keyguard/collector/internal/server"
	"github.com/keyguard/keyguard/deploy/cmdline"
)

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) int {
	fs := cmdline.NewFlagSet("keyguard-collector serve", "[-config FILE] [flags]",
		"Runs the collector. Settings come from the defaults, then the -config file, then the flags given.")
	configPath := fs.String("config", "", "YAML configuration file (flags given explicitly override it)")
	consoleAddrFile := fs.String("console-addr-file", "", "write the console's bound address to this file once listening")
	metricsAddrFile := fs.String("metrics-addr-file", "", "write the bound metrics address to this file once listening (for tests and scripts using port 0)")
	enrollF := addEnrollFlags(fs)
	addrFile := fs.String("addr-file", "", "write the bound address to this file once listening (for tests and scripts using port 0)")
	cfg := server.Defaults()
	bound := cmdline.BindConfig(fs, &cfg)
	if code, done := cmdline.Parse(fs, args, stdout, stderr); done {
		return code
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef(fs, stderr, "unexpected arguments %q", fs.Args())
	}
	if err := bound.Load(*configPath, false); err != nil {
		fmt.Fprintln(stderr, "keyguard-collector:", err)
		return cmdline.ExitFailure
	}
	if err := createRevokedFile(enrollF, cfg.TLS.RevokedSerials); err != nil {
		fmt.Fprintln(stderr, "keyguard-collector:", err)
		return 1
	}
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
	if err := startEnroll(ctx, enrollF, cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.RevokedSerials, srv.Store(), log); err != nil {
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
