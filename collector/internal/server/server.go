// Package server assembles the collector: configuration, storage, mTLS, the gRPC services (ingest,
// query, health, reflection) and the retention job.
package server

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"gopkg.in/yaml.v3"

	"github.com/keyguard/keyguard/collector/internal/alert"
	"github.com/keyguard/keyguard/collector/internal/console"
	"github.com/keyguard/keyguard/collector/internal/identity"
	"github.com/keyguard/keyguard/collector/internal/ingest"
	"github.com/keyguard/keyguard/collector/internal/metrics"
	"github.com/keyguard/keyguard/collector/internal/query"
	"github.com/keyguard/keyguard/collector/internal/store"
	"github.com/keyguard/keyguard/collector/internal/tlsconfig"
	"github.com/keyguard/keyguard/deploy/cmdline"
	"github.com/keyguard/keyguard/deploy/metricsserver"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

// Duration is a time.Duration that reads "90s"/"720h" in YAML.
type Duration time.Duration

// String formats the duration as Go does (flag.Value).
func (d *Duration) String() string { return time.Duration(*d).String() }

// Set parses a Go duration string (flag.Value).
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration like 90s or 720h", s)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 90s or 720h: %w", n.Line, s, err)
	}
	*d = Duration(v)
	return nil
}

// Config is the collector configuration: YAML keys, and the serve flags that override them, in tags
// (see deploy/cmdline.Config).
type Config struct {
	// Listen is the gRPC address, e.g. "0.0.0.0:7443".
	Listen string `yaml:"listen" flag:"listen" help:"gRPC listen address"`
	// Name identifies this collector instance in stored events (default: the machine's hostname).
	Name string `yaml:"name" flag:"name" help:"name of this collector instance (default: hostname)"`
	// TLS files; required unless InsecurePlaintext.
	TLS struct {
		Cert           string `yaml:"cert" flag:"tls-cert" help:"server certificate (PEM)"`
		Key            string `yaml:"key" flag:"tls-key" help:"server private key (PEM)"`
		ClientCA       string `yaml:"client_ca" flag:"tls-client-ca" help:"CA bundle that client certificates must chain to (PEM)"`
		CRL            string `yaml:"crl" flag:"tls-crl" help:"certificate revocation list signed by the client CA (PEM or DER), reloaded on change"`
		RevokedSerials string `yaml:"revoked_serials" flag:"revoked-serials" help:"file of revoked client certificate serials (hex, one per line), reloaded on change"`
	} `yaml:"tls"`
	// InsecurePlaintext serves without TLS; only allowed on a loopback address (demo).
	InsecurePlaintext bool `yaml:"insecure_plaintext" flag:"insecure-plaintext" help:"serve without TLS (loopback addresses only; demo)"`
	Storage           struct {
		// DSN: SQLite file path (default keyguard-events.db) or postgres:// URL.
		DSN string `yaml:"dsn" flag:"db" help:"storage: SQLite file path, or postgres://user@host/db URL"`
		// ChainKeyFile: optional secret for HMAC chain hashes (same on every collector of a database).
		ChainKeyFile string `yaml:"chain_key_file" flag:"chain-key-file" help:"secret key file for HMAC hash chains (same on every collector sharing a database)"`
	} `yaml:"storage"`
	Retention struct {
		// MaxAge: events received longer ago are deleted; 0 keeps everything.
		MaxAge Duration `yaml:"max_age" flag:"retention" help:"delete events received longer ago than this (0 keeps all)"`
		// Interval between retention runs (default 1h).
		Interval Duration `yaml:"interval" flag:"retention-interval" help:"how often the retention job runs"`
	} `yaml:"retention"`
	// Witness: a file outside this collector's control (another machine's mount, an append-only
	// file) to which every host's chain state is appended each Interval (default 5m) and retention
	// appends a tombstone before each cut; 'keyguard-collector verify -checkpoints FILE' checks a
	// database against it.
	//
	// Collector: a second collector kept as witness of the agents' signed checkpoints and retention
	// tombstones (WitnessService), reached over mTLS with CA (its server CA) and this collector's
	// client certificate Cert/Key (OU keyguard-collector).
	Witness struct {
		File      string   `yaml:"file"`
		Interval  Duration `yaml:"interval"`
		Collector string   `yaml:"collector"`
		CA        string   `yaml:"ca"`
		Cert      string   `yaml:"cert"`
		Key       string   `yaml:"key"`
	} `yaml:"witness"`
	// StaleAfter: hosts not heard from for this long are listed as stale (default 5m).
	StaleAfter Duration `yaml:"stale_after" flag:"stale-after" help:"list hosts not heard from for this long as stale"`
	// MaxMessageBytes: largest gRPC message accepted (default 4 MiB).
	MaxMessageBytes int `yaml:"max_message_bytes" flag:"max-message-bytes" help:"largest gRPC message accepted"`
	// WatchPoll: how often watchers poll for events stored by other collectors (default 1s).
	WatchPoll Duration `yaml:"watch_poll"`
	// MetricsListen: plain-HTTP address of Prometheus metrics at /metrics, e.g. 127.0.0.1:9465 (""
	// = off). A non-loopback address needs MetricsAllowRemote.
	MetricsListen      string `yaml:"metrics_listen" flag:"metrics-listen" help:"serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9465 (empty: off)"`
	MetricsAllowRemote bool   `yaml:"metrics_allow_remote" flag:"metrics-allow-remote" help:"allow a non-loopback -metrics-listen address (plain HTTP, no authentication)"`
	// MetricsMaxHosts caps the distinct host label values (default 2000; later hosts share "_other").
	MetricsMaxHosts int `yaml:"metrics_max_hosts"`
	// Console is the operator web console (off unless Listen is set).
	Console ConsoleConfig `yaml:"console"`
	// Alerts: alert rules and outputs (package alert); off when there are no rules.
	Alerts alert.Config `yaml:"alerts"`
}

