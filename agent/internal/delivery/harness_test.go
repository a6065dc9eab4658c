package delivery

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" database/sql driver
	"google.golang.org/protobuf/proto"
	_ "modernc.org/sqlite" // "sqlite" database/sql driver

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/pgtest"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestMain stops the test binary's private PostgreSQL server (pgtest.Shared, started on first use by the
// postgres backend) and removes the built binaries.
func TestMain(m *testing.M) {
	code := pgtest.RunMain(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// ---- binaries ----

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

type binaries struct{ collector, loadgen string }

// buildBinaries builds keyguard-collector and keyguard-loadgen once per test binary.
func buildBinaries(tb testing.TB) binaries {
	tb.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		buildDir, buildErr = os.MkdirTemp("", "keyguard-delivery-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./collector/cmd/keyguard-collector", "./agent/cmd/keyguard-loadgen")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatalf("build binaries: %v", buildErr)
	}
	return binaries{
		collector: filepath.Join(buildDir, "keyguard-collector"),
		loadgen:   filepath.Join(buildDir, "keyguard-loadgen"),
	}
}

// ---- files ----

func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// ---- certificates ----

// pki is a test CA in a temporary directory; certificates come from collector/certgen, the code behind
// 'keyguard-collector certs', so they have the shapes the collector expects (see
// collector/internal/identity): host client certificates carry OU certgen.OUHost and the host name as CN.
type pki struct {
	dir    string
	caFile string
	ca     *certgen.Pair
}

func newPKI(tb testing.TB) *pki {
	tb.Helper()
	ca, err := certgen.NewCA("keyguard delivery test CA", 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	p := &pki{dir: tb.TempDir(), ca: ca}
	if err := ca.Write(p.dir, "ca"); err != nil {
		tb.Fatal(err)
	}
	p.caFile = filepath.Join(p.dir, "ca.crt")
	return p
}

// issue writes a certificate signed by the CA and its key, and returns their paths. A server
// certificate is valid for localhost and 127.0.0.1.
func (p *pki) issue(tb testing.TB, file, cn, ou string, server bool) (certFile, keyFile string) {
	tb.Helper()
	req := certgen.Request{CommonName: cn, OU: ou, Server: server, NotAfter: time.Now().Add(24 * time.Hour)}
	if server {
		req.DNSNames = []string{"localhost"}
		req.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	pair, err := p.ca.Issue(req)
	if err != nil {
		tb.Fatal(err)
	}
	if err := pair.Write(p.dir, file); err != nil {
		tb.Fatal(err)
	}
	return filepath.Join(p.dir, file+".crt"), filepath.Join(p.dir, file+".key")
}

func (p *pki) host(tb testing.TB, host string) (certFile, keyFile string) {
	return p.issue(tb, "host-"+host, host, certgen.OUHost, false)
}

// ---- processes ----

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  *syncBuffer
	log  string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProc(tb testing.TB, name, logDir string, bin string, args ...string) *proc {
	tb.Helper()
	logPath := filepath.Join(logDir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	lf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	p := &proc{name: name, done: make(chan struct{}), out: &syncBuffer{}, log: logPath}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = lf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	tb.Cleanup(func() { p.kill() })
	return p
}

// kill SIGKILLs the process and waits for it.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit by itself.
func (p *proc) wait(tb testing.TB, timeout time.Duration) error {
	tb.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s did not finish within %s", p.name, timeout)
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ---- collector ----

type collector struct {
	tb     testing.TB
	bin    string
	config string
	addr   string
	dir    string
	p      *proc
}

// startCollector writes a configuration and starts keyguard-collector on a fresh loopback port.
func startCollector(tb testing.TB, b binaries, k *pki, name, dsn string) *collector {
	tb.Helper()
	c := newCollector(tb, b, k, name, dsn)
	c.start()
	return c
}

// newCollector prepares a collector (address, certificate, configuration) without starting it.
func newCollector(tb testing.TB, b binaries, k *pki, name, dsn string) *collector {
	tb.Helper()
	dir := tb.TempDir()
	cert, key := k.issue(tb, "collector-"+name, "collector-"+name, certgen.OUServer, true)
	c := &collector{tb: tb, bin: b.collector, addr: freeAddr(tb), dir: dir}
	c.config = filepath.Join(dir, "collector.yaml")
	writeFile(tb, c.config, fmt.Appendf(nil, `listen: %q
name: %q
tls:
  cert: %q
  key: %q
  client_ca: %q
storage:
  dsn: %q
`, c.addr, name, cert, key, k.caFile, dsn))
	return c
}

func (c *collector) start() {
	c.tb.Helper()
	c.p = startProc(c.tb, "collector", c.dir, c.bin, "serve", "-config", c.config)
	// Ready when it accepts TCP connections.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", c.addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return
		}
		if c.p.exited() || time.Now().After(deadline) {
			c.tb.Fatalf("collector did not start listening on %s: %v\n%s", c.addr, err, c.p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs the collector.
func (c *collector) kill() { c.p.kill() }

// restart starts the collector again on the same address.
func (c *collector) restart() { c.start() }

// ---- agent (loadgen) ----

type agentProc struct {
	tb     testing.TB
	bin    string
	dir    string
	spool  string
	args   []string
	p      *proc
	runs   int
	target uint64
}

func newAgent(tb testing.TB, b binaries, k *pki, host, collectorAddr string, target uint64, extra ...string) *agentProc {
	tb.Helper()
	cert, key := k.host(tb, host)
	dir := tb.TempDir()
	a := &agentProc{tb: tb, bin: b.loadgen, dir: dir, spool: filepath.Join(dir, "spool"), target: target}
	a.args = append([]string{
		"-collector", collectorAddr, "-ca", k.caFile, "-cert", cert, "-key", key,
		"-server-name", "localhost", "-spool", a.spool, "-target", strconv.FormatUint(target, 10),
		"-backoff-max", "500ms",
	}, extra...)
	return a
}

func (a *agentProc) start() {
	a.runs++
	args := append([]string{"-run-id", strconv.Itoa(a.runs)}, a.args...)
	a.p = startProc(a.tb, "loadgen", a.dir, a.bin, args...)
}

type summary struct {
	RunID     string  `json:"run_id"`
	Submitted uint64  `json:"submitted"`
	Refused   uint64  `json:"refused"`
	NextSeq   uint64  `json:"next_seq"`
	AckedSeq  uint64  `json:"acked_seq"`
	Seconds   float64 `json:"seconds"`
	Resent    uint64  `json:"resent"`
	Reconnect uint64  `json:"reconnects"`
}

// finish waits for the loadgen to deliver everything and exit, and returns its summary.
func (a *agentProc) finish(timeout time.Duration) summary {
	a.tb.Helper()
	if err := a.p.wait(a.tb, timeout); err != nil {
		a.tb.Fatalf("loadgen: %v\n%s", err, a.p.logTail())
	}
	var s summary
	if err := json.Unmarshal([]byte(a.p.out.String()), &s); err != nil {
		a.tb.Fatalf("loadgen summary %q: %v", a.p.out.String(), err)
	}
	return s
}

// ---- TCP proxy for cutting the network path ----

type proxy struct {
	addr   string
	mu     sync.Mutex
	target string
	ln     net.Listener
	conns  map[net.Conn]struct{}
}

func newProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	p := &proxy{addr: freeAddr(tb), target: target, conns: map[net.Conn]struct{}{}}
	p.restore(tb)
	tb.Cleanup(p.cut)
	return p
}

// restore listens again on the proxy's address.
func (p *proxy) restore(tb testing.TB) {
	tb.Helper()
	var ln net.Listener
	var err error
	for range 100 { // the port may take a moment to be reusable
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("proxy listen: %v", err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.accept(ln)
}

func (p *proxy) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go pipe(c, up)
		go pipe(up, c)
	}
}

func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// cut closes the listener and every open connection: the path is gone.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) retarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
}

// ---- database checks ----

func openDB(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	driver, ddsn := "sqlite", "file:"+dsn+"?_pragma=busy_timeout(30000)"
	if strings.HasPrefix(dsn, "postgres://") {
		driver, ddsn = "pgx", dsn
	}
	db, err := sql.Open(driver, ddsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// ackedSeq is the collector's acknowledged sequence number for host (0 if unknown yet).
func ackedSeq(db *sql.DB, host string) uint64 {
	var acked int64
	if err := db.QueryRow(`SELECT acked_seq FROM hosts WHERE host = $1`, host).Scan(&acked); err != nil {
		return 0
	}
	return uint64(acked)
}

// waitAcked waits until the collector acknowledged at least seq for host.
func waitAcked(tb testing.TB, db *sql.DB, host string, seq uint64, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for ackedSeq(db, host) < seq {
		if time.Now().After(deadline) {
			tb.Fatalf("host %s: collector acknowledged %d, waited for %d", host, ackedSeq(db, host), seq)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var detailRE = regexp.MustCompile(`^loadgen run=(\S+) n=(\d+)$`)

// verifyExactlyOnce checks what the database holds for host: sequence numbers 1..max, each once,
// max >= target, and for every loadgen run its events n=1..K each exactly once (what a SIGKILL may
// lose is only the unspooled tail of a run, never something in the middle). Loss reports are not
// expected (the load generator never overfills its queue). It returns the number of events.
func verifyExactlyOnce(tb testing.TB, db *sql.DB, host string, target uint64) uint64 {
	tb.Helper()
	rows, err := db.Query(`SELECT seq, payload FROM events WHERE host = $1 ORDER BY seq`, host)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var n, prev uint64
	perRun := map[string]map[uint64]int{}
	var errs []string
	fail := func(format string, args ...any) {
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	for rows.Next() {
		var seq int64
		var payload []byte
		if err := rows.Scan(&seq, &payload); err != nil {
			tb.Fatal(err)
		}
		n++
		if uint64(seq) != prev+1 {
			fail("seq %d follows %d", seq, prev)
		}
		prev = uint64(seq)
		var ev keyguardv1.Event
		if err := proto.Unmarshal(payload, &ev); err != nil {
			fail("seq %d: payload: %v", seq, err)
			continue
		}
		if ev.GetSeq() != uint64(seq) {
			fail("row seq %d holds event seq %d", seq, ev.GetSeq())
		}
		if lr := ev.GetLossReport(); lr != nil {
			fail("seq %d: unexpected loss report: %v", seq, lr)
			continue
		}
		m := detailRE.FindStringSubmatch(ev.GetMemoryAccess().GetDetail())
		if m == nil {
			fail("seq %d: not a loadgen event: %v", seq, &ev)
			continue
		}
		k, _ := strconv.ParseUint(m[2], 10, 64)
		if perRun[m[1]] == nil {
			perRun[m[1]] = map[uint64]int{}
		}
		perRun[m[1]][k]++
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	if n < target {
		fail("%d events stored, want at least %d", n, target)
	}
	if acked := ackedSeq(db, host); acked != prev {
		fail("collector acked_seq %d but highest stored seq %d", acked, prev)
	}
	for run, ks := range perRun {
		for k := uint64(1); k <= uint64(len(ks)); k++ {
			if c := ks[k]; c != 1 {
				fail("run %s: event n=%d stored %d times (run has %d distinct events)", run, k, c, len(ks))
				break
			}
		}
	}
	if len(errs) > 0 {
		tb.Fatalf("host %s: delivery not exactly-once:\n  %s", host, strings.Join(errs, "\n  "))
	}
	return n
}

// backends lists the storage backends to run a test on: a SQLite file, and a database on the test
// binary's private PostgreSQL server (skipped when PostgreSQL is not installed, unless
// KEYGUARD_REQUIRE_POSTGRES is set).
func backends() []struct {
	name string
	dsn  func(tb testing.TB) string
} {
	return []struct {
		name string
		dsn  func(tb testing.TB) string
	}{
		{"sqlite", func(tb testing.TB) string { return filepath.Join(tb.TempDir(), "events.db") }},
		{"postgres", pgtest.NewDatabase},
	}
}

// sampleEvent is a realistic denied memory access (about 300 bytes marshalled), like the loadgen's.
func sampleEvent() *keyguardv1.Event {
	return &keyguardv1.Event{
		Kind: &keyguardv1.Event_MemoryAccess{MemoryAccess: &keyguardv1.MemoryAccess{
			Accessor: &keyguardv1.Process{
				Pid: 4242, Tid: 4242, Comm: "gdb", ExePath: "/usr/bin/gdb", ExeDev: 0x801, ExeInode: 123456,
				Uid: 1000, Euid: 1000, CgroupPath: "/user.slice/user-1000.slice/session-3.scope", CgroupId: 9876,
			},
			Target: &keyguardv1.Process{
				Pid: 1717, Tid: 1717, Comm: "signer", ExePath: "/opt/signer/bin/signer", ExeDev: 0x801, ExeInode: 654321,
				Uid: 998, Euid: 998, CgroupPath: "/system.slice/signer.service", CgroupId: 4321,
			},
			Operation:       keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH,
			AccessMode:      0x12,
			AccessModeNames: []string{"PTRACE_MODE_ATTACH", "PTRACE_MODE_REALCREDS"},
			Rule:            "signing-keys",
			PolicyMode:      keyguardv1.PolicyMode_POLICY_MODE_ENFORCE,
			Decision:        keyguardv1.Decision_DECISION_DENIED,
		}},
	}
}
