package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	_ "modernc.org/sqlite"

	"github.com/keyguard/keyguard/collector/collectortest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// TestCollectorCommands runs events, hosts and verify against the real collector binary over mTLS.
func TestCollectorCommands(t *testing.T) {
	bin := collectortest.Build(t)
	pki := collectortest.NewPKI(t, bin, "web1", "web2")
	dsn := filepath.Join(t.TempDir(), "events.db")
	c := collectortest.Start(t, bin, collectortest.Options{PKI: pki, DSN: dsn})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now()
	push := func(host string, evs ...*pb.Event) {
		t.Helper()
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		st, err := pb.NewIngestServiceClient(pki.Dial(t, c.Addr(), host)).Push(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&pb.PushRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
		if r, err := st.Recv(); err != nil || r.Stored != uint32(len(evs)) {
			t.Fatalf("push: %v %v", r, err)
		}
	}
	mem := func(seq uint64, comm string, d pb.Decision, ago time.Duration) *pb.Event {
		return &pb.Event{Seq: seq, Time: timestamppb.New(now.Add(-ago)), AgentVersion: "0.1.0", Kind: &pb.Event_MemoryAccess{MemoryAccess: &pb.MemoryAccess{
			Accessor: &pb.Process{Pid: 900 + uint32(seq), Comm: comm, ExePath: "/usr/bin/" + comm}, Target: &pb.Process{Pid: 42, Comm: "signer"},
			Operation: pb.AccessOperation_ACCESS_OPERATION_PROCESS_VM_READV, Rule: "signer", Decision: d}}}
	}
	push("web1",
		mem(1, "gdb", pb.Decision_DECISION_DENIED, 3*time.Hour),
		mem(2, "perf", pb.Decision_DECISION_ALLOWED_AUDIT, 30*time.Minute),
		mem(3, "gdb\x1b[31m", pb.Decision_DECISION_DENIED, 10*time.Minute),
		&pb.Event{Seq: 4, Time: timestamppb.New(now), AgentVersion: "0.1.0", Kind: &pb.Event_AgentHealth{AgentHealth: &pb.AgentHealth{
			State: pb.AgentState_AGENT_STATE_RUNNING, KernelRelease: "6.12.9", LsmActive: true, EnforcementPinned: true, ProtectedProcessCount: 2}}})
	push("web2", mem(1, "gdb", pb.Decision_DECISION_DENIED, time.Minute))

	conn := []string{"-collector", c.Addr(), "-ca", pki.File("ca.crt"), "-cert", pki.File("operator.crt"), "-key", pki.File("operator.key"), "-server-name", "localhost"}
	runCmd := func(f func(context.Context, []string, io.Writer, io.Writer) int, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := f(ctx, append(append([]string(nil), conn...), args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	cases := []struct {
		name      string
		args      []string
		wantLines int // table rows excluding header
		contains  []string
	}{
		{"all", nil, 5, []string{"TIME", "memory_access", "agent_health", "process_vm_readv"}},
		{"by host", []string{"-host", "web2"}, 1, []string{"web2"}},
		{"by decision", []string{"-decision", "denied"}, 3, nil},
		{"by kind", []string{"-kind", "agent_health"}, 1, []string{"running kernel 6.12.9"}},
		{"by process", []string{"-process", "perf"}, 1, []string{"allowed_audit"}},
		{"since", []string{"-since", "1h"}, 4, nil},
		{"range", []string{"-since", "4h", "-until", "1h"}, 1, nil},
		{"limit newest first", []string{"-limit", "2", "-newest-first"}, 2, nil},
		{"hostile filter", []string{"-host", "web1' OR '1'='1"}, 0, nil},
		{"terminal escapes are neutralised", []string{"-host", "web1", "-pid", "903"}, 1, []string{"gdb?[31m"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(runEvents, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			rows := len(lines) - 1
			if strings.TrimSpace(out) == "" {
				rows = 0
			}
			if rows != tc.wantLines {
				t.Fatalf("%d rows, want %d:\n%s", rows, tc.wantLines, out)
			}
			for _, s := range tc.contains {
				if !strings.Contains(out, s) {
					t.Fatalf("output lacks %q:\n%s", s, out)
				}
			}
			if strings.Contains(out, "\x1b") {
				t.Fatalf("raw escape sequence printed")
			}
		})
	}
	code, out, errs := runCmd(runEvents, "-json", "-decision", "denied,allowed_audit", "-host", "web1")
	if code != 0 {
		t.Fatal(errs)
	}
	jl := strings.Split(strings.TrimSpace(out), "\n")
	if len(jl) != 3 {
		t.Fatalf("json lines: %d\n%s", len(jl), out)
	}
	for _, l := range jl {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil || m["event"] == nil || m["chain_hash"] == nil {
			t.Fatalf("bad JSON line %q: %v", l, err)
		}
	}
	if code, _, errs := runCmd(runEvents, "-decision", "maybe"); code != 2 || !strings.Contains(errs, "valid:") {
		t.Fatalf("bad -decision: %d %s", code, errs)
	}
	if code, _, errs := runCmd(runEvents, "-since", "yesterday"); code != 2 || !strings.Contains(errs, "RFC 3339") {
		t.Fatalf("bad -since: %d %s", code, errs)
	}

	code, out, errs = runCmd(runHosts)
	if code != 0 || !strings.Contains(out, "web1") || !strings.Contains(out, "online") || !strings.Contains(out, "6.12.9") || !strings.Contains(out, "web2") {
		t.Fatalf("hosts: %d %s %s", code, out, errs)
	}
	code, out, errs = runCmd(runVerify)
	if code != 0 || !strings.Contains(out, "OK    web1: 4 events") || !strings.Contains(out, "OK    web2: 1 events") {
		t.Fatalf("verify: %d %s %s", code, out, errs)
	}
	// Tamper with the database behind the collector's back.
	db, err := sql.Open("sqlite", "file:"+dsn+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DELETE FROM events WHERE host = 'web1' AND seq = 2`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	code, out, _ = runCmd(runVerify)
	if code != 1 || !strings.Contains(out, "FAIL  web1") || !strings.Contains(out, "deleted at chain position 2") || !strings.Contains(out, "OK    web2") {
		t.Fatalf("verify after tampering: %d\n%s", code, out)
	}

	// Without an operator certificate the commands explain what is needed; with a host certificate the
	// collector refuses.
	var o, e bytes.Buffer
	if code := runHosts(ctx, []string{"-collector", c.Addr()}, &o, &e); code != 1 || !strings.Contains(e.String(), "operator") {
		t.Fatalf("hosts without cert: %d %s", code, e.String())
	}
	e.Reset()
	hostConn := []string{"-collector", c.Addr(), "-ca", pki.File("ca.crt"), "-cert", pki.File("web1.crt"), "-key", pki.File("web1.key"), "-server-name", "localhost"}
	if code := runEvents(ctx, hostConn, &o, &e); code != 1 || !strings.Contains(e.String(), "may not query") {
		t.Fatalf("events with host cert: %d %s", code, e.String())
	}
}
