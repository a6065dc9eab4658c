package alert

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/certgen"
	"github.com/keyguard/keyguard/collector/internal/store"
	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

var secret = []byte("0123456789abcdef0123456789abcdef")

// backends runs f against a fresh SQLite file and a fresh PostgreSQL database (its DSN is passed so
// the test can reopen it, as a restarted collector would).
func backends(t *testing.T, f func(t *testing.T, dsn string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, filepath.Join(t.TempDir(), "events.db")) })
	t.Run("postgres", func(t *testing.T) { f(t, pgtest.NewDatabase(t)) })
}

func openStore(t testing.TB, dsn string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), store.Options{DSN: dsn, Collector: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var base = time.Now().Add(-time.Minute).Truncate(time.Millisecond)

func attack(seq uint64, exe string, d pb.Decision) *pb.Event {
	return &pb.Event{
		Seq: seq, BootId: "b", Time: timestamppb.New(base.Add(time.Duration(seq) * time.Millisecond)),
		Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
			Accessor:  &pb.Process{Pid: 100, Comm: "x", ExePath: exe},
			Target:    &pb.Process{Pid: 42, ExePath: "/opt/signer"},
			Operation: pb.AccessOperation_ACCESS_OPERATION_PROCESS_VM_READV,
			Rule:      "signer", Decision: d,
		}},
	}
}

func appendEvents(t testing.TB, s *store.Store, host string, evs ...*pb.Event) {
	t.Helper()
	for _, ev := range evs {
		ev.Host = host
	}
	if _, err := s.Append(context.Background(), host, evs, nil); err != nil {
		t.Fatal(err)
	}
}

// receiver is a real HTTP server on loopback that can be stopped and started again on the same port.
type receiver struct {
	t       testing.TB
	addr    string
	mu      sync.Mutex
	srv     *http.Server
	handler http.HandlerFunc
	got     map[string][]json.RawMessage // path -> bodies
	bad     []string
}

func newReceiver(t testing.TB) *receiver {
	r := &receiver{t: t, got: map[string][]json.RawMessage{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	r.serve(l)
	t.Cleanup(r.stop)
	return r
}

func (r *receiver) serve(l net.Listener) {
	r.srv = &http.Server{Handler: http.HandlerFunc(r.handle)}
	go r.srv.Serve(l)
}

func (r *receiver) stop() { r.srv.Close() }

func (r *receiver) start() {
	var l net.Listener
	var err error
	for range 50 { // the port may linger briefly
		if l, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	r.serve(l)
}

func (r *receiver) handle(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch req.URL.Path {
	case "/webhook":
		if err := Verify(secret, req.Header.Get(HeaderTimestamp), req.Header.Get(HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			r.bad = append(r.bad, "webhook: "+err.Error())
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
	case "/slack":
		var m map[string]string
		if json.Unmarshal(body, &m) != nil || m["text"] == "" {
			r.bad = append(r.bad, "slack: no text: "+string(body))
			http.Error(w, "no text", http.StatusBadRequest)
			return
		}
	case "/am/api/v2/alerts":
		// The Alertmanager v2 postableAlerts schema: an array; labels required (non-empty, alertname by
		// convention); startsAt/endsAt RFC 3339.
		var as []map[string]json.RawMessage
		if err := json.Unmarshal(body, &as); err != nil || len(as) == 0 {
			r.bad = append(r.bad, "alertmanager: not an array of alerts: "+string(body))
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		for _, a := range as {
			var labels map[string]string
			var starts time.Time
			if json.Unmarshal(a["labels"], &labels) != nil || labels["alertname"] == "" || json.Unmarshal(a["startsAt"], &starts) != nil {
				r.bad = append(r.bad, "alertmanager: labels/startsAt invalid: "+string(body))
				http.Error(w, "bad", http.StatusBadRequest)
				return
			}
		}
	default:
		http.NotFound(w, req)
		return
	}
	r.got[req.URL.Path] = append(r.got[req.URL.Path], body)
}

func (r *receiver) count(path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		r.t.Errorf("receiver refused requests: %v", r.bad)
		r.bad = nil
	}
	return len(r.got[path])
}

// webhookIDs returns how many times each alert id arrived at /webhook.
func (r *receiver) webhookIDs() map[int64]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := map[int64]int{}
	for _, b := range r.got["/webhook"] {
		var a WebhookBody
		if err := json.Unmarshal(b, &a); err != nil {
			r.t.Fatal(err)
		}
		ids[a.ID]++
	}
	return ids
}

// syslogServer is a TLS syslog receiver (RFC 5425 octet counting) on loopback.
type syslogServer struct {
	addr string
	ca   string
	mu   sync.Mutex
	msgs []string
}

func newSyslogServer(t testing.TB) *syslogServer {
	ca, err := certgen.NewCA("test syslog CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(certgen.Request{CommonName: "127.0.0.1", OU: certgen.OUServer, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &syslogServer{addr: l.Addr().String(), ca: filepath.Join(t.TempDir(), "ca.pem")}
	if err := os.WriteFile(s.ca, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.read(c)
		}
	}()
	return s
}

func (s *syslogServer) read(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		lenStr, err := br.ReadString(' ')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(lenStr))
		if err != nil || n <= 0 || n > 1<<20 {
			return
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, string(buf))
		s.mu.Unlock()
	}
}

func (s *syslogServer) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs...)
}

