// Package store keeps events in SQLite (embedded, default) or PostgreSQL (shared by several collectors):
// schema migrations, exactly-once append with the per-host hash chain, queries, chain verification and
// retention.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyguard/keyguard/collector/internal/chain"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver (pure Go)
)

// Backend names a storage engine.
type Backend string

// Backends.
const (
	SQLite   Backend = "sqlite"
	Postgres Backend = "postgres"
)

// DefaultMaxAhead is how far beyond a host's acknowledged sequence number an event may be.
const DefaultMaxAhead = 1 << 22

// Errors callers map to gRPC codes.
var (
	// ErrConflict: a sequence number already stored arrived with different content.
	ErrConflict = errors.New("sequence number already stored with different content")
	// ErrInvalid: the input cannot be stored as given.
	ErrInvalid = errors.New("invalid input")
	// ErrTooBroad: a query ran longer than Options.QueryTimeout and was stopped.
	ErrTooBroad = errors.New("query too broad")
	// ErrQueryBusy: the query budget stayed in use by other queries for the whole query timeout.
	ErrQueryBusy = errors.New("query budget busy")
)

// Query isolation defaults.
const (
	DefaultQueryConns   = 1 // SQLite; PostgreSQL gets 2 (its server has more room)
	DefaultQueryTimeout = 2 * time.Second
)

// Options configure Open.
type Options struct {
	// DSN is "postgres://..." / "postgresql://..." for PostgreSQL, otherwise a SQLite file path
	// (optionally prefixed "sqlite:").
	DSN string
	// Collector names this collector instance in stored rows.
	Collector string
	// ChainKey, when set, makes chain hashes HMAC-SHA256 with this key (all collectors sharing a
	// database must use the same key, and verification needs it).
	ChainKey []byte
	// MaxAhead bounds seq - acked_seq for accepted events (0 = DefaultMaxAhead).
	MaxAhead uint64
	// QueryConns is the connection budget of event queries (List), kept apart from ingest's
	// connections so that queries cannot take them all (0 = DefaultQueryConns).
	QueryConns int
	// QueryTimeout stops an event query that runs longer (0 = DefaultQueryTimeout); the caller gets
	// ErrTooBroad.
	QueryTimeout time.Duration
	// Witness, when set, is a witness file (see witness.go): retention appends a tombstone to it
	// before it moves a host's chain base, and refuses to cut if it cannot.
	Witness string
	// Forward, when set, receives every agent checkpoint and tombstone stored (for a second collector
	// kept as witness); it must not block.
	Forward func(*pb.WitnessEntry)
	// Logger receives operational messages (nil = discard).
	Logger *slog.Logger
	// MustExist opens an existing database only: for SQLite, a missing file (or folder) is an error
	// and nothing is created. Read-only commands (verify) set it, so a mistyped path fails instead of
	// yielding an empty database.
	MustExist bool
	// Maintain runs the start-up maintenance after the migrations: filling in the severity of rows
	// stored before schema version 3 and refreshing the planner's statistics (Optimize). The serving
	// collector sets it; read-only commands (verify, checkpoint) do not, so they never write.
	Maintain bool
	// Timed, when set, receives the duration of each append (and of its commit alone), list, hosts
	// and verify operation, named "append", "commit", "list", "hosts", "verify" (for metrics).
	Timed func(op string, d time.Duration)
}

// Store is an open event database. It is safe for concurrent use.
type Store struct {
	db         *sql.DB
	backend    Backend
	hasher     chain.Hasher
	collector  string
	maxAhead   uint64
	witness    string
	forward    func(*pb.WitnessEntry)
	insertMu   sync.Mutex
	insertFull *sql.Stmt // the INSERT of insertChunk rows, prepared once (parsing it cost ~6% of an append)
	qdb        *sql.DB   // event queries: own connections, statement timeout
	qtimeout   time.Duration
	qslots     chan struct{} // one per query connection
	ckptStop   chan struct{} // SQLite: stops checkpointLoop
	ckptDone   chan struct{}
	ckptOnce   sync.Once
	// maxScanBlocks bounds the blocks of filter terms a query reads row by row (terms.go; tests lower it).
	maxScanBlocks int
	log           *slog.Logger
	timed         func(op string, d time.Duration)
}

