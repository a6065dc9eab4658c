package console_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

func TestLogin(t *testing.T) {
	e := startEnv(t, envOptions{})
	c := e.client()

	// Nothing but the login page and static assets without a session.
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/fleet", http.StatusSeeOther},
		{"GET", "/", http.StatusSeeOther},
		{"GET", "/events?host=web1", http.StatusSeeOther},
		{"GET", "/event/web1/1", http.StatusSeeOther},
		{"GET", "/chain?host=web1", http.StatusSeeOther},
		{"GET", "/tokens", http.StatusSeeOther},
		{"GET", "/events/stream", http.StatusUnauthorized},
		{"POST", "/tokens", http.StatusUnauthorized},
		{"POST", "/logout", http.StatusUnauthorized},
		{"GET", "/login", http.StatusOK},
		{"GET", "/static/console.js", http.StatusOK},
		{"GET", "/static/console.css", http.StatusOK},
	} {
		var r response
		if tc.method == "POST" {
			r = c.do("POST", tc.path, url.Values{"action": {"uninstall"}}, nil)
		} else {
			r = c.get(tc.path)
		}
		if r.Code != tc.want {
			t.Errorf("%s %s without a session: %d, want %d", tc.method, tc.path, r.Code, tc.want)
		}
		if r.Code == http.StatusSeeOther && !strings.HasPrefix(r.Header.Get("Location"), "/login?next=") {
			t.Errorf("%s %s redirects to %q", tc.method, tc.path, r.Header.Get("Location"))
		}
		if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("%s %s: CSP %q", tc.method, tc.path, csp)
		}
	}

	// A wrong password and an unknown user get the same answer.
	wrong := c.login("alice", "not-the-password")
	unknown := c.login("mallory", "not-the-password")
	if wrong.Code != http.StatusUnauthorized || unknown.Code != wrong.Code {
		t.Fatalf("wrong password %d, unknown user %d; want 401 for both", wrong.Code, unknown.Code)
	}
	norm := func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, "alice", "USER"), "mallory", "USER")
	}
	if norm(wrong.Body) != norm(unknown.Body) {
		t.Fatalf("wrong password and unknown user answer differently:\n%s\n----\n%s", wrong.Body, unknown.Body)
	}
	if len(wrong.Header.Values("Set-Cookie")) != 0 {
		t.Fatal("a refused login set a cookie")
	}

	// Success: a __Host- cookie, Secure, HttpOnly, SameSite=Strict; an off-site next is ignored.
	r := c.do("POST", "/login", url.Values{"user": {"alice"}, "password": {adminPass}, "next": {"//evil.example/x"}}, nil)
	if r.Code != http.StatusSeeOther || r.Header.Get("Location") != "/fleet" {
		t.Fatalf("login: %d to %q", r.Code, r.Header.Get("Location"))
	}
	ck := r.Header.Get("Set-Cookie")
	for _, want := range []string{"__Host-keyguard_session=", "Path=/", "HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(ck, want) {
			t.Errorf("session cookie %q lacks %s", ck, want)
		}
	}
	if strings.Contains(ck, "Domain=") {
		t.Errorf("session cookie has a Domain: %q", ck)
	}
	if r := c.get("/fleet"); r.Code != http.StatusOK {
		t.Fatalf("/fleet after login: %d", r.Code)
	}
	// Logout ends the session in the database: the old cookie no longer works.
	jarCopy := e.client()
	u, _ := url.Parse(e.console)
	jarCopy.hc.Jar.SetCookies(u, c.hc.Jar.Cookies(u))
	if r := c.do("POST", "/logout", url.Values{"csrf": {c.csrf()}}, nil); r.Code != http.StatusSeeOther {
		t.Fatalf("logout: %d", r.Code)
	}
	if r := jarCopy.get("/fleet"); r.Code != http.StatusSeeOther {
		t.Fatalf("old session cookie after logout: %d, want a redirect to login", r.Code)
	}

	// Rate limit: after 5 failures for bob even the right password is refused for a while.
	for i := 0; i < 5; i++ {
		if r := c.login("bob", "wrong-password-x"); r.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i+1, r.Code)
		}
	}
	if r := c.login("bob", viewerPass); r.Code != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("6th attempt for bob: %d, want 429 with Retry-After", r.Code)
	}
	// Other users are not locked out by bob's failures.
	if r := c.login("victor", viewerPass); r.Code != http.StatusSeeOther {
		t.Fatalf("victor after bob's lockout: %d", r.Code)
	}
	// A login from another origin is refused.
	if r := c.do("POST", "/login", url.Values{"user": {"alice"}, "password": {adminPass}}, map[string]string{"Origin": "https://evil.example"}); r.Code != http.StatusForbidden {
		t.Fatalf("cross-origin login: %d", r.Code)
	}
}

