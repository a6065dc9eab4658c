package metrics

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/collector/collectortest"
	"github.com/keyguard/keyguard/collector/promtest"
	"github.com/keyguard/keyguard/deploy/metricsserver"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// serve serves a's registry on a loopback port until the test ends and returns the /metrics URL.
func serve(t *testing.T, a *Agent) string {
	t.Helper()
	ln, err := metricsserver.Listen("127.0.0.1:0", false, metricsserver.Flags())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = metricsserver.Serve(ctx, ln, a.Registry(), nil) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String() + metricsserver.Path
}

func scrapeURL(t *testing.T, url string) promtest.Families {
	t.Helper()
	f, err := promtest.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

var decisionOf = map[string]keyguardv1.Decision{
	"denied": keyguardv1.Decision_DECISION_DENIED, "allowed_audit": keyguardv1.Decision_DECISION_ALLOWED_AUDIT,
	"allowed_policy": keyguardv1.Decision_DECISION_ALLOWED_POLICY, "allowed_break_glass": keyguardv1.Decision_DECISION_ALLOWED_BREAK_GLASS,
}

func access(rule, decision string) *keyguardv1.Event {
	return &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_MemoryAccess{MemoryAccess: &keyguardv1.MemoryAccess{
		Operation: keyguardv1.AccessOperation_ACCESS_OPERATION_PTRACE_ATTACH, Rule: rule, Decision: decisionOf[decision]}}}
}

// sideDoor is a denied side door; detail starts with the operation.
func sideDoor(kind keyguardv1.SideDoorKind, rule, detail string) *keyguardv1.Event {
	return events.SideDoor(&keyguardv1.SideDoor{Kind: kind, Rule: rule, Detail: detail, Decision: keyguardv1.Decision_DECISION_DENIED})
}

func dump(rule string, action keyguardv1.CoreDumpAction) *keyguardv1.Event {
	return events.CoreDump(&keyguardv1.CoreDump{Rule: rule, Action: action})
}

func TestDecisionsCountedFromEvents(t *testing.T) {
	a := New(Sources{})
	url := serve(t, a)
	evs := []*keyguardv1.Event{
		access("signer", "denied"), access("signer", "denied"), access("signer", "denied"),
		access("signer", "allowed_audit"),
		access("signer", "allowed_policy"),
		access("signer", "allowed_break_glass"),
		access("other", "denied"),
		sideDoor(keyguardv1.SideDoorKind_SIDE_DOOR_KIND_BPF_LOAD, "", "bpf_load x (program type 2)"),
		sideDoor(keyguardv1.SideDoorKind_SIDE_DOOR_KIND_PERF_EVENT, "signer", "perf_event sample_type 0x2000"),
		sideDoor(keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER, "", "keyguard_pin_unlink events"),
		sideDoor(keyguardv1.SideDoorKind_SIDE_DOOR_KIND_KEYGUARD_TAMPER, "", "keyguard_map_write id 7"),
		dump("signer", keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_BLOCKED),
		dump("signer", keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_REDACTED),
		events.Protection(&keyguardv1.ProtectionChange{Rule: "signer"}),
		{Kind: &keyguardv1.Event_LossReport{LossReport: &keyguardv1.LossReport{Source: keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER, Count: 5}}},
		events.Health(&keyguardv1.AgentHealth{State: keyguardv1.AgentState_AGENT_STATE_STARTED}),
	}
	for _, ev := range evs {
		a.Observe(ev)
	}
	f := scrapeURL(t, url)
	for _, tc := range []struct {
		kind, rule, decision string
		want                 float64
	}{
		{"access", "signer", "denied", 3},
		{"access", "signer", "allowed_audit", 1},
		{"access", "signer", "allowed_policy", 1},
		{"access", "signer", "allowed_break_glass", 1},
		{"access", "other", "denied", 1},
		{"side_door", "", "denied", 1},
		{"side_door", "signer", "denied", 1},
		{"tamper", "", "denied", 2},
		{"core_dump", "signer", "blocked", 1},
		{"core_dump", "signer", "redacted", 1},
	} {
		got, err := f.Value("keyguard_agent_decisions_total", "kind", tc.kind, "rule", tc.rule, "decision", tc.decision)
		if err != nil || got != tc.want {
			t.Errorf("decisions{kind=%s,rule=%s,decision=%s} = %v (%v), want %v", tc.kind, tc.rule, tc.decision, got, err, tc.want)
		}
	}
	if n := len(f["keyguard_agent_decisions_total"].GetMetric()); n != 10 {
		t.Errorf("%d decision series, want 10 (protect, loss and health events are not decisions)", n)
	}
	for kind, want := range map[string]float64{"access": 7, "side_door": 4, "core_dump": 2, "protect": 1, "loss": 1, "health": 1} {
		if got, err := f.Value("keyguard_agent_events_total", "kind", kind); err != nil || got != want {
			t.Errorf("events_total{kind=%s} = %v (%v), want %v", kind, got, err, want)
		}
	}
}