// since reports the time since start for op to Options.Timed.
func (s *Store) since(op string, start time.Time) {
	if s.timed != nil {
		s.timed(op, time.Since(start))
	}
}

// ParseDSN says which backend a DSN selects and returns the driver name and driver DSN.
func ParseDSN(dsn string) (Backend, string, string, error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return Postgres, "pgx", dsn, nil
	case dsn == "":
		return "", "", "", fmt.Errorf("%w: empty storage DSN: give a SQLite file path or a postgres:// URL", ErrInvalid)
	}
	path := strings.TrimPrefix(dsn, "sqlite:")
	path = strings.TrimPrefix(path, "//")
	if path == "" {
		return "", "", "", fmt.Errorf("%w: SQLite DSN %q has no file path", ErrInvalid, dsn)
	}
	if strings.ContainsAny(path, "?#") {
		return "", "", "", fmt.Errorf("%w: SQLite path %q must not contain '?' or '#'", ErrInvalid, path)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(30000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)") // an acknowledged commit survives power loss, not only a crash
	// The write-ahead log is copied into the database by checkpointLoop, off the commit path; a commit
	// checkpoints by itself only when the log has grown past this many pages (the loop fell behind).
	q.Add("_pragma", "wal_autocheckpoint("+strconv.Itoa(walFallbackPages)+")")
	q.Add("_txlock", "immediate")
	return SQLite, "sqlite", "file:" + path + "?" + q.Encode(), nil
}

