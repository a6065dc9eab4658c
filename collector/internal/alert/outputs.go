package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
)

type sender interface {
	send(ctx context.Context, a *Alert) error
	timeout() time.Duration
}

func newSender(o *Output) (sender, error) {
	var roots *x509.CertPool
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("alerts: output %q: read ca_file: %w", o.Name, err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("alerts: output %q: ca_file %s holds no PEM certificate", o.Name, o.CAFile)
		}
	}
	tlsCfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}}
	switch o.Type {
	case "webhook":
		if o.secret == nil {
			b, err := os.ReadFile(o.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("alerts: output %q: read secret_file: %w", o.Name, err)
			}
			o.secret = bytes.TrimSpace(b)
		}
		if len(o.secret) < 16 {
			return nil, fmt.Errorf("alerts: output %q: the webhook secret is shorter than 16 bytes: use a long random key (openssl rand -hex 32)", o.Name)
		}
		return &webhook{o: *o, c: client}, nil
	case "slack":
		return &slack{o: *o, c: client}, nil
	case "alertmanager":
		return &alertmanager{o: *o, c: client}, nil
	case "syslog":
		return &syslog{o: *o, tls: tlsCfg}, nil
	}
	return nil, fmt.Errorf("alerts: output %q: unknown type %q", o.Name, o.Type)
}

// post sends body and accepts any 2xx.
func post(ctx context.Context, c *http.Client, url string, body []byte, hdr http.Header) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request to %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("post to %s: %w", url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post to %s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
	return nil
}

// WebhookBody is the JSON a generic webhook receives.
type WebhookBody struct {
	Alert
	Title string `json:"title"`
	// Event is the protojson of the (first) event, when there is one.
	Event json.RawMessage `json:"event,omitempty"`
}

func webhookBody(a *Alert) ([]byte, error) {
	b := WebhookBody{Alert: *a, Title: a.Title()}
	if a.Event != nil {
		ev, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a.Event)
		if err != nil {
			return nil, err
		}
		b.Event = ev
	}
	return json.Marshal(b)
}

// Signature headers of the generic webhook: X-Keyguard-Signature is "sha256=" + hex(HMAC-SHA256(key,
// timestamp + "." + body)) where timestamp is X-Keyguard-Timestamp (Unix seconds), so a receiver can
// refuse replays older than a few minutes.
const (
	HeaderSignature = "X-Keyguard-Signature"
	HeaderTimestamp = "X-Keyguard-Timestamp"
)

// Sign returns the X-Keyguard-Signature value for a body sent at unix time ts.
func Sign(key []byte, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%d.", ts)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a webhook request's signature and that its timestamp is within maxSkew of now.
func Verify(key []byte, tsHeader, sigHeader string, body []byte, now time.Time, maxSkew time.Duration) error {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return fmt.Errorf("bad %s %q", HeaderTimestamp, tsHeader)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("timestamp %d is %s away from now (replay?)", ts, d)
	}
	if !hmac.Equal([]byte(Sign(key, ts, body)), []byte(sigHeader)) {
		return fmt.Errorf("signature does not match")
	}
	return nil
}

type webhook struct {
	o Output
	c *http.Client
}

func (w *webhook) timeout() time.Duration { return w.o.Timeout }
func (w *webhook) send(ctx context.Context, a *Alert) error {
	body, err := webhookBody(a)
	if err != nil {
		return err
	}
	ts := time.Now().Unix()
	return post(ctx, w.c, w.o.URL, body, http.Header{
		HeaderTimestamp: {strconv.FormatInt(ts, 10)}, HeaderSignature: {Sign(w.o.secret, ts, body)},
	})
}

type slack struct {
	o Output
	c *http.Client
}

func (s *slack) timeout() time.Duration { return s.o.Timeout }
func (s *slack) send(ctx context.Context, a *Alert) error {
	body, _ := json.Marshal(map[string]string{"text": fmt.Sprintf("%s\nrule %s · alert %d · seq %d–%d", a.Title(), a.Rule, a.ID, a.FirstSeq, a.LastSeq)})
	return post(ctx, s.c, s.o.URL, body, nil)
}

// AlertmanagerAlert is one element of the Alertmanager v2 API's POST /api/v2/alerts body.
type AlertmanagerAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt,omitzero"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

type alertmanager struct {
	o Output
	c *http.Client
}

