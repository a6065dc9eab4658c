// Package metricsserver serves one Prometheus registry on plain HTTP at /metrics, for the agent and the
// collector. It refuses a listen address that is not loopback unless the operator allowed it: the
// metrics name rules, hosts and counts an attacker should not be able to read from the network.
//
// It lives in deploy/, beside the other conventions both binaries share (deploy/cmdline), so that
// neither the agent's tree nor the collector's imports the other's at run time.
package metricsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is the only path served.
const Path = "/metrics"

// IsLoopback reports whether a listen address only accepts local connections ("localhost" or a
// loopback IP; an empty host means every interface and is not loopback).
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Names are how the two options are spelled in error messages.
type Names struct {
	Listen, AllowRemote string
}

// Flags returns the command-line spellings.
func Flags() Names { return Names{Listen: "-metrics-listen", AllowRemote: "-metrics-allow-remote"} }

// Check validates a metrics listen address without binding it: HOST:PORT, and loopback unless
// allowRemote.
func Check(addr string, allowRemote bool, n Names) error {
	flagName := n.Listen
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s %q: give HOST:PORT, e.g. 127.0.0.1:9464: %w", flagName, addr, err)
	}
	if !allowRemote && !IsLoopback(addr) {
		return fmt.Errorf("%s %q is not a loopback address: metrics are plain HTTP without authentication; "+
			"listen on 127.0.0.1:PORT (and scrape through a local proxy), or set %s if the network is trusted",
			flagName, addr, n.AllowRemote)
	}
	return nil
}

// Listen checks addr (Check) and binds it for the metrics endpoint.
func Listen(addr string, allowRemote bool, n Names) (net.Listener, error) {
	if err := Check(addr, allowRemote, n); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", n.Listen, addr, err)
	}
	return ln, nil
}

// NewRegistry returns a registry holding the Go runtime and process collectors; the caller adds its own.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg at Path and 404 everywhere else.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slogAdapter{log},
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	return mux
}

type slogAdapter struct{ log *slog.Logger }

func (s slogAdapter) Println(v ...any) { s.log.Warn("metrics: " + fmt.Sprint(v...)) }

// Serve serves reg on ln until ctx is done, then shuts the server down (1 s grace).
func Serve(ctx context.Context, ln net.Listener, reg *prometheus.Registry, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           Handler(reg, log),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("metrics endpoint listening", "addr", "http://"+ln.Addr().String()+Path)
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if ctx.Err() != nil {
		<-done
	}
	return err
}