var tokenRE = regexp.MustCompile(`kgt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)

func tokenForm(csrf string) url.Values {
	return url.Values{"csrf": {csrf}, "action": {"uninstall"}, "host": {"web1"}, "reason": {"decommissioning web1 (ticket 77)"}, "valid": {"30m"}}
}

func TestCSRFAndRoles(t *testing.T) {
	e := startEnv(t, envOptions{})
	admin := e.client()
	admin.mustLogin("alice", adminPass)
	csrf := admin.csrf()

	for _, tc := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no token", func() url.Values { f := tokenForm(csrf); f.Del("csrf"); return f }(), nil},
		{"wrong token", tokenForm("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), nil},
		{"other origin", tokenForm(csrf), map[string]string{"Origin": "https://evil.example"}},
		{"other port", tokenForm(csrf), map[string]string{"Origin": e.console + "1"}},
		{"plain http origin", tokenForm(csrf), map[string]string{"Origin": strings.Replace(e.console, "https:", "http:", 1)}},
		{"no origin, no referer", tokenForm(csrf), map[string]string{"Origin": ""}},
		{"no origin, foreign referer", tokenForm(csrf), map[string]string{"Origin": "", "Referer": "https://evil.example/tokens"}},
	} {
		r := admin.do("POST", "/tokens", tc.form, tc.hdr)
		if r.Code != http.StatusForbidden || tokenRE.MatchString(r.Body) {
			t.Errorf("%s: %d (token issued: %v), want 403", tc.name, r.Code, tokenRE.MatchString(r.Body))
		}
	}
	// Logout is state-changing too.
	if r := admin.do("POST", "/logout", url.Values{}, nil); r.Code != http.StatusForbidden {
		t.Errorf("logout without CSRF token: %d", r.Code)
	}
	// The real thing works, and the token verifies.
	r := admin.do("POST", "/tokens", tokenForm(csrf), nil)
	tok := tokenRE.FindString(r.Body)
	if r.Code != http.StatusOK || tok == "" {
		t.Fatalf("admin POST /tokens: %d\n%s", r.Code, r.Body)
	}
	cl, err := optoken.Verify(e.pub, tok, time.Now())
	if err != nil || cl.Action != "uninstall" || cl.Host != "web1" || cl.Operator != "alice" || cl.ExpiresAt.Sub(cl.IssuedAt) != 30*time.Minute {
		t.Fatalf("token: %+v, %v", cl, err)
	}
	if r.Header.Get("Cache-Control") != "no-store" {
		t.Error("token page may be cached")
	}
	// Referer fallback when a privacy setting strips Origin.
	if r := admin.do("POST", "/tokens", tokenForm(csrf), map[string]string{"Origin": "", "Referer": e.console + "/tokens"}); r.Code != http.StatusOK {
		t.Errorf("same-origin Referer without Origin: %d", r.Code)
	}

	// A viewer gets 403 for the page and the POST, even with a valid CSRF token.
	viewer := e.client()
	viewer.mustLogin("victor", viewerPass)
	if r := viewer.get("/tokens"); r.Code != http.StatusForbidden {
		t.Errorf("viewer GET /tokens: %d", r.Code)
	}
	r = viewer.do("POST", "/tokens", tokenForm(viewer.csrf()), nil)
	if r.Code != http.StatusForbidden || tokenRE.MatchString(r.Body) {
		t.Errorf("viewer POST /tokens: %d", r.Code)
	}
	if strings.Contains(viewer.get("/fleet").Body, `href="/tokens"`) {
		t.Error("viewer's navigation links to /tokens")
	}
	// Only the two admin issuances are recorded.
	h := admin.get("/tokens").Body
	if n := strings.Count(h, "decommissioning web1"); n != 2 {
		t.Errorf("issuance records: %d, want 2", n)
	}
}

func TestSessionExpiry(t *testing.T) {
	// Limits leave room for a loaded machine: a request stalled past session_idle would end the session
	// (seen with 4 s under a load of 20 on two cores).
	e := startEnv(t, envOptions{Config: "  session_idle: 8s\n  session_max: 18s\n"})
	c := e.client()
	c.mustLogin("alice", adminPass)
	time.Sleep(9 * time.Second)
	if r := c.get("/fleet"); r.Code != http.StatusSeeOther {
		t.Fatalf("after the idle limit: %d, want a redirect to login", r.Code)
	}
	// Kept busy, the session still ends at the absolute limit.
	start := time.Now()
	c.mustLogin("alice", adminPass)
	for time.Since(start) < 24*time.Second {
		r := c.get("/fleet")
		if r.Code == http.StatusSeeOther {
			if time.Since(start) < 14*time.Second {
				t.Fatalf("session of an active user ended after %s", time.Since(start))
			}
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatal("an active session outlived session_max")
}

// TestSharedSessions: two collectors on one PostgreSQL database accept each other's sessions.
func TestSharedSessionsPostgres(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a := startEnv(t, envOptions{DSN: dsn})
	b := startEnv(t, envOptions{DSN: dsn, Share: a})
	a.push("web1", health("1.2.3", "6.12.0-test", true, true, 1))
	ca := a.client()
	ca.mustLogin("alice", adminPass)
	cb := b.client()
	ua, _ := url.Parse(a.console)
	ub, _ := url.Parse(b.console)
	cb.hc.Jar.SetCookies(ub, ca.hc.Jar.Cookies(ua))
	r := cb.get("/fleet")
	if r.Code != http.StatusOK || !strings.Contains(r.Body, `data-host="web1"`) {
		t.Fatalf("collector B with A's session: %d", r.Code)
	}
	// An event pushed to A appears in B's event list (same database, same QueryService code).
	a.push("web1", memAccess(time.Second, "gdb", "/usr/bin/gdb-shared", 1, pb.Decision_DECISION_DENIED, "signing-keys"))
	if !strings.Contains(cb.get("/events?host=web1").Body, "/usr/bin/gdb-shared") {
		t.Fatal("B does not list the event stored through A")
	}
	if r := cb.do("POST", "/logout", url.Values{"csrf": {cb.csrf()}}, nil); r.Code != http.StatusSeeOther {
		t.Fatalf("logout at B: %d", r.Code)
	}
	if r := ca.get("/fleet"); r.Code != http.StatusSeeOther {
		t.Fatalf("A after logout at B: %d, want a redirect to login", r.Code)
	}
}
