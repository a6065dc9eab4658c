// Package console is the collector's operator web console: a fleet view, event search with live updates
// (Server-Sent Events), event details, hash-chain verification and, for admins, issuing signed
// break-glass and uninstall tokens. It is served by keyguard-collector over HTTPS on its own listener.
//
// Every read goes through the same QueryService implementation (package query) as the gRPC API, called
// in-process, so filters, limits, validation and paging are identical. Operators log in with a name and
// password from a users file (argon2id or bcrypt hashes); sessions live in the collector's database, so
// every collector sharing a PostgreSQL database accepts them. Pages are html/template with go:embed; the
// only script is the small static/console.js, and the Content-Security-Policy allows no inline code.
package console

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyguard/keyguard/collector/internal/query"
	"github.com/keyguard/keyguard/collector/internal/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Defaults.
const (
	DefaultSessionIdle = 30 * time.Minute
	DefaultSessionMax  = 12 * time.Hour
	maxLiveStreams     = 64
	maxBodyBytes       = 64 << 10
	maxQueryBytes      = 16 << 10
)

// Options configure a Console.
type Options struct {
	Store *store.Store
	// Query is the collector's QueryService implementation (shared with gRPC, so live watchers are woken
	// by this collector's ingest).
	Query *query.Server
	Log   *slog.Logger
	// UsersFile is the path of the users file (name:role:hash lines).
	UsersFile string
	// OperatorKey signs issued tokens; nil disables issuance.
	OperatorKey ed25519.PrivateKey
	// SessionIdle and SessionMax expire sessions unused for that long, or that old.
	SessionIdle, SessionMax time.Duration
	// StaleAfter: hosts silent for longer stand out in the fleet view.
	StaleAfter time.Duration
	// Plaintext: served over HTTP (loopback only); the Origin check then expects http://.
	Plaintext bool
	// Now overrides the clock (tests).
	Now func() time.Time
}

// Console is the HTTP handler of the console.
type Console struct {
	opts    Options
	log     *slog.Logger
	st      *store.Store
	qs      *query.Server
	users   *userDB
	pages   map[string]*template.Template
	mux     *http.ServeMux
	limiter *limiter
	live    atomic.Int32
	static  http.Handler
}

// New checks the options, loads the users file and builds the handler.
func New(o Options) (*Console, error) {
	if o.Store == nil || o.Query == nil {
		return nil, errors.New("console: store and query server are required")
	}
	if o.UsersFile == "" {
		return nil, errors.New("console.users_file is required: create it with 'keyguard-collector console user add -users FILE -name NAME -role admin'")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.SessionIdle <= 0 {
		o.SessionIdle = DefaultSessionIdle
	}
	if o.SessionMax <= 0 {
		o.SessionMax = DefaultSessionMax
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	users, err := loadUserDB(o.UsersFile)
	if err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	sub, _ := fs.Sub(staticFS, "static")
	c := &Console{opts: o, log: o.Log, st: o.Store, qs: o.Query, users: users, pages: pages,
		limiter: newLimiter(), static: http.StripPrefix("/static/", http.FileServerFS(sub))}
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	m.Handle("GET /static/", c.static)
	m.HandleFunc("GET /login", c.loginPage)
	m.HandleFunc("POST /login", c.loginPost)
	m.Handle("POST /logout", c.authed(c.logout))
	m.Handle("GET /{$}", c.authed(func(w http.ResponseWriter, r *http.Request, _ *session) {
		http.Redirect(w, r, "/fleet", http.StatusSeeOther)
	}))
	m.Handle("GET /fleet", c.authed(c.fleet))
	m.Handle("GET /events", c.authed(c.events))
	m.Handle("GET /events/stream", c.authed(c.stream))
	m.Handle("GET /event/{host}/{pos}", c.authed(c.eventDetail))
	m.Handle("GET /chain", c.authed(c.chain))
	m.Handle("GET /tokens", c.authed(c.admin(c.tokensPage)))
	m.Handle("POST /tokens", c.authed(c.admin(c.tokensPost)))
	c.mux = m
}

// ServeHTTP applies the security headers and request limits, then routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if !c.opts.Plaintext {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if len(r.URL.RawQuery) > maxQueryBytes {
		c.fail(w, r, nil, http.StatusRequestURITooLong, "The query string is longer than 16 KiB.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	c.mux.ServeHTTP(w, r)
}

// CertLoader serves a certificate and key from files, reloading them when they change.
type CertLoader struct {
	cert, key string
	mu        sync.Mutex
	cur       *tls.Certificate
	stamp     string
	checked   time.Time
}

// NewCertLoader loads the pair once (so errors show at start).
func NewCertLoader(cert, key string) (*CertLoader, error) {
	l := &CertLoader{cert: cert, key: key}
	if _, err := l.GetCertificate(nil); err != nil {
		return nil, err
	}
	return l, nil
}

func fileStamp(paths ...string) string {
	s := ""
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return s
}

// GetCertificate implements tls.Config.GetCertificate.
func (l *CertLoader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != nil && time.Since(l.checked) < time.Second {
		return l.cur, nil
	}
	l.checked = time.Now()
	st := fileStamp(l.cert, l.key)
	if l.cur != nil && st == l.stamp {
		return l.cur, nil
	}
	pair, err := tls.LoadX509KeyPair(l.cert, l.key)
	if err != nil {
		if l.cur != nil {
			return l.cur, nil // keep serving the previous pair while files are being replaced
		}
		return nil, fmt.Errorf("load console certificate %s and key %s: %w", l.cert, l.key, err)
	}
	l.cur, l.stamp = &pair, st
	return l.cur, nil
}

// Serve serves the console on lis until ctx ends. With certs nil it serves plain HTTP (the caller
// allows that only on loopback).
func (c *Console) Serve(ctx context.Context, lis net.Listener, certs *CertLoader) error {
	srv := &http.Server{
		Handler:           c,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx }, // ends live streams at shutdown
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	if certs != nil {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate, NextProtos: []string{"h2", "http/1.1"}}
		lis = tls.NewListener(lis, srv.TLSConfig)
	}
	go c.expireLoop(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	c.log.Info("console serving", "addr", lis.Addr().String(), "tls", certs != nil)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		srv.Close()
	}
	return nil
}

func (c *Console) expireLoop(ctx context.Context) {
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		now := c.opts.Now()
		if _, err := c.st.ExpireSessions(ctx, now.Add(-c.opts.SessionMax), now.Add(-c.opts.SessionIdle)); err != nil && ctx.Err() == nil {
			c.log.Warn("expire console sessions", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
