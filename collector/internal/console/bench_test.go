package console_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/collector/internal/console"
	"github.com/keyguard/keyguard/collector/internal/query"
	"github.com/keyguard/keyguard/collector/internal/store"
	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Benchmarks print figures (reported metrics); they assert nothing about speed.
//
//	go test ./collector/internal/console -run '^$' -bench . -benchtime 200x

const (
	benchHosts         = 100
	benchEventsPerHost = 10000 // 1,000,000 events in all
	benchSpan          = 10 * 24 * time.Hour
)

var benchBase = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// seedMillion stores 1,000,000 events: 100 hosts × 10,000 events spread over 10 days, a mix of kinds and
// decisions, appended through the store as ingest does (hash chain, indexes).
func seedMillion(b *testing.B, st *store.Store) {
	b.Helper()
	start := time.Now()
	step := benchSpan / benchEventsPerHost
	const batch = 5000
	for h := 0; h < benchHosts; h++ {
		host := fmt.Sprintf("host-%03d", h)
		for from := 1; from <= benchEventsPerHost; from += batch {
			evs := make([]*pb.Event, 0, batch)
			for i := from; i < from+batch && i <= benchEventsPerHost; i++ {
				t := benchBase.Add(time.Duration(i)*step + time.Duration(h)*time.Millisecond)
				ev := &pb.Event{Host: host, Seq: uint64(i), Time: timestamppb.New(t), AgentVersion: "1.0.0"}
				dec := pb.Decision_DECISION_DENIED
				if i%3 == 0 {
					dec = pb.Decision_DECISION_ALLOWED_AUDIT
				}
				if i%50 == 0 {
					ev.Kind = &pb.Event_ProtectionChange{ProtectionChange: &pb.ProtectionChange{
						Process: &pb.Process{Pid: uint32(i), Comm: "signer", ExePath: "/opt/signer"}, Rule: "signing-keys",
						State: pb.ProtectionState_PROTECTION_STATE_PROTECTED, Reason: pb.ProtectionReason_PROTECTION_REASON_EXEC}}
				} else {
					ev.Kind = &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
						Accessor:  &pb.Process{Pid: uint32(1000 + i%500), Comm: "gdb", ExePath: "/usr/bin/gdb", Uid: 1000, CgroupPath: "/user.slice"},
						Target:    &pb.Process{Pid: 1717, Comm: "signer", ExePath: "/opt/signer", CgroupPath: "/system.slice/signer.service"},
						Operation: pb.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, Rule: "signing-keys", Decision: dec}}
				}
				evs = append(evs, ev)
			}
			if _, err := st.Append(context.Background(), host, evs, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Logf("seeded %d events in %s", benchHosts*benchEventsPerHost, time.Since(start).Round(time.Second))
}

// benchConsole is a console over st with a logged-in admin (cookie) for in-process requests.
type benchConsole struct {
	h      http.Handler
	cookie *http.Cookie
}

func newBenchConsole(b *testing.B, st *store.Store) *benchConsole {
	b.Helper()
	users := filepath.Join(b.TempDir(), "users")
	if err := console.AddUser(users, "alice", "admin", adminPass); err != nil {
		b.Fatal(err)
	}
	qs := query.New(st, slog.New(slog.DiscardHandler), nil, query.Options{StaleAfter: 5 * time.Minute})
	c, err := console.New(console.Options{Store: st, Query: qs, UsersFile: users})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest("POST", "https://example.com/login", strings.NewReader(url.Values{"user": {"alice"}, "password": {adminPass}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://example.com")
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(cookies) == 0 {
		b.Fatalf("login: %d", rec.Code)
	}
	return &benchConsole{h: c, cookie: cookies[0]}
}

func (bc *benchConsole) get(b *testing.B, path string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", "https://example.com"+path, nil)
	req.AddCookie(bc.cookie)
	rec := httptest.NewRecorder()
	bc.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("GET %s: %d\n%s", path, rec.Code, rec.Body.String())
	}
	return rec
}

var (
	millionMu     sync.Mutex
	millionStores = map[string]*store.Store{}
)

// millionStore opens (once per backend and test binary) a store holding 1,000,000 events.
func millionStore(b *testing.B, backend string) *store.Store {
	millionMu.Lock()
	defer millionMu.Unlock()
	if st := millionStores[backend]; st != nil {
		return st
	}
	var dsn string
	if backend == "postgres" {
		dsn = pgtest.NewDatabase(b)
	} else {
		dir, err := tempDirForBinary()
		if err != nil {
			b.Fatal(err)
		}
		dsn = filepath.Join(dir, "million.db")
	}
	st, err := store.Open(context.Background(), store.Options{DSN: dsn, Collector: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	seedMillion(b, st)
	if backend == "postgres" {
		if _, err := st.DB().Exec("ANALYZE"); err != nil {
			b.Fatal(err)
		}
	} else if _, err := st.DB().Exec("ANALYZE"); err != nil {
		b.Fatal(err)
	}
	millionStores[backend] = st
	return st
}

// BenchmarkSearch times the console's event search (HTTP handler: filter parsing, QueryService.ListEvents,
// rendering) over 1,000,000 stored events, first page (50 events, newest first), and reports p50/p99.
func BenchmarkSearch(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, q := range []struct{ name, query string }{
			// One host, one day out of ten: 1,000 matching events.
			{"host+day", "host=host-042&since=2026-11-04T00:00:00Z&until=2026-11-05T00:00:00Z"},
			// One host, one hour, denied only.
			{"host+hour+denied", "host=host-042&since=2026-11-04T10:00:00Z&until=2026-11-04T11:00:00Z&decision=denied"},
			// Every host, one day.
			{"all-hosts+day", "since=2026-11-04T00:00:00Z&until=2026-11-05T00:00:00Z"},
			// One host, everything (the newest events of its 10,000).
			{"host-only", "host=host-042"},
		} {
			b.Run(backend+"/"+q.name, func(b *testing.B) {
				st := millionStore(b, backend)
				bc := newBenchConsole(b, st)
				bc.get(b, "/events?"+q.query) // warm up
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t := time.Now()
					rec := bc.get(b, "/events?"+q.query)
					lat = append(lat, time.Since(t))
					if i == 0 && !strings.Contains(rec.Body.String(), `class="event`) {
						b.Fatal("no events found")
					}
				}
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())/1000, "p99-ms")
			})
		}
	}
}

// BenchmarkFleet renders the fleet view for 1,000 hosts (each with a health report carrying posture
// findings and a loss report) and reports the page's size.
func BenchmarkFleet(b *testing.B) {
	st, err := store.Open(context.Background(), store.Options{DSN: filepath.Join(b.TempDir(), "fleet.db"), Collector: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for h := 0; h < 1000; h++ {
		host := fmt.Sprintf("web-%04d.prod.example.com", h)
		evs := []*pb.Event{
			{Host: host, Seq: 1, Time: timestamppb.New(now.Add(-time.Minute)), AgentVersion: "1.4.2", Kind: &pb.Event_AgentHealth{AgentHealth: &pb.AgentHealth{
				State: pb.AgentState_AGENT_STATE_RUNNING, AgentVersion: "1.4.2", KernelRelease: "6.12.48+deb13-amd64", LsmActive: h%50 != 0,
				EnforcementPinned: true, ProtectedProcessCount: uint32(h % 7), Findings: []*pb.PostureFinding{
					{Name: "kernel.yama.ptrace_scope", Value: "1", Severity: pb.Severity_SEVERITY_LOW},
					{Name: "kernel.core_pattern", Value: "|/usr/lib/systemd/systemd-coredump", Severity: pb.Severity_SEVERITY_INFO},
					{Name: "lockdown", Value: "none", Severity: pb.Severity_SEVERITY_MEDIUM},
				}}}},
			{Host: host, Seq: 2, Time: timestamppb.New(now), Kind: &pb.Event_LossReport{LossReport: &pb.LossReport{
				Source: pb.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER, Count: uint64(h % 5)}}},
		}
		if _, err := st.Append(context.Background(), host, evs, nil); err != nil {
			b.Fatal(err)
		}
	}
	bc := newBenchConsole(b, st)
	size := bc.get(b, "/fleet").Body.Len()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bc.get(b, "/fleet")
	}
	b.StopTimer()
	b.ReportMetric(float64(size), "page-bytes")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/render")
}

var (
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
)

// tempDirForBinary is a directory that lives as long as the test binary (the million-event SQLite file
// is shared by sub-benchmarks).
func tempDirForBinary() (string, error) {
	binDirOnce.Do(func() { binDir, binDirErr = mkdirTemp() })
	return binDir, binDirErr
}

func mkdirTemp() (string, error) { return os.MkdirTemp("", "keyguard-console-bench-") }
