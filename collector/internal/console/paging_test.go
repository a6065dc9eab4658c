package console_test

import (
	"database/sql"
	"html"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/collectortest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

var (
	nextRE = regexp.MustCompile(`href="(/events\?[^"]*page=[^"]*)" id="next-page"`)
	rowRE  = regexp.MustCompile(`data-host="web1" data-seq="(\d+)"`)
)

// TestPagingAndChain: 120 events page through in three keyset pages with no overlap or gap, and a
// tampered row shows up as TAMPERED in the chain view.
func TestPagingAndChain(t *testing.T) {
	dsn := filepath.Join(t.TempDir(), "events.db")
	e := startEnv(t, envOptions{DSN: dsn})
	var evs []*pb.Event
	for i := 0; i < 120; i++ {
		evs = append(evs, memAccess(time.Duration(i)*time.Second, "gdb", "/usr/bin/gdb", uint32(100+i), pb.Decision_DECISION_DENIED, "signing-keys"))
	}
	e.push("web1", evs...)
	c := e.client()
	c.mustLogin("victor", viewerPass)
	seen := map[string]bool{}
	path := "/events?host=web1"
	pages := 0
	for path != "" {
		r := c.get(path)
		if r.Code != 200 {
			t.Fatalf("%s: %d", path, r.Code)
		}
		pages++
		for _, m := range rowRE.FindAllStringSubmatch(r.Body, -1) {
			if seen[m[1]] {
				t.Fatalf("seq %s on two pages", m[1])
			}
			seen[m[1]] = true
		}
		path = ""
		if m := nextRE.FindStringSubmatch(r.Body); m != nil {
			path = html.UnescapeString(m[1])
			if strings.Contains(path, "offset") {
				t.Fatal("offset paging")
			}
		}
	}
	if len(seen) != 120 || pages != 3 {
		t.Fatalf("%d events on %d pages, want 120 on 3", len(seen), pages)
	}
	if r := c.get("/chain?host=web1"); !strings.Contains(r.Body, "intact") {
		t.Fatalf("chain before tampering:\n%s", r.Body)
	}
	db, err := sql.Open("sqlite", "file:"+dsn+"?_pragma=busy_timeout(30000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE events SET rule = 'other' WHERE host = 'web1' AND seq = 60`); err != nil {
		t.Fatal(err)
	}
	r := c.get("/chain?host=web1")
	if !strings.Contains(r.Body, "TAMPERED") || !strings.Contains(r.Body, "seq 60") {
		t.Fatalf("chain after tampering:\n%s", r.Body)
	}
}

// TestConsolePlaintextRefused: plain HTTP is refused on a non-loopback address, like the gRPC listener.
func TestConsolePlaintextRefused(t *testing.T) {
	bin := collectortest.Build(t)
	dir := t.TempDir()
	out, err := exec.Command(bin, "serve", "-insecure-plaintext", "-listen", "127.0.0.1:0", "-db", filepath.Join(dir, "e.db"),
		"-console-listen", "0.0.0.0:0", "-console-insecure-plaintext", "-console-users", filepath.Join(dir, "users")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "console.insecure_plaintext is only allowed on a loopback address") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
	out, err = exec.Command(bin, "serve", "-insecure-plaintext", "-listen", "127.0.0.1:0", "-db", filepath.Join(dir, "e.db"),
		"-console-listen", "0.0.0.0:0", "-console-users", filepath.Join(dir, "users")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "the console needs a TLS certificate") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
}