func outputs(rcv *receiver, sl *syslogServer) []Output {
	return []Output{
		{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret},
		{Name: "slack", Type: "slack", URL: "http://" + rcv.addr + "/slack"},
		{Name: "am", Type: "alertmanager", URL: "http://" + rcv.addr + "/am"},
		{Name: "siem-json", Type: "syslog", Address: sl.addr, CAFile: sl.ca},
		{Name: "siem-cef", Type: "syslog", Address: sl.addr, CAFile: sl.ca, Format: "cef"},
	}
}

func newEngine(t testing.TB, s *store.Store, cfg Config, owner string) *Engine {
	t.Helper()
	if cfg.Poll == 0 {
		cfg.Poll = 10 * time.Millisecond
	}
	e, err := New(Options{Store: s, Config: cfg, Owner: owner, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// stepUntil runs Step until cond holds (or fails after 20s).
func stepUntil(t *testing.T, e *Engine, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 20s")
		}
		if _, err := e.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var rfc5424 = regexp.MustCompile(`^<(\d+)>1 \S+ \S+ keyguard-collector \d+ keyguard-alert \[keyguard@32473 [^\]]*\] (.*)$`)

// TestEveryOutputDelivers: a denied attack (high) and an allowed reader (info) are stored; the rule
// (min high) sends exactly the attack to all five outputs, each checked by a real receiver.
func TestEveryOutputDelivers(t *testing.T) {
	backends(t, func(t *testing.T, dsn string) {
		s := openStore(t, dsn)
		rcv, sl := newReceiver(t), newSyslogServer(t)
		outs := outputs(rcv, sl)
		names := []string{}
		for _, o := range outs {
			names = append(names, o.Name)
		}
		e := newEngine(t, s, Config{Outputs: outs, Rules: []Rule{{Name: "attacks", Outputs: names}}}, "c1")
		appendEvents(t, s, "web1", attack(1, "/usr/bin/gdb", pb.Decision_DECISION_DENIED), attack(2, "/usr/bin/ok", pb.Decision_DECISION_ALLOWED_POLICY))
		stepUntil(t, e, func() bool {
			return rcv.count("/webhook") == 1 && rcv.count("/slack") == 1 && rcv.count("/am/api/v2/alerts") == 1 && len(sl.messages()) == 2
		})
		var wb WebhookBody
		if err := json.Unmarshal(rcv.got["/webhook"][0], &wb); err != nil {
			t.Fatal(err)
		}
		if wb.Host != "web1" || wb.Severity != "high" || wb.Kind != "memory_access" || wb.FirstSeq != 1 || !strings.Contains(wb.Summary, "/usr/bin/gdb") {
			t.Errorf("webhook alert = %+v", wb.Alert)
		}
		var json5424, cef int
		for _, m := range sl.messages() {
			g := rfc5424.FindStringSubmatch(m)
			if g == nil {
				t.Fatalf("not an RFC 5424 keyguard message: %q", m)
			}
			if g[1] != "35" { // facility 4 (auth), severity 3 (error) for high
				t.Errorf("PRI = %s, want 35", g[1])
			}
			switch {
			case strings.HasPrefix(g[2], "CEF:0|keyguard|keyguard-collector|1|memory_access|") && strings.Contains(g[2], "sproc=/usr/bin/gdb"):
				cef++
			case json.Valid([]byte(g[2])):
				json5424++
			}
		}
		if json5424 != 1 || cef != 1 {
			t.Errorf("syslog: %d JSON and %d CEF messages, want 1 and 1: %q", json5424, cef, sl.messages())
		}
		// Nothing more is sent on later steps (delivered once).
		for range 3 {
			if _, err := e.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if n := rcv.count("/webhook"); n != 1 {
			t.Errorf("webhook received %d alerts after more steps, want 1", n)
		}
	})
}

// TestReceiverDownAndCollectorRestart: the receiver is down when the alert is raised; the collector
// restarts (new store handle and engine); the receiver comes back; the alert arrives, once.
func TestReceiverDownAndCollectorRestart(t *testing.T) {
	backends(t, func(t *testing.T, dsn string) {
		rcv := newReceiver(t)
		rcv.stop()
		cfg := Config{Outputs: []Output{{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret}},
			Rules: []Rule{{Name: "attacks", Outputs: []string{"hook"}}}}
		s1 := openStore(t, dsn)
		e1 := newEngine(t, s1, cfg, "c1")
		appendEvents(t, s1, "web1", attack(1, "/usr/bin/gdb", pb.Decision_DECISION_DENIED))
		for range 3 {
			if _, err := e1.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		n, _, err := e1.Pending(context.Background())
		if err != nil || n != 1 {
			t.Fatalf("pending = %d, %v; want 1 while the receiver is down", n, err)
		}
		s1.Close()

		rcv.start()
		s2 := openStore(t, dsn)
		e2 := newEngine(t, s2, cfg, "c1-restarted")
		stepUntil(t, e2, func() bool { return rcv.count("/webhook") == 1 })
		if n, _, _ := e2.Pending(context.Background()); n != 0 {
			t.Errorf("pending after delivery = %d", n)
		}
		var attempts int
		if err := s2.DB().QueryRow(`SELECT attempts FROM alert_outbox`).Scan(&attempts); err != nil || attempts < 2 {
			t.Errorf("attempts = %d, %v; want >= 2 (failed, then delivered)", attempts, err)
		}
	})
}

// TestGroupingAndRateLimit: 500 identical denials in a group window become one alert with count 500;
// over a rate limit of 2 per minute, distinct actors fold into a waiting alert as suppressed.
func TestGroupingAndRateLimit(t *testing.T) {
	backends(t, func(t *testing.T, dsn string) {
		s := openStore(t, dsn)
		rcv := newReceiver(t)
		cfg := Config{Outputs: []Output{{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret}},
			Rules: []Rule{{Name: "grouped", Outputs: []string{"hook"}, GroupWindow: time.Hour, RateLimit: 2}}}
		e := newEngine(t, s, cfg, "c1")
		var evs []*pb.Event
		for i := uint64(1); i <= 500; i++ {
			evs = append(evs, attack(i, "/usr/bin/gdb", pb.Decision_DECISION_DENIED))
		}
		evs[499].GetMemoryAccess().Count = 100000 // the last is an in-kernel aggregate of 100,000 attempts
		for i := uint64(501); i <= 504; i++ {
			evs = append(evs, attack(i, fmt.Sprintf("/usr/bin/tool%d", i), pb.Decision_DECISION_DENIED))
		}
		appendEvents(t, s, "web1", evs...)
		if _, err := e.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := rcv.count("/webhook"); n != 0 {
			t.Fatalf("%d alerts sent before the group window closed", n)
		}
		e.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
		stepUntil(t, e, func() bool { return rcv.count("/webhook") == 2 })
		var got []WebhookBody
		for _, b := range rcv.got["/webhook"] {
			var a WebhookBody
			json.Unmarshal(b, &a)
			got = append(got, a)
		}
		if got[0].Count != 100499 || got[0].FirstSeq != 1 || got[0].LastSeq != 500 {
			t.Errorf("grouped alert: count %d seq %d-%d, want 100499 (499 events + an aggregate of 100,000), 1-500", got[0].Count, got[0].FirstSeq, got[0].LastSeq)
		}
		if got[1].Count != 1 || !strings.Contains(got[1].Summary, "+3 more events of rule grouped suppressed") {
			t.Errorf("second alert: count %d summary %q; want the 3 rate-limited events counted as suppressed", got[1].Count, got[1].Summary)
		}
	})
}

// TestSilentAgent: a host not heard from raises agent_silent once; heard from again and silent again,
// once more.
func TestSilentAgent(t *testing.T) {
	backends(t, func(t *testing.T, dsn string) {
		s := openStore(t, dsn)
		rcv := newReceiver(t)
		cfg := Config{SilentAfter: 10 * time.Minute, Outputs: []Output{{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret}},
			Rules: []Rule{{Name: "silence", Kinds: []string{KindAgentSilent}, Outputs: []string{"hook"}}}}
		e := newEngine(t, s, cfg, "c1")
		appendEvents(t, s, "web1", attack(1, "/usr/bin/gdb", pb.Decision_DECISION_DENIED))
		for range 3 {
			e.Step(context.Background())
		}
		if n := rcv.count("/webhook"); n != 0 {
			t.Fatalf("%d alerts for a host just heard from (the rule matches only agent_silent)", n)
		}
		e.now = func() time.Time { return time.Now().Add(time.Hour) }
		stepUntil(t, e, func() bool { return rcv.count("/webhook") == 1 })
		for range 3 {
			e.Step(context.Background())
		}
		var a WebhookBody
		json.Unmarshal(rcv.got["/webhook"][0], &a)
		if n := rcv.count("/webhook"); n != 1 || a.Kind != KindAgentSilent || a.Host != "web1" || a.Severity != "high" {
			t.Fatalf("%d alerts, first %+v; want one high agent_silent for web1", n, a.Alert)
		}
		appendEvents(t, s, "web1", attack(2, "/usr/bin/gdb", pb.Decision_DECISION_ALLOWED_POLICY))
		e.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
		stepUntil(t, e, func() bool { return rcv.count("/webhook") == 2 })
	})
}

// TestSeveralCollectorsSendOnce: three engines on one PostgreSQL database step concurrently; every
// alert arrives exactly once.
func TestSeveralCollectorsSendOnce(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	rcv := newReceiver(t)
	cfg := Config{Outputs: []Output{{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret}},
		Rules: []Rule{{Name: "attacks", Outputs: []string{"hook"}}}}
	s0 := openStore(t, dsn)
	const hosts, per = 4, 50
	var engines []*Engine
	for i := range 3 {
		engines = append(engines, newEngine(t, openStore(t, dsn), cfg, fmt.Sprintf("c%d", i)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, e := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.Run(ctx)
		}()
	}
	for h := range hosts {
		for i := uint64(1); i <= per; i += 10 {
			var evs []*pb.Event
			for j := i; j < i+10; j++ {
				evs = append(evs, attack(j, fmt.Sprintf("/usr/bin/a%d", j), pb.Decision_DECISION_DENIED))
			}
			appendEvents(t, s0, fmt.Sprintf("host%d", h), evs...)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for rcv.count("/webhook") < hosts*per && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let any duplicate arrive
	cancel()
	wg.Wait()
	ids := rcv.webhookIDs()
	if len(ids) != hosts*per {
		t.Fatalf("%d distinct alerts, want %d", len(ids), hosts*per)
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("alert %d delivered %d times", id, n)
		}
	}
	var senders int
	if err := s0.DB().QueryRow(`SELECT COUNT(DISTINCT collector) FROM alert_outbox`).Scan(&senders); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d alerts, raised by %d of 3 collectors, each delivered once", len(ids), senders)
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown type", Config{Outputs: []Output{{Name: "x", Type: "email"}}}, "not one of"},
		{"webhook without secret", Config{Outputs: []Output{{Name: "x", Type: "webhook", URL: "http://a"}}}, "secret_file"},
		{"syslog without address", Config{Outputs: []Output{{Name: "x", Type: "syslog"}}}, "address"},
		{"rule with unknown output", Config{Rules: []Rule{{Name: "r", Outputs: []string{"nope"}}}}, "unknown output"},
		{"bad severity", Config{Outputs: []Output{{Name: "x", Type: "slack", URL: "http://a"}}, Rules: []Rule{{Name: "r", MinSeverity: "severe", Outputs: []string{"x"}}}}, "min_severity"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.check()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("check() = %v, want an error with %q", err, c.want)
			}
		})
	}
}

func TestVerifyRefusesForgedAndStale(t *testing.T) {
	body := []byte(`{"id":1}`)
	now := time.Now()
	sig := Sign(secret, now.Unix(), body)
	if err := Verify(secret, strconv.FormatInt(now.Unix(), 10), sig, body, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	if Verify([]byte("another key of 32 bytes ........"), strconv.FormatInt(now.Unix(), 10), sig, body, now, time.Minute) == nil {
		t.Error("a signature with another key was accepted")
	}
	if Verify(secret, strconv.FormatInt(now.Unix(), 10), sig, []byte(`{"id":2}`), now, time.Minute) == nil {
		t.Error("a changed body was accepted")
	}
	if Verify(secret, strconv.FormatInt(now.Unix(), 10), sig, body, now.Add(time.Hour), time.Minute) == nil {
		t.Error("a replay an hour later was accepted")
	}
}

// TestChainFailureAlert: a failed chain verification (recorded by VerifyChain) raises one critical
// chain_failed alert; a later successful verification raises none.
func TestChainFailureAlert(t *testing.T) {
	backends(t, func(t *testing.T, dsn string) {
		s := openStore(t, dsn)
		rcv := newReceiver(t)
		cfg := Config{Outputs: []Output{{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret}},
			Rules: []Rule{{Name: "tamper", Kinds: []string{KindChainFailed}, Outputs: []string{"hook"}}}}
		e := newEngine(t, s, cfg, "c1")
		ctx := context.Background()
		appendEvents(t, s, "web1", attack(1, "/usr/bin/gdb", pb.Decision_DECISION_DENIED), attack(2, "/usr/bin/gdb", pb.Decision_DECISION_DENIED))
		reps, err := s.Verify(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RecordVerdicts(ctx, reps, time.Now()); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			e.Step(ctx)
		}
		if n := rcv.count("/webhook"); n != 0 {
			t.Fatalf("%d alerts after a clean verification", n)
		}
		if _, err := s.DB().Exec(`UPDATE events SET payload = $1 WHERE host = 'web1' AND seq = 1`, []byte("forged")); err != nil {
			t.Fatal(err)
		}
		if reps, err = s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.RecordVerdicts(ctx, reps, time.Now()); err != nil {
			t.Fatal(err)
		}
		stepUntil(t, e, func() bool { return rcv.count("/webhook") == 1 })
		for range 3 {
			e.Step(ctx)
		}
		var a WebhookBody
		json.Unmarshal(rcv.got["/webhook"][0], &a)
		if n := rcv.count("/webhook"); n != 1 || a.Kind != KindChainFailed || a.Severity != "critical" || a.Host != "web1" {
			t.Fatalf("%d alerts, first %+v; want one critical chain_failed for web1", n, a.Alert)
		}
	})
}