// ConsoleConfig configures the operator web console (package console).
type ConsoleConfig struct {
	// Listen is the HTTPS address, e.g. "0.0.0.0:8443"; empty disables the console.
	Listen string `yaml:"listen" flag:"console-listen" help:"web console HTTPS address (off unless set), e.g. 0.0.0.0:8443"`
	// TLSCert and TLSKey: the console's certificate; default the collector's tls.cert and tls.key.
	TLSCert string `yaml:"tls_cert" flag:"console-tls-cert" help:"console certificate (default: -tls-cert)"`
	TLSKey  string `yaml:"tls_key" flag:"console-tls-key" help:"console private key (default: -tls-key)"`
	// InsecurePlaintext serves plain HTTP; only allowed on a loopback address.
	InsecurePlaintext bool `yaml:"insecure_plaintext" flag:"console-insecure-plaintext" help:"serve the console over plain HTTP (loopback addresses only; demo)"`
	// UsersFile lists operators (name:role:hash); required.
	UsersFile string `yaml:"users_file" flag:"console-users" help:"console users file (keyguard-collector console user add)"`
	// OperatorKey is the Ed25519 private key (PKCS#8 PEM) signing tokens; empty disables issuance.
	OperatorKey string `yaml:"operator_key" flag:"console-operator-key" help:"Ed25519 operator private key for issuing tokens from the console"`
	// SessionIdle and SessionMax expire sessions unused for that long (default 30m) or that old (12h).
	SessionIdle Duration `yaml:"session_idle"`
	SessionMax  Duration `yaml:"session_max"`
}

// Defaults returns a configuration with default values.
func Defaults() Config {
	var c Config
	c.Listen = "127.0.0.1:7443"
	c.Storage.DSN = "keyguard-events.db"
	c.Retention.Interval = Duration(time.Hour)
	c.StaleAfter = Duration(5 * time.Minute)
	c.MaxMessageBytes = 4 << 20
	c.WatchPoll = Duration(time.Second)
	return c
}

// LoadFile reads a YAML configuration over the defaults; unknown keys are errors naming
// file:line:column.
func LoadFile(path string) (Config, error) {
	c := Defaults()
	if err := cmdline.LoadYAML(path, &c); err != nil {
		return c, fmt.Errorf("collector config: %w", err)
	}
	return c, nil
}

// metricsNames spell the metrics options in errors: the YAML key and the flag.
func metricsNames() metricsserver.Names {
	return metricsserver.Names{Listen: "metrics_listen (-metrics-listen)", AllowRemote: "metrics_allow_remote: true (-metrics-allow-remote)"}
}

// IsLoopback reports whether a listen address only accepts local connections.
func IsLoopback(addr string) bool { return metricsserver.IsLoopback(addr) }

