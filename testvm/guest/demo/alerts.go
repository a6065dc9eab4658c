package demo

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// WebhookAlert is what the collector's generic webhook output posts (collector/internal/alert
// WebhookBody), as far as the demo and the tests read it.
type WebhookAlert struct {
	ID       int64  `json:"id"`
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	Host     string `json:"host"`
	Kind     string `json:"kind"`
	Summary  string `json:"summary"`
	Count    int64  `json:"count"`
	// Event is the alert's (first) event.
	Event *keyguardv1.Event `json:"-"`
}

// WebhookReceiver is an HTTP receiver for the collector's webhook alerts on loopback: it accepts only
// requests whose X-Keyguard-Signature is HMAC-SHA256(secret, X-Keyguard-Timestamp + "." + body) with a
// timestamp within 5 minutes, as a real receiver must; others are refused (401) and counted.
type WebhookReceiver struct {
	// URL is where the collector posts.
	URL string
	// Secret is the HMAC key (hex text, as written to the collector's secret_file).
	Secret string

	mu      sync.Mutex
	alerts  []WebhookAlert
	refused []string
	srv     *http.Server
}

// NewWebhookReceiver starts a receiver on 127.0.0.1 (a free port) with a fresh random secret.
func NewWebhookReceiver() (*WebhookReceiver, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook receiver: %w", err)
	}
	r := &WebhookReceiver{URL: "http://" + l.Addr().String() + "/keyguard", Secret: hex.EncodeToString(key)}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.handle), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(l)
	return r, nil
}

// Close stops the receiver.
func (r *WebhookReceiver) Close() { r.srv.Close() }

func (r *WebhookReceiver) handle(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.verify(req.Header.Get("X-Keyguard-Timestamp"), req.Header.Get("X-Keyguard-Signature"), body); err != nil {
		r.refused = append(r.refused, err.Error())
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var a WebhookAlert
	var raw struct {
		Event json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(body, &a); err != nil || json.Unmarshal(body, &raw) != nil {
		r.refused = append(r.refused, fmt.Sprintf("not a keyguard alert: %v: %.200s", err, body))
		http.Error(w, "not a keyguard alert", http.StatusBadRequest)
		return
	}
	if len(raw.Event) > 0 {
		ev := &keyguardv1.Event{}
		if err := protojson.Unmarshal(raw.Event, ev); err == nil {
			a.Event = ev
		}
	}
	r.alerts = append(r.alerts, a)
}

func (r *WebhookReceiver) verify(tsHeader, sig string, body []byte) error {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return fmt.Errorf("no timestamp header: %q", tsHeader)
	}
	if d := time.Since(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("timestamp %d is %s away from now", ts, d)
	}
	m := hmac.New(sha256.New, []byte(r.Secret))
	fmt.Fprintf(m, "%d.", ts)
	m.Write(body)
	if !hmac.Equal([]byte("sha256="+hex.EncodeToString(m.Sum(nil))), []byte(sig)) {
		return fmt.Errorf("bad signature %q", sig)
	}
	return nil
}

// Alerts returns the alerts received with a valid signature so far.
func (r *WebhookReceiver) Alerts() []WebhookAlert {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]WebhookAlert(nil), r.alerts...)
}

// Refused returns why requests were refused (bad or missing signature).
func (r *WebhookReceiver) Refused() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.refused...)
}

// AlertsConfig is the collector.yaml `alerts:` section that sends every event at warning level
// (medium) or above, one alert per event, to the receiver; the secret is read from secretFile.
func (r *WebhookReceiver) AlertsConfig(secretFile string) string {
	return fmt.Sprintf(`alerts:
  rules:
    - name: warnings
      min_severity: medium
      outputs: [test-webhook]
  outputs:
    - name: test-webhook
      type: webhook
      url: %s
      secret_file: %s
      timeout: 5s
`, r.URL, secretFile)
}

