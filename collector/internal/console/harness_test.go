package console_test

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/collectortest"
	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

func TestMain(m *testing.M) {
	code := pgtest.RunMain(m)
	if loadgenDir != "" {
		os.RemoveAll(loadgenDir)
	}
	for _, st := range millionStores {
		st.Close()
	}
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	loadgenOnce sync.Once
	loadgenDir  string
	loadgenPath string
	loadgenErr  error
)

// buildLoadgen builds keyguard-loadgen: the agent's real export pipeline (queue, spool, mTLS gRPC).
func buildLoadgen(t testing.TB) string {
	t.Helper()
	loadgenOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			loadgenErr = err
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		if loadgenDir, loadgenErr = os.MkdirTemp("", "keyguard-console-loadgen-"); loadgenErr != nil {
			return
		}
		loadgenPath = filepath.Join(loadgenDir, "keyguard-loadgen")
		cmd := exec.Command("go", "build", "-o", loadgenPath, "./agent/cmd/keyguard-loadgen")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			loadgenErr = fmt.Errorf("go build keyguard-loadgen: %v\n%s", err, b)
		}
	})
	if loadgenErr != nil {
		t.Fatal(loadgenErr)
	}
	return loadgenPath
}

const (
	adminPass  = "admin-password-0123"
	viewerPass = "viewer-password-0123"
)

// env is a running collector with its console, users and operator key.
type env struct {
	t        *testing.T
	bin      string
	pki      *collectortest.PKI
	c        *collectortest.Collector
	console  string // https://127.0.0.1:PORT
	dsn      string
	users    string
	pub      ed25519.PublicKey
	spools   map[string]string
	dir      string
	loadgen  string
	extraCfg string
}

type envOptions struct {
	DSN    string
	Config string // extra YAML (console keys etc.)
	Hosts  []string
	// Share reuses another env's PKI, users and operator key (several collectors on one database).
	Share *env
}

func startEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	bin := collectortest.Build(t)
	e := &env{t: t, bin: bin, dir: t.TempDir(), spools: map[string]string{}, dsn: o.DSN}
	if o.Share != nil {
		e.pki, e.users, e.pub, e.spools = o.Share.pki, o.Share.users, o.Share.pub, o.Share.spools
	} else {
		hosts := append([]string{"web1", "web2", "old1", "evil1"}, o.Hosts...)
		e.pki = collectortest.NewPKI(t, bin, hosts...)
		e.users = filepath.Join(e.dir, "users")
		for _, u := range []struct{ name, role, pass string }{{"alice", "admin", adminPass}, {"victor", "viewer", viewerPass}, {"bob", "viewer", viewerPass}} {
			cmd := exec.Command(bin, "console", "user", "add", "-users", e.users, "-name", u.name, "-role", u.role)
			cmd.Stdin = strings.NewReader(u.pass + "\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("console user add: %v\n%s", err, out)
			}
		}
		keyBase := filepath.Join(e.dir, "operator")
		if err := optoken.WriteKeyPair(keyBase); err != nil {
			t.Fatal(err)
		}
		pub, err := optoken.LoadPublicKey(keyBase + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		e.pub = pub
	}
	cfg := filepath.Join(e.dir, "collector.yaml")
	yaml := fmt.Sprintf("console:\n  listen: 127.0.0.1:0\n  users_file: %q\n  operator_key: %q\n", e.users, filepath.Join(filepath.Dir(e.users), "operator.key"))
	if o.Config != "" {
		yaml += o.Config
	}
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	caddr := filepath.Join(e.dir, "console-addr")
	e.c = collectortest.Start(t, bin, collectortest.Options{PKI: e.pki, DSN: o.DSN, Args: []string{"-config", cfg, "-console-addr-file", caddr}})
	a, err := os.ReadFile(caddr)
	if err != nil {
		t.Fatalf("console address: %v\n%s", err, e.c.Log())
	}
	e.console = "https://" + strings.TrimSpace(string(a))
	e.loadgen = buildLoadgen(t)
	return e
}

// push sends events as host through keyguard-loadgen (the agent's export pipeline over mTLS gRPC) and
// waits until the collector acknowledged them.
func (e *env) push(host string, evs ...*pb.Event) {
	e.t.Helper()
	var sb strings.Builder
	for _, ev := range evs {
		b, err := protojson.Marshal(ev)
		if err != nil {
			e.t.Fatal(err)
		}
		sb.Write(b)
		sb.WriteByte('\n')
	}
	f := filepath.Join(e.t.TempDir(), "events.jsonl")
	if err := os.WriteFile(f, []byte(sb.String()), 0o600); err != nil {
		e.t.Fatal(err)
	}
	spool, ok := e.spools[host]
	if !ok {
		spool = filepath.Join(e.dir, "spool-"+host)
		e.spools[host] = spool
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.loadgen, "-collector", e.c.Addr(), "-ca", e.pki.File("ca.crt"),
		"-cert", e.pki.File(host+".crt"), "-key", e.pki.File(host+".key"), "-server-name", "localhost",
		"-spool", spool, "-events", f, "-backoff-max", "200ms")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("keyguard-loadgen for %s: %v\n%s\ncollector log:\n%s", host, err, out, e.c.Log())
	}
}

var t0 = time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)

func at(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }

func health(version, kernel string, lsm, pinned bool, protected uint32, findings ...*pb.PostureFinding) *pb.Event {
	return &pb.Event{Time: at(0), AgentVersion: version, Kind: &pb.Event_AgentHealth{AgentHealth: &pb.AgentHealth{
		State: pb.AgentState_AGENT_STATE_STARTED, AgentVersion: version, KernelRelease: kernel, LsmActive: lsm,
		EnforcementPinned: pinned, ProtectedProcessCount: protected, Findings: findings,
	}}}
}