func TestRuleLabelsCapped(t *testing.T) {
	a := New(Sources{})
	url := serve(t, a)
	for i := range MaxRuleLabels + 10 {
		a.Observe(access(fmt.Sprintf("rule-%d", i), "denied"))
	}
	a.Observe(access("rule-0", "denied")) // a known rule keeps its label
	f := scrapeURL(t, url)
	if got, err := f.Value("keyguard_agent_decisions_total", "rule", "other"); err != nil || got != 10 {
		t.Errorf(`rule="other" = %v (%v), want 10`, got, err)
	}
	if got, err := f.Value("keyguard_agent_decisions_total", "rule", "rule-0"); err != nil || got != 2 {
		t.Errorf(`rule="rule-0" = %v (%v), want 2`, got, err)
	}
	if n := len(f["keyguard_agent_decisions_total"].GetMetric()); n != MaxRuleLabels+1 {
		t.Errorf("%d series, want %d", n, MaxRuleLabels+1)
	}
}

// The kernel's counters and loss are read at scrape time, every scrape anew.
func TestKernelCountersReadAtScrape(t *testing.T) {
	counters := []uint64{4, 0, 2}
	lost := uint64(7)
	a := New(Sources{
		KernelCounters: func() ([]uint64, error) { return counters, nil },
		CounterNames:   []string{"denied", "allowed_audit", "allowed_policy"},
		KernelLost:     func() (uint64, error) { return lost, nil },
		Protected:      func() (int, error) { return 0, fmt.Errorf("no procfs") },
	})
	url := serve(t, a)
	f := scrapeURL(t, url)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"keyguard_agent_kernel_counter_total", []string{"counter", "denied"}, 4},
		{"keyguard_agent_kernel_counter_total", []string{"counter", "allowed_policy"}, 2},
		{"keyguard_agent_kernel_ringbuf_lost_events_total", nil, 7},
		{"keyguard_agent_scrape_source_up", []string{"source", "kernel_counters"}, 1},
		{"keyguard_agent_scrape_source_up", []string{"source", "protected"}, 0},
	} {
		if got, err := f.Value(tc.name, tc.labels...); err != nil || got != tc.want {
			t.Errorf("%s%v = %v (%v), want %v", tc.name, tc.labels, got, err, tc.want)
		}
	}
	if _, ok := f["keyguard_agent_protected_processes"]; ok {
		t.Error("protected_processes exposed although reading it failed")
	}
	counters[0], lost = 9, 8
	f = scrapeURL(t, url)
	if got, _ := f.Value("keyguard_agent_kernel_counter_total", "counter", "denied"); got != 9 {
		t.Errorf("denied after change = %v, want 9", got)
	}
	if got, _ := f.Value("keyguard_agent_kernel_ringbuf_lost_events_total"); got != 8 {
		t.Errorf("lost after change = %v, want 8", got)
	}
}

