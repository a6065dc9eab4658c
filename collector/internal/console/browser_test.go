package console_test

import (
	"database/sql"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite" // "sqlite" driver, to age a host's last-seen time

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"github.com/keyguard/keyguard/proto/optoken"
)

// makeSilent moves a host's last contact an hour back, as if it had stopped reporting.
func makeSilent(t *testing.T, dsn, host string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+dsn+"?_pragma=busy_timeout(30000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE hosts SET last_seen_ns = $1 WHERE host = $2`, time.Now().Add(-time.Hour).UnixNano(), host); err != nil {
		t.Fatal(err)
	}
}

func (b *browser) login(base, user, pass string) {
	b.t.Helper()
	b.open(base + "/login")
	b.typeInto("#user", user)
	b.typeInto("#password", pass)
	// The answer is another page at the same or another URL: wait until the old document is gone (a
	// find right after the click could still see, or miss, elements while it loads).
	var none any
	b.js("window.__kgStale = true; return null;", &none)
	b.click("#login-submit")
	b.waitFor("login answered", "window.__kgStale === undefined && document.readyState === 'complete'", 30*time.Second)
}

func (b *browser) noXSS(where string) {
	b.t.Helper()
	var pwned any
	b.js("return window.__pwned === undefined ? null : window.__pwned;", &pwned)
	if pwned != nil {
		b.t.Fatalf("%s: injected script ran (window.__pwned = %v)", where, pwned)
	}
	if n := b.count(`img[src="x"]`); n != 0 {
		b.t.Fatalf("%s: %d injected <img> elements in the DOM", where, n)
	}
	var scripts int
	b.js(`return Array.from(document.scripts).filter(s => s.textContent.includes("__pwned")).length;`, &scripts)
	if scripts != 0 {
		b.t.Fatalf("%s: injected <script> element in the DOM", where)
	}
}