// Shows reports whether a memory_access event is this attack: its operation, and for /proc reads the
// file.
func (a Attack) Shows(ev *keyguardv1.Event) bool {
	m := ev.GetMemoryAccess()
	if m == nil {
		return false
	}
	op := m.GetOperation()
	switch a.Op {
	case "attach":
		return op == keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH
	case "seize":
		return op == keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_SEIZE
	case "vmreadv":
		return op == keyguardv1.AccessOperation_ACCESS_OPERATION_PROCESS_VM_READV
	case "mem", "environ":
		return op == keyguardv1.AccessOperation_ACCESS_OPERATION_PROC_OPEN && strings.HasSuffix(m.GetProcPath(), "/"+a.Op)
	}
	return false
}

// StoredAtWarning lists the events the collector stored at warning level (medium) or above, read with
// `keyguard events -json` and the given connection arguments (-collector, -ca, -cert, -key, -since ...).
func StoredAtWarning(keyguard string, args ...string) ([]*keyguardv1.StoredEvent, error) {
	return Stored(keyguard, "medium", args...)
}

// Stored lists the events the collector stored at minSeverity or above (info: all).
func Stored(keyguard, minSeverity string, args ...string) ([]*keyguardv1.StoredEvent, error) {
	out, err := exec.Command(keyguard, append([]string{"events", "-json", "-severity", minSeverity, "-limit", "0"}, args...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return nil, fmt.Errorf("keyguard events: %w: %s", err, stderr)
	}
	var evs []*keyguardv1.StoredEvent
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		se := &keyguardv1.StoredEvent{}
		if err := protojson.Unmarshal([]byte(line), se); err != nil {
			return nil, fmt.Errorf("keyguard events -json: %w: %s", err, line)
		}
		evs = append(evs, se)
	}
	return evs, nil
}

// Describe is one line about an event: kind, severity, actor, target and what it did.
func Describe(ev *keyguardv1.Event) string {
	sev := keyguardv1.SeverityLabel(keyguardv1.SeverityOf(ev))
	switch {
	case ev.GetMemoryAccess() != nil:
		m := ev.GetMemoryAccess()
		return fmt.Sprintf("memory_access %s: %s (pid %d, uid %d) -> %s (pid %d): %s %s, %s", sev, Actor(ev), m.GetAccessor().GetPid(),
			m.GetAccessor().GetUid(), m.GetTarget().GetExePath(), m.GetTarget().GetPid(), strings.ToLower(strings.TrimPrefix(m.GetOperation().String(), "ACCESS_OPERATION_")),
			m.GetProcPath(), strings.ToLower(strings.TrimPrefix(m.GetDecision().String(), "DECISION_")))
	case ev.GetCoreDump() != nil:
		d := ev.GetCoreDump()
		return fmt.Sprintf("core_dump %s: %s (pid %d) %s %s", sev, d.GetProcess().GetExePath(), d.GetProcess().GetPid(),
			strings.ToLower(strings.TrimPrefix(d.GetAction().String(), "CORE_DUMP_ACTION_")), d.GetReason())
	}
	b, _ := protojson.Marshal(ev)
	return fmt.Sprintf("%s: %s", sev, b)
}

// Actor is the executable (else comm) of whoever caused an event.
func Actor(ev *keyguardv1.Event) string {
	var p *keyguardv1.Process
	switch {
	case ev.GetMemoryAccess() != nil:
		p = ev.GetMemoryAccess().GetAccessor()
	case ev.GetKeyFileAccess() != nil:
		p = ev.GetKeyFileAccess().GetProcess()
	case ev.GetSideDoor() != nil:
		p = ev.GetSideDoor().GetAccessor()
	case ev.GetCoreDump() != nil:
		p = ev.GetCoreDump().GetProcess()
	default:
		return "(agent)"
	}
	if p.GetExePath() != "" {
		return p.GetExePath()
	}
	return p.GetComm()
}

// WriteSecret writes the receiver's secret where the collector's credential is loaded from (root only).
func (r *WebhookReceiver) WriteSecret(path string) error {
	return os.WriteFile(path, []byte(r.Secret+"\n"), 0o600)
}
