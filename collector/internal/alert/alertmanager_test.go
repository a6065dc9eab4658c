package alert

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// alertmanagerBinary returns a real Alertmanager built from its Go module by .ci/alertmanager.sh (pinned
// version, cached in KEYGUARD_CACHE; `make alertmanager` and so `make test` build it first), or the
// binary named by KEYGUARD_ALERTMANAGER. The test skips only when it cannot be built.
func alertmanagerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KEYGUARD_ALERTMANAGER"); p != "" {
		return p
	}
	cache := os.Getenv("KEYGUARD_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			t.Skipf("no real Alertmanager: neither KEYGUARD_CACHE nor a user cache directory to build it in (%v)", err)
		}
		cache = filepath.Join(dir, "keyguard")
	}
	script, err := filepath.Abs("../../../.ci/alertmanager.sh")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("bash", script, cache)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("no real Alertmanager: it could not be built from its Go module with %s %s (%v): %s", script, cache, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	bin := lines[len(lines)-1]
	t.Logf("Alertmanager: %s (ready in %.1f s) %s", bin, time.Since(start).Seconds(), strings.TrimSpace(stderr.String()))
	return bin
}

// realAlertmanager is an Alertmanager process on a loopback port, stopped and started again on the same
// port and storage.
type realAlertmanager struct {
	t       *testing.T
	bin     string
	dir     string
	addr    string
	cmd     *exec.Cmd
	log     *os.File
	exited  chan struct{}
	started int
}

const alertmanagerConfig = `route:
  receiver: keyguard-test
  group_by: [alertname, host]
  group_wait: 1s
receivers:
  - name: keyguard-test
`

