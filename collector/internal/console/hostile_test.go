package console_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// hostile are values an attacker types into filters and forms (and plants in events).
var hostile = []struct{ name, v string }{
	{"script", xssScript},
	{"img", xssImg},
	{"attribute break", `" autofocus onfocus="window.__pwned=3`},
	{"javascript url", `javascript:window.__pwned=4`},
	{"sql quote", sqlInject},
	{"sql union", `1 UNION SELECT payload FROM events--`},
	{"sql comment", `web1'/*`},
	{"like wildcard", `%`},
	{"oversized", strings.Repeat("A", 9000)},
	{"bad utf-8", "web\xff\xfe1"},
	{"nul", "web\x001"},
	{"newline", "web1\r\nSet-Cookie: x=1"},
	{"huge number", "99999999999999999999999"},
	{"negative", "-1"},
}

// rawPayloadIn reports whether the body contains markup from a payload unescaped.
func rawPayloadIn(body string) string {
	for _, bad := range []string{"<script>window.__pwned", "<img src=x", `" autofocus onfocus=`, `href="javascript:`} {
		if strings.Contains(body, bad) {
			return bad
		}
	}
	return ""
}

// TestHostileInput sends hostile values in every filter and form field (and shows events carrying
// them), and checks each is refused or escaped, nothing fails with a server error, and the stored
// events and their hash chains are untouched afterwards.
func TestHostileInput(t *testing.T) {
	e := startEnv(t, envOptions{})
	e.seed()
	cc := e.pki.Dial(t, e.c.Addr(), "operator")
	qc := pb.NewQueryServiceClient(cc)
	countAll := func() int {
		n := 0
		req := &pb.ListEventsRequest{PageSize: 1000}
		for {
			resp, err := qc.ListEvents(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			n += len(resp.GetEvents())
			if resp.GetNextPageToken() == "" {
				return n
			}
			req.PageToken = resp.GetNextPageToken()
		}
	}
	before := countAll()

	admin := e.client()
	admin.mustLogin("alice", adminPass)
	csrf := admin.csrf()
	check := func(what string, r response) {
		t.Helper()
		switch r.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusRequestURITooLong, http.StatusUnauthorized, http.StatusTooManyRequests:
		default:
			t.Errorf("%s: status %d", what, r.Code)
		}
		if bad := rawPayloadIn(r.Body); bad != "" {
			t.Errorf("%s: response contains unescaped %q", what, bad)
		}
	}
	for _, field := range []string{"host", "kind", "decision", "since", "until", "process", "pid", "rule", "page"} {
		for _, h := range hostile {
			r := admin.get("/events?" + field + "=" + url.QueryEscape(h.v))
			check("events "+field+"="+h.name, r)
			if h.name == "bad utf-8" || h.name == "nul" {
				if r.Code != http.StatusBadRequest {
					t.Errorf("events %s=%s: %d, want 400", field, h.name, r.Code)
				}
			}
			if h.name == "oversized" && (field == "process" || field == "rule" || field == "page" || field == "host") && r.Code != http.StatusBadRequest {
				t.Errorf("events %s=oversized: %d, want 400", field, r.Code)
			}
			// The live stream refuses what the list refuses, and never echoes markup.
			if field != "page" {
				code, body := admin.stream("/events/stream?" + field + "=" + url.QueryEscape(h.v))
				if (code == http.StatusOK) != (r.Code == http.StatusOK) {
					t.Errorf("stream %s=%s: %d, but the list answered %d", field, h.name, code, r.Code)
				}
				check("stream "+field+"="+h.name, response{Code: code, Body: body})
			}
		}
	}
	for _, h := range hostile {
		check("chain host="+h.name, admin.get("/chain?host="+url.QueryEscape(h.v)))
		check("event path "+h.name, admin.get("/event/"+url.PathEscape(h.v)+"/1"))
		check("event pos "+h.name, admin.get("/event/web1/"+url.PathEscape(h.v)))
		check("login next "+h.name, admin.get("/login?next="+url.QueryEscape(h.v)))
	}
	for _, field := range []string{"action", "host", "reason", "valid", "rule", "executable", "uid", "duration"} {
		for _, h := range hostile {
			f := url.Values{"csrf": {csrf}, "action": {"break-glass"}, "host": {"web1"}, "reason": {"incident 42: needs gdb"}, "valid": {"1h"},
				"rule": {"signing-keys"}, "executable": {"/usr/bin/gdb"}, "uid": {"0"}, "duration": {"15m"}}
			f.Set(field, h.v)
			r := admin.do("POST", "/tokens", f, nil)
			check("token "+field+"="+h.name, r)
			plausible := (field == "host" || field == "rule") && (h.name == "huge number" || h.name == "negative") // valid names
			if r.Code == http.StatusOK && field != "reason" && !plausible {
				t.Errorf("token form accepted %s=%s", field, h.name)
			}
			if r.Code == http.StatusOK && field == "reason" && (h.name == "bad utf-8" || h.name == "nul" || h.name == "oversized" || h.name == "newline") {
				t.Errorf("token form accepted reason=%s", h.name)
			}
		}
	}
	// Login form.
	anon := e.client()
	for _, h := range hostile {
		r := anon.do("POST", "/login", url.Values{"user": {h.v}, "password": {h.v}, "next": {h.v}}, nil)
		check("login "+h.name, r)
		if r.Code == http.StatusSeeOther {
			t.Errorf("login with %s succeeded", h.name)
		}
	}
	// Pages that show the hostile host's events.
	for _, p := range []string{"/fleet", "/events", "/events?host=evil1", "/tokens", "/chain?host=evil1"} {
		r := admin.get(p)
		if r.Code != http.StatusOK {
			t.Errorf("%s: %d", p, r.Code)
		}
		check(p, r)
	}
	if !strings.Contains(admin.get("/events?host=evil1").Body, "&lt;script&gt;window.__pwned=1&lt;/script&gt;") {
		t.Error("hostile comm not shown escaped")
	}

	// The store is intact: same events, every chain verifies, the tables are there.
	if after := countAll(); after != before {
		t.Fatalf("stored events %d before, %d after", before, after)
	}
	vr, err := qc.VerifyChain(context.Background(), &pb.VerifyChainRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(vr.GetReports()) != 4 {
		t.Fatalf("chain reports: %d hosts", len(vr.GetReports()))
	}
	for _, rep := range vr.GetReports() {
		if !rep.GetOk() {
			t.Errorf("chain of %s: %v", rep.GetHost(), rep.GetProblems())
		}
	}
	if r := admin.get("/fleet"); !strings.Contains(r.Body, `data-host="web1"`) {
		t.Error("fleet lost web1")
	}
}

// stream opens a live stream briefly: it returns the status and, for refusals, the body.
func (c *client) stream(path string) (int, string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			c.t.Errorf("stream content type %q", ct)
		}
		return resp.StatusCode, ""
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