// Open connects, applies pending migrations and returns the store.
func Open(ctx context.Context, opts Options) (*Store, error) {
	backend, driver, dsn, err := ParseDSN(opts.DSN)
	if err != nil {
		return nil, err
	}
	if backend == SQLite {
		path := strings.TrimPrefix(strings.TrimPrefix(opts.DSN, "sqlite:"), "//")
		if opts.MustExist {
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("no SQLite database at %s (check the path; nothing was created): %w", path, err)
			}
		} else if dir := filepath.Dir(path); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, fmt.Errorf("create directory for SQLite database %s: %w", path, err)
			}
		}
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s database: %w", backend, err)
	}
	if backend == SQLite {
		db.SetMaxOpenConns(8)
	} else {
		db.SetMaxOpenConns(16)
	}
	db.SetConnMaxIdleTime(5 * time.Minute)
	pingCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to %s database (check the DSN, that the server runs and the credentials): %w", backend, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		db:        db,
		backend:   backend,
		hasher:    chain.NewHasher(opts.ChainKey),
		collector: opts.Collector,
		maxAhead:  opts.MaxAhead,
		witness:   opts.Witness,
		forward:   opts.Forward,
		log:       log,
		timed:     opts.Timed,

		maxScanBlocks: maxScanBlocks,
	}
	if s.maxAhead == 0 {
		s.maxAhead = DefaultMaxAhead
	}
	if s.collector == "" {
		s.collector, _ = os.Hostname()
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.openQueryPool(driver, dsn, opts); err != nil {
		db.Close()
		return nil, err
	}
	if backend == SQLite {
		s.ckptStop, s.ckptDone = make(chan struct{}), make(chan struct{})
		go s.checkpointLoop()
	}
	if opts.Maintain {
		if err := s.maintain(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// maintain is the serving collector's start-up maintenance (Options.Maintain).
func (s *Store) maintain(ctx context.Context) error {
	if err := s.backfillSeverity(ctx); err != nil {
		return err
	}
	return s.Optimize(ctx)
}

// Collector returns the name of this collector instance (stored in rows it writes).
func (s *Store) Collector() string { return s.collector }

// Optimize refreshes the planner's statistics so that a filter picks its most selective index (a
// host filter alone would otherwise be read row by row for a rule that matches nothing). SQLite
// samples (analysis_limit) so it stays fast on large tables; PostgreSQL's autovacuum analyzes by
// itself. Run it at start and periodically (the server does so hourly).
func (s *Store) Optimize(ctx context.Context) error {
	if s.backend != SQLite {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, `PRAGMA analysis_limit = 1000`); err != nil {
		return fmt.Errorf("optimize database: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, `ANALYZE`); err != nil {
		return fmt.Errorf("optimize database (ANALYZE): %w", err)
	}
	return nil
}

// openQueryPool opens the separate connections of event queries: at most QueryConns of them,
// read-only on SQLite, with a server-side statement timeout on PostgreSQL (SQLite queries are
// interrupted when their context ends).
func (s *Store) openQueryPool(driver, dsn string, opts Options) error {
	s.qtimeout = opts.QueryTimeout
	if s.qtimeout <= 0 {
		s.qtimeout = DefaultQueryTimeout
	}
	n := opts.QueryConns
	if n <= 0 {
		n = DefaultQueryConns
		if s.backend == Postgres {
			n = 2 * DefaultQueryConns
		}
	}
	s.qslots = make(chan struct{}, n)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	if s.backend == SQLite {
		dsn += sep + "_pragma=query_only(1)"
	} else {
		// pgx passes unknown URL parameters to the server as run-time settings.
		dsn += sep + "statement_timeout=" + strconv.FormatInt(s.qtimeout.Milliseconds()+500, 10)
	}
	qdb, err := sql.Open(driver, dsn)
	if err != nil {
		return fmt.Errorf("open %s database for queries: %w", s.backend, err)
	}
	qdb.SetMaxOpenConns(n)
	qdb.SetMaxIdleConns(n)
	qdb.SetConnMaxIdleTime(5 * time.Minute)
	s.qdb = qdb
	return nil
}

// Backend returns the storage engine in use.
func (s *Store) Backend() Backend { return s.backend }

// DB exposes the underlying handle (tests use it to tamper with rows).
func (s *Store) DB() *sql.DB { return s.db }

// walFallbackPages is the write-ahead log size (pages of 4 KiB) at which a SQLite commit checkpoints
// by itself; SQLite's default is 1000.
const walFallbackPages = 8000

// checkpointEvery is the period of checkpointLoop.
const checkpointEvery = 100 * time.Millisecond

// checkpointLoop copies the SQLite write-ahead log into the database every checkpointEvery until
// Close (PASSIVE: it waits for no reader or writer). With SQLite's automatic checkpoint the commit
// that crossed 1000 pages did it, and ingest waited for the copy and its fsync (~5% of an append's
// CPU time, and more of its wall time).
func (s *Store) checkpointLoop() {
	defer close(s.ckptDone)
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	var failed bool
	for {
		select {
		case <-s.ckptStop:
			return
		case <-t.C:
		}
		_, err := s.db.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
		if err != nil && !failed {
			s.log.Warn("checkpointing the SQLite write-ahead log failed; commits checkpoint it once it is large", "err", err)
		}
		failed = err != nil
	}
}

// Close closes the database.
func (s *Store) Close() error {
	if s.ckptStop != nil {
		s.ckptOnce.Do(func() { close(s.ckptStop) })
		<-s.ckptDone
	}
	if s.qdb != nil {
		s.qdb.Close()
	}
	s.insertMu.Lock()
	if s.insertFull != nil {
		s.insertFull.Close()
	}
	s.insertMu.Unlock()
	return s.db.Close()
}

// forUpdate is the row-locking suffix for SELECTs inside a write transaction.
func (s *Store) forUpdate() string {
	if s.backend == Postgres {
		return " FOR UPDATE"
	}
	return "" // SQLite write transactions are BEGIN IMMEDIATE: the whole database is locked already
}