func startAlertmanager(t *testing.T) *realAlertmanager {
	bin := alertmanagerBinary(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "alertmanager.yml"), []byte(alertmanagerConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	am := &realAlertmanager{t: t, bin: bin, dir: dir, addr: l.Addr().String()}
	l.Close()
	am.start()
	t.Cleanup(am.stop)
	return am
}

func (am *realAlertmanager) start() {
	t := am.t
	t.Helper()
	am.started++
	log, err := os.Create(filepath.Join(am.dir, fmt.Sprintf("alertmanager-%d.log", am.started)))
	if err != nil {
		t.Fatal(err)
	}
	am.log = log
	am.cmd = exec.Command(am.bin, "--config.file="+filepath.Join(am.dir, "alertmanager.yml"),
		"--storage.path="+filepath.Join(am.dir, "data"), "--web.listen-address="+am.addr,
		"--cluster.listen-address=", "--log.level=info")
	am.cmd.Stdout, am.cmd.Stderr = log, log
	if err := am.cmd.Start(); err != nil {
		t.Fatalf("start Alertmanager: %v", err)
	}
	am.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(am.cmd, am.exited)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + am.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-am.exited:
			t.Fatalf("Alertmanager exited at start: %s", am.logText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Alertmanager not ready on %s in 60 s: %s", am.addr, am.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (am *realAlertmanager) stop() {
	if am.cmd == nil {
		return
	}
	am.cmd.Process.Signal(os.Interrupt)
	select {
	case <-am.exited:
	case <-time.After(10 * time.Second):
		am.cmd.Process.Kill()
		<-am.exited
	}
	am.cmd = nil
	am.log.Close()
}

func (am *realAlertmanager) logText() string {
	b, _ := os.ReadFile(am.log.Name())
	return string(b)
}

// gettableAlert is the part of the v2 API's GET /api/v2/alerts answer the test checks.
type gettableAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	Receivers   []struct {
		Name string `json:"name"`
	} `json:"receivers"`
	Status struct {
		State string `json:"state"`
	} `json:"status"`
}

func (am *realAlertmanager) alerts() []gettableAlert {
	am.t.Helper()
	resp, err := http.Get("http://" + am.addr + "/api/v2/alerts")
	if err != nil {
		am.t.Fatalf("GET /api/v2/alerts: %v", err)
	}
	defer resp.Body.Close()
	var as []gettableAlert
	if resp.StatusCode != http.StatusOK {
		am.t.Fatalf("GET /api/v2/alerts: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&as); err != nil {
		am.t.Fatalf("GET /api/v2/alerts: %v", err)
	}
	return as
}

// withActor returns the alerts whose description names exe.
func withActor(as []gettableAlert, exe string) []gettableAlert {
	var out []gettableAlert
	for _, a := range as {
		if strings.Contains(a.Annotations["description"], exe) {
			out = append(out, a)
		}
	}
	return out
}

func checkAlertmanagerAlert(t *testing.T, a gettableAlert, host, rule, exe string) {
	t.Helper()
	want := map[string]string{"alertname": "KeyguardEvent", "keyguard_rule": rule, "severity": "high", "host": host, "kind": "memory_access"}
	for k, v := range want {
		if a.Labels[k] != v {
			t.Errorf("label %s = %q, want %q (labels %v)", k, a.Labels[k], v, a.Labels)
		}
	}
	if a.Labels["alert_id"] == "" {
		t.Errorf("no alert_id label: %v", a.Labels)
	}
	if !strings.Contains(a.Annotations["summary"], "[keyguard HIGH] memory_access on "+host) || !strings.Contains(a.Annotations["summary"], exe) {
		t.Errorf("summary = %q", a.Annotations["summary"])
	}
	if a.Status.State != "active" || len(a.Receivers) != 1 || a.Receivers[0].Name != "keyguard-test" {
		t.Errorf("state %q, receivers %+v: want active, routed to keyguard-test", a.Status.State, a.Receivers)
	}
	if !a.EndsAt.After(time.Now()) || a.StartsAt.After(time.Now()) {
		t.Errorf("startsAt %s endsAt %s: not active now", a.StartsAt, a.EndsAt)
	}
}

// TestRealAlertmanager: the alertmanager output against a real Alertmanager (built from its Go module):
// a denied attack (high) arrives with keyguard's labels, an allowed reader (info) does not; Alertmanager
// goes down, an attack raised meanwhile waits in the outbox (failed attempts) and arrives once it is back.
func TestRealAlertmanager(t *testing.T) {
	am := startAlertmanager(t)
	s := openStore(t, filepath.Join(t.TempDir(), "events.db"))
	cfg := Config{Outputs: []Output{{Name: "am", Type: "alertmanager", URL: "http://" + am.addr + "/", Timeout: 2 * time.Second}},
		Rules: []Rule{{Name: "attacks", Outputs: []string{"am"}}}}
	e := newEngine(t, s, cfg, "c1")
	appendEvents(t, s, "web1", attack(1, "/usr/bin/gdb", pb.Decision_DECISION_DENIED), attack(2, "/usr/bin/ok", pb.Decision_DECISION_ALLOWED_POLICY))
	stepUntil(t, e, func() bool { return len(am.alerts()) > 0 })
	as := am.alerts()
	if len(as) != 1 || len(withActor(as, "/usr/bin/gdb")) != 1 {
		t.Fatalf("Alertmanager holds %d alerts, want exactly the gdb attack: %+v", len(as), as)
	}
	checkAlertmanagerAlert(t, as[0], "web1", "attacks", "/usr/bin/gdb")

	am.stop()
	appendEvents(t, s, "web1", attack(3, "/usr/bin/python3", pb.Decision_DECISION_DENIED))
	for range 5 {
		if _, err := e.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var attempts int
	var lastErr string
	if err := s.DB().QueryRow(`SELECT attempts, last_error FROM alert_outbox WHERE delivered_ns = 0`).Scan(&attempts, &lastErr); err != nil {
		t.Fatalf("the alert raised while Alertmanager is down is not waiting in the outbox: %v", err)
	}
	if attempts < 1 || !strings.Contains(lastErr, am.addr) {
		t.Errorf("while Alertmanager is down: attempts %d, last error %q; want a failed attempt naming %s", attempts, lastErr, am.addr)
	}

	am.start()
	stepUntil(t, e, func() bool { return len(withActor(am.alerts(), "/usr/bin/python3")) == 1 })
	if n, _, err := e.Pending(context.Background()); err != nil || n != 0 {
		t.Errorf("pending after Alertmanager came back = %d, %v; want 0", n, err)
	}
	checkAlertmanagerAlert(t, withActor(am.alerts(), "/usr/bin/python3")[0], "web1", "attacks", "/usr/bin/python3")
	if err := s.DB().QueryRow(`SELECT attempts FROM alert_outbox WHERE summary LIKE '%python3%'`).Scan(&attempts); err != nil || attempts < 2 {
		t.Errorf("attempts = %d, %v; want >= 2 (failed while down, then delivered)", attempts, err)
	}
	if bad := withActor(am.alerts(), "/usr/bin/ok"); len(bad) > 0 {
		t.Errorf("the allowed reader (info) reached Alertmanager: %+v", bad)
	}
}
