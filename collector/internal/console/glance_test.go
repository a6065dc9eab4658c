package console_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/internal/console"
	"github.com/keyguard/keyguard/collector/internal/query"
	"github.com/keyguard/keyguard/collector/internal/store"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// glanceConsole is a logged-in console over st (the query server is returned for VerifyChain).
func glanceConsole(t *testing.T, st *store.Store) (*query.Server, func(path string) string) {
	t.Helper()
	users := filepath.Join(t.TempDir(), "users")
	if err := console.AddUser(users, "alice", "admin", adminPass); err != nil {
		t.Fatal(err)
	}
	qs := query.New(st, slog.New(slog.DiscardHandler), nil, query.Options{StaleAfter: 5 * time.Minute})
	c, err := console.New(console.Options{Store: st, Query: qs, UsersFile: users})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "https://example.com/login", strings.NewReader(url.Values{"user": {"alice"}, "password": {adminPass}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://example.com")
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || len(rec.Result().Cookies()) == 0 {
		t.Fatalf("login: %d", rec.Code)
	}
	cookie := rec.Result().Cookies()[0]
	return qs, func(path string) string {
		req := httptest.NewRequest("GET", "https://example.com"+path, nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d\n%s", path, rec.Code, rec.Body.String())
		}
		return rec.Body.String()
	}
}

func healthEv(host string, seq uint64, h *pb.AgentHealth) *pb.Event {
	return &pb.Event{Host: host, Seq: seq, Time: timestamppb.Now(), Kind: &pb.Event_AgentHealth{AgentHealth: h}}
}

// fleetRow returns the fleet table row of a host.
func fleetRow(t *testing.T, page, host string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tr class="[^"]*" data-host="` + regexp.QuoteMeta(host) + `">.*?</tr>`).FindString(page)
	if m == "" {
		t.Fatalf("no fleet row for %s", host)
	}
	return m
}

// TestFleetAtAGlance: "not enforcing" for a host whose agent refused, lacks BPF LSM or protects nothing;
// "tampered" once its chain fails verification; neither for a healthy host.
func TestFleetAtAGlance(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{DSN: filepath.Join(t.TempDir(), "fleet.db"), Collector: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	good := &pb.AgentHealth{State: pb.AgentState_AGENT_STATE_RUNNING, LsmActive: true, EnforcementPinned: true, ProtectedProcessCount: 2}
	hosts := map[string]*pb.AgentHealth{
		"good":      good,
		"refused":   {State: pb.AgentState_AGENT_STATE_REFUSED, LsmActive: true, EnforcementPinned: true, ProtectedProcessCount: 2, Detail: "unapproved policy"},
		"nolsm":     {State: pb.AgentState_AGENT_STATE_RUNNING, LsmActive: false, ProtectedProcessCount: 2},
		"nothing":   {State: pb.AgentState_AGENT_STATE_RUNNING, LsmActive: true, EnforcementPinned: true},
		"tampering": good,
	}
	for h, hh := range hosts {
		evs := []*pb.Event{healthEv(h, 1, hh), healthEv(h, 2, good)}
		evs[1] = healthEv(h, 2, hh)
		if _, err := st.Append(ctx, h, evs, nil); err != nil {
			t.Fatal(err)
		}
	}
	qs, get := glanceConsole(t, st)
	page := get("/fleet")
	for h := range hosts {
		row := fleetRow(t, page, h)
		want := h != "good" && h != "tampering"
		if got := strings.Contains(row, "not enforcing"); got != want {
			t.Errorf("%s: 'not enforcing' shown = %v, want %v\n%s", h, got, want, row)
		}
		if strings.Contains(row, ">tampered<") {
			t.Errorf("%s: tampered before any verification", h)
		}
	}
	if _, err := st.DB().Exec(`UPDATE events SET payload = $1 WHERE host = 'tampering' AND seq = 1`, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	if _, err := qs.VerifyChain(ctx, &pb.VerifyChainRequest{}); err != nil {
		t.Fatal(err)
	}
	page = get("/fleet")
	if row := fleetRow(t, page, "tampering"); !strings.Contains(row, ">tampered<") {
		t.Errorf("tampering: no 'tampered' after a failed verification\n%s", row)
	}
	if row := fleetRow(t, page, "good"); strings.Contains(row, ">tampered<") || strings.Contains(row, "not enforcing") {
		t.Errorf("good host flagged\n%s", row)
	}
}

// TestGroupedViewAndSeverityFilter: 500 identical denials and 3 distinct ones are 4 lines in the grouped
// view (500 first); the severity filter hides the low metadata reads.
func TestGroupedViewAndSeverityFilter(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{DSN: filepath.Join(t.TempDir(), "g.db"), Collector: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk := func(seq uint64, exe, path string) *pb.Event {
		return &pb.Event{Host: "web1", Seq: seq, Time: timestamppb.New(time.Now().Add(time.Duration(seq) * time.Millisecond)),
			Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
				Accessor: &pb.Process{Pid: 7, ExePath: exe}, Target: &pb.Process{Pid: 9, ExePath: "/opt/signer"},
				Operation: pb.AccessOperation_ACCESS_OPERATION_PROC_OPEN, ProcPath: path, Rule: "signer", Decision: pb.Decision_DECISION_DENIED}}}
	}
	var evs []*pb.Event
	for i := uint64(1); i <= 500; i++ {
		evs = append(evs, mk(i, "/usr/bin/attackloop", "/proc/9/mem"))
	}
	for i := uint64(501); i <= 503; i++ {
		evs = append(evs, mk(i, fmt.Sprintf("/usr/lib/systemd/reader%d", i), "/proc/9/exe"))
	}
	if _, err := st.Append(ctx, "web1", evs, nil); err != nil {
		t.Fatal(err)
	}
	_, get := glanceConsole(t, st)
	page := get("/events?view=grouped")
	rows := regexp.MustCompile(`<tr class="group sev-(\w+)"><td class="count">(?:<a [^>]*>)?(\d+)`).FindAllStringSubmatch(page, -1)
	if len(rows) != 4 || rows[0][2] != "500" || rows[0][1] != "high" || rows[1][2] != "1" || rows[1][1] != "low" {
		t.Fatalf("grouped rows = %v, want 500 (high) then three of 1 (low)", rows)
	}
	page = get("/events?view=grouped&severity=medium")
	if rows := regexp.MustCompile(`<tr class="group `).FindAllString(page, -1); len(rows) != 1 {
		t.Errorf("severity=medium: %d groups, want the attack loop only", len(rows))
	}
	page = get("/events?severity=high")
	if n := strings.Count(page, `class="event sev-high`); n == 0 {
		t.Errorf("severity=high list: %d high rows", n)
	}
	if strings.Contains(page, "sev-low") {
		t.Error("severity=high list shows low events")
	}
}

// TestGroupedViewCountsAttempts: an attack loop the agent's kernel aggregated (its first attempt, then one
// event counting 99,999 more) is one group of 100,000 attempts, above a reader seen three times; the list
// and the event page show the aggregate's count.
func TestGroupedViewCountsAttempts(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{DSN: filepath.Join(t.TempDir(), "g.db"), Collector: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	mk := func(seq uint64, exe string) *pb.Event {
		return &pb.Event{Host: "web1", Seq: seq, Time: timestamppb.New(now.Add(time.Duration(seq) * time.Millisecond)),
			Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
				Accessor: &pb.Process{Pid: 7, ExePath: exe}, Target: &pb.Process{Pid: 9, ExePath: "/opt/signer"},
				Operation: pb.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, Rule: "signer", Decision: pb.Decision_DECISION_DENIED}}}
	}
	agg := mk(2, "/usr/bin/oneshot")
	m := agg.GetMemoryAccess()
	m.Count, m.AccessorProcesses, m.LastAccessorPid = 99_999, 100_000, 31337
	m.FirstTime, m.LastTime = timestamppb.New(now), timestamppb.New(now.Add(time.Minute))
	evs := []*pb.Event{mk(1, "/usr/bin/oneshot"), agg}
	for seq := uint64(3); seq <= 5; seq++ {
		evs = append(evs, mk(seq, "/usr/bin/gdb"))
	}
	if _, err := st.Append(ctx, "web1", evs, nil); err != nil {
		t.Fatal(err)
	}
	_, get := glanceConsole(t, st)
	rows := regexp.MustCompile(`<tr class="group sev-\w+"><td class="count">(?:<a [^>]*>)?(\d+)<.*?<td class="actor">([^<]*)<`).
		FindAllStringSubmatch(get("/events?view=grouped"), -1)
	if len(rows) != 2 || rows[0][1] != "100000" || rows[0][2] != "/usr/bin/oneshot" || rows[1][1] != "3" || rows[1][2] != "/usr/bin/gdb" {
		t.Fatalf("grouped rows = %v, want /usr/bin/oneshot 100000 then /usr/bin/gdb 3", rows)
	}
	if page := get("/events"); !strings.Contains(page, "(99999 attempts)") {
		t.Errorf("the event list does not show the aggregate's count")
	}
}