func memAccess(d time.Duration, comm, exe string, pid uint32, dec pb.Decision, rule string) *pb.Event {
	return &pb.Event{Time: at(d), Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
		Accessor:  &pb.Process{Pid: pid, Tid: pid, Comm: comm, ExePath: exe, Uid: 1000, Euid: 1000, CgroupPath: "/user.slice/user-1000.slice/session-3.scope", CgroupId: 77},
		Target:    &pb.Process{Pid: 1717, Tid: 1717, Comm: "signer", ExePath: "/opt/signer/bin/signer", Uid: 998, Euid: 998, CgroupPath: "/system.slice/signer.service", CgroupId: 42},
		Operation: pb.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, Rule: rule, PolicyMode: pb.PolicyMode_POLICY_MODE_ENFORCE,
		Decision: dec, AccessMode: 0x12, AccessModeNames: []string{"PTRACE_MODE_ATTACH", "PTRACE_MODE_REALCREDS"},
	}}}
}

func coreDump(d time.Duration) *pb.Event {
	return &pb.Event{Time: at(d), Kind: &pb.Event_CoreDump{CoreDump: &pb.CoreDump{
		Process: &pb.Process{Pid: 1717, Comm: "signer", ExePath: "/opt/signer/bin/signer", Uid: 998, CgroupPath: "/system.slice/signer.service"},
		Signal:  11, Rule: "signing-keys", Action: pb.CoreDumpAction_CORE_DUMP_ACTION_REDACTED, Reason: "dumps: redact",
		Redacted:        []*pb.RedactedBytes{{Kind: "anon", Bytes: 1 << 20}, {Kind: "stack", Bytes: 8192}},
		VerifierVerdict: "clean", Destination: "|/usr/lib/systemd/systemd-coredump",
	}}}
}

func lossReport(d time.Duration, n uint64) *pb.Event {
	return &pb.Event{Time: at(d), Kind: &pb.Event_LossReport{LossReport: &pb.LossReport{
		Source: pb.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER, Count: n,
		PerKind:         []*pb.KindCount{{Kind: pb.EventKind_EVENT_KIND_MEMORY_ACCESS, Count: n}},
		WindowStartTime: at(d - time.Minute), WindowEndTime: at(d),
	}}}
}

// Hostile strings as an attacker on a host (or a user typing into a form) could plant them.
const (
	xssScript = `<script>window.__pwned=1</script>`
	xssImg    = `<img src=x onerror="window.__pwned=2">`
	sqlInject = `x' OR '1'='1'; DROP TABLE events;--`
)

// seed stores the standard fleet: web1 (healthy, with a denial, a redacted dump and a loss report),
// web2 (BPF LSM off, an audit-allowed access), old1 (silent) and evil1 (hostile strings in every field).
func (e *env) seed() {
	e.t.Helper()
	e.push("web1",
		health("1.2.3", "6.12.0-test", true, true, 2, &pb.PostureFinding{Name: "kernel.yama.ptrace_scope", Value: "0", Severity: pb.Severity_SEVERITY_MEDIUM, Remediation: "set it to 1 or higher"}),
		memAccess(time.Second, "gdb", "/usr/bin/gdb", 4242, pb.Decision_DECISION_DENIED, "signing-keys"),
		coreDump(2*time.Second),
		lossReport(3*time.Second, 7),
	)
	e.push("web2",
		health("1.2.2", "6.1.0-test", false, false, 0),
		memAccess(4*time.Second, "python3", "/usr/bin/python3", 5151, pb.Decision_DECISION_ALLOWED_AUDIT, "token-signer"),
	)
	e.push("old1", health("1.0.0", "6.1.0-old", true, true, 1))
	e.push("evil1", health(xssImg, xssScript, true, true, 1, &pb.PostureFinding{Name: xssScript, Value: sqlInject, Severity: pb.Severity_SEVERITY_HIGH}),
		memAccess(5*time.Second, xssScript, "/tmp/"+xssImg, 6666, pb.Decision_DECISION_DENIED, sqlInject))
}

// client is an HTTPS client of the console with its own cookie jar.
type client struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func (e *env) client() *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: e.t, base: e.console, hc: &http.Client{
		Jar:           jar,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, // demo CA; TLS itself is not under test here
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}}
}

type response struct {
	Code   int
	Body   string
	Header http.Header
}

func (c *client) do(method, path string, form url.Values, hdr map[string]string) response {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", c.base)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{Code: resp.StatusCode, Body: string(b), Header: resp.Header}
}

func (c *client) get(path string) response { return c.do("GET", path, nil, nil) }

func (c *client) login(user, pass string) response {
	c.t.Helper()
	return c.do("POST", "/login", url.Values{"user": {user}, "password": {pass}}, nil)
}

func (c *client) mustLogin(user, pass string) {
	c.t.Helper()
	if r := c.login(user, pass); r.Code != http.StatusSeeOther {
		c.t.Fatalf("login %s: %d\n%s", user, r.Code, r.Body)
	}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads the session's CSRF token from a page's logout form.
func (c *client) csrf() string {
	c.t.Helper()
	r := c.get("/fleet")
	m := csrfRE.FindStringSubmatch(r.Body)
	if m == nil {
		c.t.Fatalf("no CSRF token on /fleet (%d)", r.Code)
	}
	return m[1]
}