// Server is a configured collector.
type Server struct {
	cfg    Config
	log    *slog.Logger
	store  *store.Store
	tls    *tlsconfig.Manager
	lis    net.Listener
	grpc   *grpc.Server
	health *health.Server

	console      *console.Console
	consoleLis   net.Listener
	consoleCerts *console.CertLoader
	metrics      *metrics.Collector // nil: metrics off
	alerts       *alert.Engine      // nil: no alert rules
	metricsLis   net.Listener
	forward      *forwarder // nil: no witness collector
}

// New opens storage, loads TLS material and binds the listener. Call Serve, which also closes everything.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log}
	if cfg.MetricsListen != "" {
		// Checked first: a refused address must not leave storage or listeners half set up.
		if err := metricsserver.Check(cfg.MetricsListen, cfg.MetricsAllowRemote, metricsNames()); err != nil {
			return nil, err
		}
		s.metrics = metrics.New(cfg.MetricsMaxHosts)
	}
	creds, auth, err := s.newTransport(cfg)
	if err != nil {
		return nil, err
	}
	key, err := readChainKey(cfg.Storage.ChainKeyFile)
	if err != nil {
		return nil, err
	}
	if err := s.openStorage(ctx, cfg, key); err != nil {
		return nil, err
	}
	if err := s.listen(cfg); err != nil {
		return nil, err
	}
	qs := s.newGRPC(cfg, auth, creds)
	if cfg.Console.Listen != "" {
		if err := s.newConsole(cfg, qs); err != nil {
			s.lis.Close()
			s.store.Close()
			return nil, err
		}
	}
	return s, nil
}

// newTransport chooses how gRPC clients connect and are identified: plaintext on loopback (demo), or
// mTLS with the configured certificates, CRL and revoked serials (kept in s.tls). The returned
// server option is nil for plaintext.
func (s *Server) newTransport(cfg Config) (grpc.ServerOption, identity.Authorizer, error) {
	var creds grpc.ServerOption
	auth := identity.Authorizer{}
	if cfg.InsecurePlaintext {
		if !IsLoopback(cfg.Listen) {
			return nil, auth, fmt.Errorf("insecure_plaintext is only allowed on a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT), not %q: configure tls.cert, tls.key and tls.client_ca", cfg.Listen)
		}
		for i := 0; i < 3; i++ {
			s.log.Warn("!!! INSECURE PLAINTEXT MODE: no TLS, no client authentication; host identity is taken from the x-keyguard-host header. Loopback demo use only. !!!", "listen", cfg.Listen)
		}
		auth.Plaintext = true
	} else {
		m, err := tlsconfig.New(tlsconfig.Files{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, ClientCA: cfg.TLS.ClientCA, CRL: cfg.TLS.CRL, RevokedSerials: cfg.TLS.RevokedSerials}, s.log)
		if err != nil {
			return nil, auth, err
		}
		s.tls = m
		auth.Revoked = m.Revoked
		creds = grpc.Creds(credentials.NewTLS(m.ServerConfig()))
	}
	return creds, auth, nil
}

// readChainKey reads the optional HMAC chain key (surrounding white space trimmed); an empty file
// name means no key.
func readChainKey(file string) ([]byte, error) {
	if file == "" {
		return nil, nil
	}
	k, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read chain key: %w", err)
	}
	key := []byte(strings.TrimSpace(string(k)))
	if len(key) < 16 {
		return nil, fmt.Errorf("chain key in %s is shorter than 16 bytes: use e.g. 'head -c 32 /dev/urandom | base64'", file)
	}
	return key, nil
}

// openStorage opens the event store (s.store) and, when there are alert rules, the alert engine
// (s.alerts); on error nothing stays open.
func (s *Server) openStorage(ctx context.Context, cfg Config, key []byte) error {
	sopts := store.Options{DSN: cfg.Storage.DSN, Collector: cfg.Name, ChainKey: key, Logger: s.log, Witness: cfg.Witness.File, Maintain: true}
	if cfg.Witness.Collector != "" {
		f, err := newForwarder(cfg.Witness.Collector, cfg.Witness.CA, cfg.Witness.Cert, cfg.Witness.Key, s.log.With("component", "witness"))
		if err != nil {
			return err
		}
		s.forward, sopts.Forward = f, f.enqueue
	}
	if s.metrics != nil {
		sopts.Timed = s.metrics.ObserveStore
	}
	st, err := store.Open(ctx, sopts)
	if err != nil {
		if s.forward != nil {
			s.forward.conn.Close()
		}
		return err
	}
	s.store = st
	if len(cfg.Alerts.Rules) > 0 {
		var obs alert.Observer
		if s.metrics != nil {
			obs = s.metrics
		}
		if s.alerts, err = alert.New(alert.Options{Store: st, Config: cfg.Alerts, Owner: st.Collector(), Logger: s.log.With("component", "alert"), Observer: obs}); err != nil {
			st.Close()
			return err
		}
	}
	return nil
}