func (m *alertmanager) timeout() time.Duration { return m.o.Timeout }
func (m *alertmanager) send(ctx context.Context, a *Alert) error {
	body, _ := json.Marshal([]AlertmanagerAlert{{
		Labels: map[string]string{
			"alertname": "KeyguardEvent", "keyguard_rule": a.Rule, "severity": a.Severity, "host": a.Host, "kind": a.Kind,
			"alert_id": strconv.FormatInt(a.ID, 10),
		},
		Annotations: map[string]string{"summary": a.Title(), "description": a.Summary, "count": strconv.FormatInt(a.Count, 10)},
		StartsAt:    a.FirstTime,
		// Events are points in time: the alert resolves by itself after an hour unless sent again.
		EndsAt: a.LastTime.Add(time.Hour),
	}})
	return post(ctx, m.c, strings.TrimRight(m.o.URL, "/")+"/api/v2/alerts", body, nil)
}

// syslog sends RFC 5424 messages over TLS with octet-counting framing (RFC 5425).
type syslog struct {
	o   Output
	tls *tls.Config
}

func (s *syslog) timeout() time.Duration { return s.o.Timeout }
func (s *syslog) send(ctx context.Context, a *Alert) error {
	d := tls.Dialer{Config: s.tls.Clone()}
	if d.Config.ServerName == "" {
		host, _, _ := net.SplitHostPort(s.o.Address)
		d.Config.ServerName = host
	}
	conn, err := d.DialContext(ctx, "tcp", s.o.Address)
	if err != nil {
		return fmt.Errorf("connect to syslog receiver %s over TLS: %w", s.o.Address, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	msg, err := SyslogMessage(a, s.o.Format, time.Now())
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(conn, "%d %s", len(msg), msg); err != nil {
		return fmt.Errorf("write to syslog receiver %s: %w", s.o.Address, err)
	}
	// Close cleanly (close_notify) so the receiver knows the message ended on purpose.
	if err := conn.(*tls.Conn).CloseWrite(); err != nil {
		return fmt.Errorf("close syslog connection to %s: %w", s.o.Address, err)
	}
	return nil
}

// syslogSeverity maps keyguard severity to the RFC 5424 severity (facility 4, security/auth).
func syslogPRI(sev string) int {
	s := map[string]int{"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}[sev]
	if s == 0 {
		s = 5
	}
	return 4*8 + s
}

// SyslogMessage is the RFC 5424 message (without the octet count) for an alert: MSG is the JSON of the
// webhook body, or a CEF record.
func SyslogMessage(a *Alert, format string, now time.Time) (string, error) {
	var msg string
	if format == "cef" {
		msg = CEF(a)
	} else {
		b, err := webhookBody(a)
		if err != nil {
			return "", err
		}
		msg = string(b)
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "-"
	}
	sd := fmt.Sprintf(`[keyguard@32473 alert="%d" rule="%s" severity="%s" host="%s" kind="%s" count="%d"]`,
		a.ID, sdEscape(a.Rule), a.Severity, sdEscape(a.Host), sdEscape(a.Kind), a.Count)
	return fmt.Sprintf("<%d>1 %s %s keyguard-collector %d keyguard-alert %s %s",
		syslogPRI(a.Severity), now.UTC().Format(time.RFC3339Nano), host, os.Getpid(), sd, msg), nil
}

func sdEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, `]`, `\]`).Replace(s)
}

// CEF renders an alert as an ArcSight Common Event Format record.
func CEF(a *Alert) string {
	hdr := strings.NewReplacer(`\`, `\\`, `|`, `\|`)
	ext := strings.NewReplacer(`\`, `\\`, `=`, `\=`, "\n", `\n`, "\r", `\r`)
	sev := map[string]int{"critical": 10, "high": 8, "medium": 5, "low": 3, "info": 1}[a.Severity]
	fields := []string{
		"rt=" + strconv.FormatInt(a.FirstTime.UnixMilli(), 10),
		"end=" + strconv.FormatInt(a.LastTime.UnixMilli(), 10),
		"dvchost=" + ext.Replace(a.Host),
		"cnt=" + strconv.FormatInt(a.Count, 10),
		"cs1Label=rule", "cs1=" + ext.Replace(a.Rule),
		"cs2Label=kind", "cs2=" + ext.Replace(a.Kind),
		"externalId=" + strconv.FormatInt(a.ID, 10),
		"msg=" + ext.Replace(a.Summary),
	}
	if a.Event != nil {
		if m := a.Event.GetMemoryAccess(); m != nil {
			fields = append(fields, "sproc="+ext.Replace(exeOf(m.GetAccessor())), "suid="+strconv.FormatUint(uint64(m.GetAccessor().GetUid()), 10),
				"dproc="+ext.Replace(exeOf(m.GetTarget())), "act="+ext.Replace(low(m.GetDecision().String(), "DECISION_")))
		}
	}
	return fmt.Sprintf("CEF:0|keyguard|keyguard-collector|1|%s|%s|%d|%s",
		hdr.Replace(a.Kind), hdr.Replace(a.Kind+" on "+a.Host), sev, strings.Join(fields, " "))
}