// TestBrowser drives headless Chromium through the console against a real collector fed by the agent's
// export pipeline: login, fleet, live events, search, event detail, hostile data, roles and tokens.
func TestBrowser(t *testing.T) {
	requireBrowser(t)
	dsn := filepath.Join(t.TempDir(), "events.db")
	e := startEnv(t, envOptions{DSN: dsn, Config: "stale_after: 5m\n"})
	e.seed()
	makeSilent(t, dsn, "old1")
	b := newBrowser(t)

	t.Run("login required", func(t *testing.T) {
		b.t = t
		b.open(e.console + "/fleet")
		if u := b.url(); !strings.Contains(u, "/login?next=%2Ffleet") {
			t.Fatalf("without a session /fleet went to %s, want the login page", u)
		}
		b.login(e.console, "alice", "wrong-password-123")
		if got := b.text("#login-error"); got != "Wrong user name or password." {
			t.Fatalf("wrong password: %q", got)
		}
		b.screenshot("01-login-refused")
		b.login(e.console, "nosuchuser", "wrong-password-123")
		if got := b.text("#login-error"); got != "Wrong user name or password." {
			t.Fatalf("unknown user: %q", got)
		}
		var cookie string
		b.js("return document.cookie;", &cookie)
		if cookie != "" {
			t.Fatalf("script can read cookies after a refused login: %q", cookie)
		}
	})

	t.Run("fleet", func(t *testing.T) {
		b.t = t
		b.login(e.console, "alice", adminPass)
		b.waitFor("fleet page", `document.querySelector("#fleet")`, 10*time.Second)
		var cookie string
		b.js("return document.cookie;", &cookie)
		if cookie != "" {
			t.Fatalf("the session cookie is readable by script (not HttpOnly): %q", cookie)
		}
		for _, h := range []string{"web1", "web2", "old1", "evil1"} {
			if b.count(`#fleet tr[data-host="`+h+`"]`) != 1 {
				t.Fatalf("fleet does not list %s:\n%s", h, b.pageText())
			}
		}
		cells := func(host, col string) string {
			var s string
			b.js(`return document.querySelector('#fleet tr[data-host="'+arguments[0]+'"] td.'+arguments[1]).textContent.trim();`, &s, host, col)
			return s
		}
		if got := cells("web1", "kernel"); got != "6.12.0-test" {
			t.Errorf("web1 kernel %q", got)
		}
		if got := cells("web1", "agent"); got != "1.2.3" {
			t.Errorf("web1 agent %q", got)
		}
		if got := cells("web1", "lost"); got != "7" {
			t.Errorf("web1 lost events %q, want 7 (its loss report)", got)
		}
		if got := cells("web1", "protected"); got != "2" {
			t.Errorf("web1 protected %q", got)
		}
		if got := cells("web1", "findings"); !strings.Contains(got, "kernel.yama.ptrace_scope = 0") {
			t.Errorf("web1 findings %q", got)
		}
		if got := cells("web2", "lsm"); got != "no" {
			t.Errorf("web2 LSM %q", got)
		}
		if b.count(`#fleet tr.stale[data-host="old1"]`) != 1 || b.count(`#fleet tr.stale`) != 1 {
			t.Errorf("old1 (silent for an hour) should be the one stale row")
		}
		if got := cells("evil1", "kernel"); got != xssScript {
			t.Errorf("evil1 kernel shown as %q, want the literal text", got)
		}
		b.noXSS("fleet")
		b.screenshot("02-fleet")
	})

	t.Run("live events", func(t *testing.T) {
		b.t = t
		b.open(e.console + "/events")
		b.waitFor("live stream open", `document.querySelector("#live.on")`, 10*time.Second)
		b.js("window.__sameDocument = 'yes';", nil)
		e.push("web1", memAccess(30*time.Second, "livecheck", "/usr/bin/live-marker-4711", 4711, pb.Decision_DECISION_DENIED, "signing-keys"))
		start := time.Now() // the collector has acknowledged (stored) it
		b.waitFor("pushed event on the live page", `Array.from(document.querySelectorAll("#event-rows tr.new td.actor")).some(td => td.textContent.includes("/usr/bin/live-marker-4711"))`, 10*time.Second)
		t.Logf("live event shown %.2fs after the collector acknowledged it", time.Since(start).Seconds())
		e.push("evil1", memAccess(31*time.Second, xssImg, "/opt/"+xssScript, 6667, pb.Decision_DECISION_DENIED, "signing-keys"))
		b.waitFor("hostile live event", `Array.from(document.querySelectorAll("#event-rows tr.new td.actor")).some(td => td.textContent.includes("/opt/<script>"))`, 10*time.Second)
		var same string
		b.js("return window.__sameDocument || '';", &same)
		if same != "yes" {
			t.Fatal("the page was reloaded")
		}
		b.noXSS("live events")
		b.screenshot("03-live-events")
	})

	t.Run("search", func(t *testing.T) {
		b.t = t
		all := func(sel, attr, want string) {
			t.Helper()
			var vals []string
			b.js(`return Array.from(document.querySelectorAll(arguments[0])).map(e => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent.trim());`, &vals, sel, attr)
			if len(vals) == 0 {
				t.Fatalf("no rows for %s:\n%s", b.url(), b.pageText())
			}
			for _, v := range vals {
				if v != want {
					t.Fatalf("%s: a row has %q, want only %q (%v)", b.url(), v, want, vals)
				}
			}
		}
		// Through the form.
		b.open(e.console + "/events")
		b.typeInto("#f-host", "web2")
		b.click("#f-submit")
		b.waitFor("search by host", `location.search.includes("host=web2")`, 10*time.Second)
		all("#event-rows tr.event", "data-host", "web2")
		b.open(e.console + "/events?decision=denied")
		all("#event-rows tr.event td.decision", "", "denied")
		b.open(e.console + "/events?kind=core_dump")
		all("#event-rows tr.event td.kind", "", "core dump")
		b.open(e.console + "/events?process=gdb&host=web1")
		all("#event-rows tr.event td.actor", "", "/usr/bin/gdb (pid 4242, uid 1000)")
		b.open(e.console + "/events?rule=" + url.QueryEscape(sqlInject))
		all("#event-rows tr.event", "data-host", "evil1")
		b.open(e.console + "/events?host=web1&since=" + url.QueryEscape(t0.Add(1500*time.Millisecond).Format(time.RFC3339Nano)) + "&until=" + url.QueryEscape(t0.Add(2500*time.Millisecond).Format(time.RFC3339Nano)))
		all("#event-rows tr.event td.kind", "", "core dump")
		b.screenshot("04-search")
		// Hostile filter values: shown back as text, never run.
		b.open(e.console + "/events?process=" + url.QueryEscape(xssImg) + "&rule=" + url.QueryEscape(xssScript))
		var v string
		b.js(`return document.querySelector("#f-process").value;`, &v)
		if v != xssImg {
			t.Fatalf("process field shows %q", v)
		}
		b.noXSS("search with hostile filters")
		b.open(e.console + "/events?since=" + url.QueryEscape(xssScript))
		if got := b.text("#filter-error"); !strings.Contains(got, "<script>") {
			t.Fatalf("bad time not reported as text: %q", got)
		}
		b.noXSS("error message")
	})

	t.Run("event detail", func(t *testing.T) {
		b.t = t
		b.open(e.console + "/events?kind=core_dump")
		b.click("#event-rows tr.event td a")
		b.waitFor("detail page", `location.pathname.startsWith("/event/web1/")`, 10*time.Second)
		txt := b.pageText()
		for _, want := range []string{"verifier verdict", "clean", "anon", "1048576 bytes", "/system.slice/signer.service", "redacted", "chain hash"} {
			if !strings.Contains(txt, want) {
				t.Errorf("core dump detail lacks %q", want)
			}
		}
		b.screenshot("05-event-detail-dump")
		b.open(e.console + "/events?host=evil1&kind=memory_access&rule=" + url.QueryEscape(sqlInject))
		b.click("#event-rows tr.event td a")
		b.waitFor("detail page", `location.pathname.startsWith("/event/evil1/")`, 10*time.Second)
		if txt := b.pageText(); !strings.Contains(txt, xssScript) || !strings.Contains(txt, sqlInject) {
			t.Errorf("hostile event detail does not show the literal strings:\n%s", txt)
		}
		b.noXSS("hostile event detail")
		b.open(e.console + "/chain?host=web1")
		if got := b.text(`#chain-results tr[data-host="web1"] .verdict`); got != "intact" {
			t.Errorf("chain of web1: %q", got)
		}
	})

	t.Run("admin issues a token", func(t *testing.T) {
		b.t = t
		b.open(e.console + "/tokens")
		b.typeInto("#t-host", "web1")
		b.typeInto("#t-reason", "incident 42: attach gdb to the signer")
		b.typeInto("#t-rule", "signing-keys")
		b.typeInto("#t-executable", "/usr/bin/gdb")
		b.typeInto("#t-uid", "0")
		b.typeInto("#t-duration", "15m")
		b.click("#t-submit")
		b.waitFor("issued token", `document.querySelector("#issued-token")`, 10*time.Second)
		var tok string
		b.js(`return document.querySelector("#issued-token").value;`, &tok)
		c, err := optoken.Verify(e.pub, tok, time.Now())
		if err != nil {
			t.Fatalf("issued token does not verify: %v (%q)", err, tok)
		}
		if c.Action != optoken.ActionBreakGlass || c.Host != "web1" || c.Operator != "alice" || c.Rule != "signing-keys" ||
			c.Executable != "/usr/bin/gdb" || c.UID == nil || *c.UID != 0 || c.Duration != "15m0s" {
			t.Fatalf("claims %+v", c)
		}
		if !strings.Contains(b.text("#token-history"), "incident 42") {
			t.Error("issuance not listed")
		}
		b.screenshot("06-token-issued")
		// Reload shows the record, never the token again.
		b.open(e.console + "/tokens")
		if b.count("#issued-token") != 0 || strings.Contains(b.pageText(), tok) {
			t.Fatal("token shown again")
		}
		if !strings.Contains(e.c.Log(), "console issued operator token") {
			t.Error("issuance not logged")
		}
	})

	t.Run("viewer cannot issue tokens", func(t *testing.T) {
		b.t = t
		b.click(`header form.logout button`)
		b.waitFor("logged out", `location.pathname == "/login"`, 10*time.Second)
		b.login(e.console, "victor", viewerPass)
		b.waitFor("fleet page", `document.querySelector("#fleet")`, 10*time.Second)
		if b.count("#nav-tokens") != 0 {
			t.Fatal("viewer sees the token link")
		}
		b.open(e.console + "/tokens")
		if got := b.text("h1"); got != "403" {
			t.Fatalf("viewer /tokens: %q", got)
		}
		b.screenshot("07-viewer-forbidden")
		// A direct POST from the viewer's page, with a valid CSRF token and the right Origin: still 403.
		b.open(e.console + "/fleet")
		var status float64
		b.asyncJS(`const done = arguments[arguments.length-1];
			const body = new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value, action: "uninstall", host: "web1", reason: "viewer tries to uninstall", valid: "1h"});
			fetch("/tokens", {method: "POST", body}).then(r => done(r.status)).catch(e => done(-1));`, &status)
		if status != 403 {
			t.Fatalf("viewer POST /tokens: %v, want 403", status)
		}
	})
}