// listen binds the gRPC listener (s.lis) and, when metrics are on, the metrics listener
// (s.metricsLis); on error it closes what it opened and the store.
func (s *Server) listen(cfg Config) error {
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.store.Close()
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	s.lis = lis
	if s.metrics != nil {
		if s.metricsLis, err = metricsserver.Listen(cfg.MetricsListen, cfg.MetricsAllowRemote, metricsNames()); err != nil {
			lis.Close()
			s.store.Close()
			return err
		}
	}
	return nil
}

// newGRPC builds the gRPC server (s.grpc) with its limits, keepalives and authorization, and
// registers the ingest, query, health (s.health, all serving) and reflection services. It returns
// the query service, which the console also uses.
func (s *Server) newGRPC(cfg Config, auth identity.Authorizer, creds grpc.ServerOption) *query.Server {
	maxMsg := cfg.MaxMessageBytes
	if maxMsg <= 0 {
		maxMsg = 4 << 20
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.ChainUnaryInterceptor(auth.Unary),
		grpc.ChainStreamInterceptor(auth.Stream),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	if creds != nil {
		opts = append(opts, creds)
	}
	s.grpc = grpc.NewServer(opts...)
	notifier := query.NewNotifier()
	ing := ingest.New(s.store, s.log.With("service", "ingest"), notifier.Notify, auth.Revoked)
	ing.SetMetrics(s.metrics)
	pb.RegisterIngestServiceServer(s.grpc, ing)
	pb.RegisterWitnessServiceServer(s.grpc, ingest.NewWitness(s.store, s.log.With("service", "witness")))
	qs := query.New(s.store, s.log.With("service", "query"), notifier,
		query.Options{StaleAfter: time.Duration(cfg.StaleAfter), PollInterval: time.Duration(cfg.WatchPoll), Metrics: s.metrics})
	pb.RegisterQueryServiceServer(s.grpc, qs)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	for _, svc := range []string{"", pb.IngestService_ServiceDesc.ServiceName, pb.QueryService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	return qs
}

// newConsole prepares the web console: TLS material, users, operator key and its listener.
func (s *Server) newConsole(cfg Config, qs *query.Server) error {
	cc := cfg.Console
	if cc.InsecurePlaintext {
		if !IsLoopback(cc.Listen) {
			return fmt.Errorf("console.insecure_plaintext is only allowed on a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT), not %q: configure console TLS (console.tls_cert/tls_key, or the collector's tls.cert/tls.key)", cc.Listen)
		}
		s.log.Warn("!!! console serves plain HTTP: loopback demo use only !!!", "listen", cc.Listen)
	} else {
		cert, key := cc.TLSCert, cc.TLSKey
		if cert == "" && key == "" {
			cert, key = cfg.TLS.Cert, cfg.TLS.Key
		}
		if cert == "" || key == "" {
			return errors.New("the console needs a TLS certificate: set console.tls_cert and console.tls_key, or the collector's tls.cert and tls.key")
		}
		l, err := console.NewCertLoader(cert, key)
		if err != nil {
			return err
		}
		s.consoleCerts = l
	}
	var priv ed25519.PrivateKey
	if cc.OperatorKey != "" {
		k, err := optoken.LoadPrivateKey(cc.OperatorKey)
		if err != nil {
			return fmt.Errorf("console.operator_key: %w (create one with 'keyguard token keygen')", err)
		}
		priv = k
	}
	c, err := console.New(console.Options{
		Store: s.store, Query: qs, Log: s.log.With("service", "console"), UsersFile: cc.UsersFile, OperatorKey: priv,
		SessionIdle: time.Duration(cc.SessionIdle), SessionMax: time.Duration(cc.SessionMax),
		StaleAfter: time.Duration(cfg.StaleAfter), Plaintext: cc.InsecurePlaintext,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cc.Listen)
	if err != nil {
		return fmt.Errorf("console: listen on %s: %w", cc.Listen, err)
	}
	s.console, s.consoleLis = c, lis
	return nil
}

// ConsoleAddr is the console's bound address (nil when the console is off).
func (s *Server) ConsoleAddr() net.Addr {
	if s.consoleLis == nil {
		return nil
	}
	return s.consoleLis.Addr()
}

// Addr is the bound listen address.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Store is the open store.
func (s *Server) Store() *store.Store { return s.store }

// MetricsAddr is the bound metrics address (nil when metrics are off).
func (s *Server) MetricsAddr() net.Addr {
	if s.metricsLis == nil {
		return nil
	}
	return s.metricsLis.Addr()
}

// TLS is the TLS manager (nil in plaintext mode).
func (s *Server) TLS() *tlsconfig.Manager { return s.tls }

// Serve runs until ctx is cancelled, then stops (2s grace for in-flight calls) and closes storage.
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("collector serving", "addr", s.lis.Addr().String(), "storage", s.store.Backend(), "tls", s.tls != nil)
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	retCtx, stopRet := context.WithCancel(ctx)
	retDone := make(chan struct{})
	go func() {
		defer close(retDone)
		var wg sync.WaitGroup
		wg.Go(func() { s.retention(retCtx) })
		wg.Go(func() { s.witness(retCtx) })
		wg.Go(func() { s.optimize(retCtx) })
		if s.forward != nil {
			wg.Go(func() { s.forward.run(retCtx) })
		}
		wg.Wait()
	}()
	alertsDone := make(chan struct{})
	go func() {
		defer close(alertsDone)
		if s.alerts != nil {
			s.alerts.Run(retCtx)
		}
	}()
	consoleDone := make(chan struct{})
	if s.console != nil {
		go func() {
			defer close(consoleDone)
			if err := s.console.Serve(retCtx, s.consoleLis, s.consoleCerts); err != nil && retCtx.Err() == nil {
				s.log.Error("console stopped", "err", err)
			}
		}()
	} else {
		close(consoleDone)
	}
	metricsDone := make(chan struct{})
	go func() {
		defer close(metricsDone)
		if s.metricsLis == nil {
			return
		}
		if err := metricsserver.Serve(retCtx, s.metricsLis, s.metrics.Registry(), s.log); err != nil {
			s.log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stopRet()
	<-retDone
	<-alertsDone
	<-consoleDone
	<-metricsDone
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		// Agent streams stay open until the agent closes them; cut them. Batches not yet committed are
		// not acknowledged, so agents resend them to the next collector.
		s.grpc.Stop()
	}
	s.log.Info("collector stopped")
	if cerr := s.store.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// witness appends every host's chain state to the witness file periodically and at shutdown.
func (s *Server) witness(ctx context.Context) {
	if s.cfg.Witness.File == "" {
		return
	}
	every := time.Duration(s.cfg.Witness.Interval)
	if every <= 0 {
		every = 5 * time.Minute
	}
	write := func(ctx context.Context) {
		cps, err := s.store.Checkpoints(ctx, time.Now().UTC())
		if err == nil {
			err = store.AppendWitness(s.cfg.Witness.File, cps)
		}
		if err != nil {
			s.log.Error("writing checkpoints to the witness failed; will retry", "file", s.cfg.Witness.File, "err", err)
		}
	}
	write(ctx)
	for {
		select {
		case <-ctx.Done():
			stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			write(stop)
			cancel()
			return
		case <-time.After(every):
			write(ctx)
		}
	}
}

// optimize refreshes the query planner's statistics hourly (see store.Optimize).
func (s *Server) optimize(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
		if err := s.store.Optimize(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("refreshing query statistics failed; will retry", "err", err)
		}
	}
}

func (s *Server) retention(ctx context.Context) {
	maxAge := time.Duration(s.cfg.Retention.MaxAge)
	if maxAge <= 0 {
		return
	}
	every := time.Duration(s.cfg.Retention.Interval)
	if every <= 0 {
		every = time.Hour
	}
	for {
		n, err := s.store.DeleteBefore(ctx, time.Now().Add(-maxAge))
		if err != nil && ctx.Err() == nil {
			s.log.Error("retention run failed; will retry", "err", err)
		} else if n > 0 {
			s.log.Info("retention deleted expired events", "count", n, "max_age", maxAge)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