// The real export pipeline and spool, a real collector on loopback: events wait in the spool while the
// collector is down (depth, bytes, age), and once it is back every one of them is delivered and leaves
// a delivery-lag sample at least as long as it waited.
func TestSpoolAndDeliveryLagWithRealCollector(t *testing.T) {
	bin := collectortest.Build(t)
	c := collectortest.Start(t, bin, collectortest.Options{Plain: true})
	c.Stop() // the agent starts while its collector is down

	cfg := export.Config{
		Collector: c.Addr(), Plaintext: true, PlaintextHost: "metrics-host",
		SpoolDir: filepath.Join(t.TempDir(), "spool"), BootID: "boot-1", AgentVersion: "test",
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	}
	p, err := export.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Sources{Export: p.Stats})
	p.SetSpoolHook(a.Spooled)
	p.SetAckHook(a.Acked)
	url := serve(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		p.Close()
	}()

	const n = 50
	raised := time.Now().Add(-2 * time.Second) // events raised 2 s before they reach the pipeline
	for i := range n {
		ev := access("signer", "denied")
		ev.Time = timestamppb.New(raised.Add(time.Duration(i) * time.Millisecond))
		if !p.Submit(ev, export.PriorityOf(ev)) {
			t.Fatal("queue full")
		}
	}
	waitFor(t, "events in the spool", func() bool { return p.Stats().Spool.DurableSeq >= n })
	f := scrapeURL(t, url)
	for _, tc := range []struct {
		name string
		ok   func(float64) bool
		want string
	}{
		{"keyguard_agent_spool_events", func(v float64) bool { return v == n }, fmt.Sprint(n)},
		{"keyguard_agent_spool_bytes", func(v float64) bool { return v > 0 }, "> 0"},
		{"keyguard_agent_spool_oldest_event_age_seconds", func(v float64) bool { return v > 0 }, "> 0"},
		{"keyguard_agent_collector_connected", func(v float64) bool { return v == 0 }, "0"},
		{"keyguard_agent_collector_acked_sequence", func(v float64) bool { return v == 0 }, "0"},
		{"keyguard_agent_last_delivery_timestamp_seconds", func(v float64) bool { return v == 0 }, "0"},
	} {
		if got, err := f.Value(tc.name); err != nil || !tc.ok(got) {
			t.Errorf("collector down: %s = %v (%v), want %s", tc.name, got, err, tc.want)
		}
	}
	if cnt, _, err := f.Histogram("keyguard_agent_delivery_lag_seconds"); err != nil || cnt != 0 {
		t.Errorf("collector down: lag samples %d (%v), want 0", cnt, err)
	}

	before := time.Now()
	c.Restart(t)
	waitFor(t, "the collector's acknowledgement", func() bool { return p.Stats().AckedSeq >= n })
	f = scrapeURL(t, url)
	cnt, sum, err := f.Histogram("keyguard_agent_delivery_lag_seconds")
	if err != nil || cnt != n {
		t.Fatalf("lag samples %d (%v), want %d", cnt, err, n)
	}
	if min := 2.0 * n; sum < min {
		t.Errorf("lag sum %.2f s, want at least %.0f s (each event was raised 2 s before it was submitted)", sum, min)
	}
	if got, _ := f.Value("keyguard_agent_spool_events"); got != 0 {
		t.Errorf("spool_events after delivery = %v, want 0", got)
	}
	if got, _ := f.Value("keyguard_agent_collector_acked_sequence"); got != n {
		t.Errorf("acked sequence = %v, want %d", got, n)
	}
	if got, _ := f.Value("keyguard_agent_last_delivery_timestamp_seconds"); got < float64(before.Unix()) {
		t.Errorf("last delivery timestamp %v is before the collector came back (%d)", got, before.Unix())
	}
	if got, _ := f.Value("keyguard_agent_spool_oldest_event_age_seconds"); got != 0 {
		t.Errorf("oldest event age after delivery = %v, want 0", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The delivery tracker keeps at most maxTracked pending events; the rest are counted, and the tracked
// ones still get their samples.
func TestDeliveryTrackerBounded(t *testing.T) {
	a := New(Sources{})
	url := serve(t, a)
	t0 := time.Now().Add(-time.Second)
	for seq := uint64(1); seq <= maxTracked+5; seq++ {
		a.Spooled(seq, t0)
	}
	a.Acked(10)
	a.Acked(10) // a repeated acknowledgement observes nothing more
	f := scrapeURL(t, url)
	if cnt, _, _ := f.Histogram("keyguard_agent_delivery_lag_seconds"); cnt != 10 {
		t.Errorf("samples after ack 10 = %d, want 10", cnt)
	}
	if got, _ := f.Value("keyguard_agent_delivery_lag_untracked_events_total"); got != 5 {
		t.Errorf("untracked = %v, want 5", got)
	}
	a.Acked(maxTracked + 5)
	f = scrapeURL(t, url)
	if cnt, _, _ := f.Histogram("keyguard_agent_delivery_lag_seconds"); cnt != maxTracked {
		t.Errorf("samples after the last ack = %d, want %d", cnt, maxTracked)
	}
}

// An aggregate of repeated attempts (MemoryAccess.count) counts as that many decisions, one event.
func TestAggregateCountsItsAttempts(t *testing.T) {
	a := New(Sources{})
	url := serve(t, a)
	agg := access("signer", "denied")
	agg.GetMemoryAccess().Count = 99_999
	a.Observe(access("signer", "denied")) // the first attempt, reported on its own
	a.Observe(agg)
	f := scrapeURL(t, url)
	if got, err := f.Value("keyguard_agent_decisions_total", "kind", "access", "rule", "signer", "decision", "denied"); err != nil || got != 100_000 {
		t.Errorf("decisions = %v (%v), want 100000", got, err)
	}
	if got, err := f.Value("keyguard_agent_events_total", "kind", "access"); err != nil || got != 2 {
		t.Errorf("events_total = %v (%v), want 2", got, err)
	}
}
