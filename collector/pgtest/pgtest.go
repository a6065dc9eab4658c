// Package pgtest starts a private PostgreSQL server for tests: initdb into a temporary directory, run
// postgres on a free loopback port, hand out fresh databases, and remove everything afterwards.
//
// It is a test-support package, for tests only (it imports testing): the collector's packages and the
// agent's end-to-end delivery tests share it. Production code must not import it.
//
// The binaries are looked up in $KEYGUARD_PG_BIN, then /usr/lib/postgresql/*/bin, then $PATH. When they
// are absent the test is skipped, unless KEYGUARD_REQUIRE_POSTGRES is set (CI sets it), in which case it
// fails. initdb refuses to run as root, so as root the server runs as the "postgres" user (setuid in the
// child process).
//
// Typical use:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }
//	func TestX(t *testing.T) { dsn := pgtest.NewDatabase(t); ... }
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" database/sql driver
)

// RequireEnv names the variable that turns a missing PostgreSQL into a failure instead of a skip.
const RequireEnv = "KEYGUARD_REQUIRE_POSTGRES"

// Server is a running private PostgreSQL server.
type Server struct {
	Dir  string // data directory parent (removed by Stop)
	Port int
	cmd  *exec.Cmd
	done chan error
	logf string
	dbs  atomic.Int64
}

// ErrNoBinaries means PostgreSQL is not installed.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql, or set KEYGUARD_PG_BIN")

// BinDir returns the directory holding initdb and postgres.
func BinDir() (string, error) {
	if d := os.Getenv("KEYGUARD_PG_BIN"); d != "" {
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoBinaries
}

func versionOf(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

// Start runs initdb and postgres. Stop must be called.
func Start(ctx context.Context) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "keyguard-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("create PostgreSQL test directory: %w", err)
	}
	s := &Server{Dir: dir, logf: filepath.Join(dir, "postgres.log")}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root, PostgreSQL needs the unprivileged 'postgres' user (installed with the postgresql package): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("hand PostgreSQL test directory to postgres: %w", err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s.Port = port
		err = s.run(ctx, bin, data, cred)
		if err == nil {
			return s, nil
		}
		if attempt == 3 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func (s *Server) run(ctx context.Context, bin, data string, cred *syscall.Credential) error {
	logFile, err := os.OpenFile(s.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return fmt.Errorf("open PostgreSQL log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(s.Port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.Dir,
		"-c", "max_connections=200", "-c", "shared_buffers=32MB")
	// Pdeathsig: the server dies with the test binary even if Stop is never reached.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan error, 1)
	go func() { s.done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-s.done:
			log, _ := os.ReadFile(s.logf)
			return fmt.Errorf("postgres exited during start: %v\n%s", err, log)
		case <-ctx.Done():
			s.Stop()
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		db, err := sql.Open("pgx", s.DSN("postgres"))
		if err == nil {
			err = db.PingContext(ctx)
			db.Close()
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("postgres did not accept connections within 60s: %w", err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// DSN returns the URL of database name on this server.
func (s *Server) DSN(name string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, name)
}

// CreateDatabase creates a fresh, uniquely named database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	name := sanitize(prefix) + "_" + strconv.FormatInt(s.dbs.Add(1), 10)
	db, err := sql.Open("pgx", s.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		return "", fmt.Errorf("create test database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 40 {
		out = out[len(out)-40:]
	}
	if out == "" || out[0] < 'a' || out[0] > 'z' {
		out = "db" + out
	}
	return out
}

// Stop shuts the server down (fast shutdown, then kill) and removes its directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	}
	os.RemoveAll(s.Dir)
}

// CPU returns the CPU time (user + system) used so far by the server's processes alive now: the
// postmaster and its children (backends, WAL writer, checkpointer).
// Benchmarks report the difference over a run beside their own process's CPU time; a backend that
// exits during the run takes its share with it.
func (s *Server) CPU() (time.Duration, error) {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0, errors.New("PostgreSQL test server not running")
	}
	postmaster := s.cmd.Process.Pid
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	const ticksPerSecond = 100 // USER_HZ of /proc on Linux
	var ticks int64
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so fields start after the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 13 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if ppid, _ := strconv.Atoi(fields[1]); pid != postmaster && ppid != postmaster {
			continue
		}
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		ticks += utime + stime
	}
	return time.Duration(ticks) * time.Second / ticksPerSecond, nil
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
	sharedMu   sync.Mutex
)

// Shared returns the test binary's shared server, starting it on first use. It skips the test when
// PostgreSQL is not installed and KEYGUARD_REQUIRE_POSTGRES is unset, and fails it otherwise.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		s, err := Start(ctx)
		sharedMu.Lock()
		shared, sharedErr = s, err
		sharedMu.Unlock()
	})
	if sharedErr != nil {
		if errors.Is(sharedErr, ErrNoBinaries) && os.Getenv(RequireEnv) == "" {
			tb.Skipf("skipping PostgreSQL test: %v (set %s=1 to make this a failure)", sharedErr, RequireEnv)
		}
		tb.Fatalf("start PostgreSQL test server: %v", sharedErr)
	}
	return shared
}

// NewDatabase returns the DSN of a fresh database on the shared server (see Shared).
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	s := Shared(tb)
	dsn, err := s.CreateDatabase(context.Background(), tb.Name())
	if err != nil {
		tb.Fatal(err)
	}
	return dsn
}

// RunMain runs the tests and then stops the shared server, if one was started. Use it from TestMain.
func RunMain(m *testing.M) int {
	code := m.Run()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.Stop()
	}
	return code
}

// BackendCPU is the CPU time so far of the shared PostgreSQL test server's processes when backend is
// "postgres", and 0 otherwise (SQLite runs inside the benchmark's own process).
func BackendCPU(tb testing.TB, backend string) time.Duration {
	if backend != "postgres" {
		return 0
	}
	d, err := Shared(tb).CPU()
	if err != nil {
		tb.Fatal(err)
	}
	return d
}
