package metrics

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/promtest"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

const agentMetricsURL = "http://127.0.0.1:9464/metrics"

// The agent's /metrics (-metrics-listen) counts a denied ptrace attach for its rule, exposes the
// kernel's own counters and ring-buffer loss, and after delivery to a real collector over mTLS, the
// delivery lag and time; the collector's /metrics counts the host's events.
func TestMetrics(t *testing.T) {
	vmenv.Require(t)
	col := guesttest.StartCollector(t, "metrics", []string{"vm-metrics"}, nil, true)
	addr, maddr, certs := col.Addr, col.MetricsAddr, col.Certs

	guesttest.StopAgent()
	if err := guesttest.StartAgent("-metrics-listen", "127.0.0.1:9464", "-collector", addr, "-collector-ca", filepath.Join(certs, "ca.crt"),
		"-cert", filepath.Join(certs, "vm-metrics.crt"), "-key", filepath.Join(certs, "vm-metrics.key"),
		"-spool-dir", filepath.Join(guesttest.Dir, "spool-metrics")); err != nil {
		t.Fatal(err)
	}
	defer func() {
		guesttest.StopAgent()
		if err := guesttest.StartAgent(); err != nil {
			t.Errorf("restart the agent without metrics: %v", err)
		}
	}()
	scrape := func(url string) promtest.Families {
		t.Helper()
		f, err := promtest.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	// The agent may still be reading events raised before it started (a backlog in the pinned ring
	// buffer): count from a value that has stopped moving.
	denied := []string{"kind", "access", "rule", "signer", "decision", "denied"}
	settled := func() float64 {
		t.Helper()
		last, since := -1.0, time.Now()
		for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			v := scrape(agentMetricsURL).Sum("keyguard_agent_decisions_total", denied...) // absent: 0
			if v != last {
				last, since = v, time.Now()
			} else if time.Since(since) >= 2*time.Second {
				return v
			}
		}
		t.Fatalf("decisions{access,signer,denied} still changing after 60 s (last %v)", last)
		return 0
	}
	deniedBefore := settled()
	kernelBefore, err := scrape(agentMetricsURL).Value("keyguard_agent_kernel_counter_total", "counter", "denied")
	if err != nil {
		t.Fatal(err)
	}

	v := guesttest.StartVictim(t, guesttest.VictimEnforce, 0)
	apid, res := guesttest.Attack(t, guesttest.ProcBin, 0, "attach", v.PID, v.PID, v.Addr)
	if res != "ERR EPERM" {
		t.Fatalf("ptrace attach of the protected process: %q, want ERR EPERM", res)
	}
	guesttest.WaitEvent(t, "the denied attach", func(e guesttest.Event) bool {
		return e.Kind == "access" && e.Accessor != nil && e.Accessor.PID == uint32(apid) && e.Decision == "denied"
	})
	if got := settled(); got != deniedBefore+1 {
		t.Errorf("decisions{access,signer,denied} = %v, want %v", got, deniedBefore+1)
	}

	after := scrape(agentMetricsURL)
	if got, err := after.Value("keyguard_agent_kernel_counter_total", "counter", "denied"); err != nil || got < kernelBefore+1 {
		t.Errorf("kernel counter denied = %v (%v), want at least %v", got, err, kernelBefore+1)
	}
	if got, err := after.Value("keyguard_agent_kernel_ringbuf_lost_events_total"); err != nil || got < 0 {
		t.Errorf("kernel ring-buffer loss: %v %v", got, err)
	}
	// Protected now: at least the victim, the process started before the agent, and the agent itself.
	if got, err := after.Value("keyguard_agent_protected_processes"); err != nil || got < 3 {
		t.Errorf("protected processes = %v (%v), want at least 3", got, err)
	}
	for _, src := range []string{"kernel_counters", "kernel_lost", "protected"} {
		if got, err := after.Value("keyguard_agent_scrape_source_up", "source", src); err != nil || got != 1 {
			t.Errorf("scrape source %s up = %v (%v), want 1", src, got, err)
		}
	}

	// Delivered: the collector acknowledged the denial, so the lag has samples and the spool is empty.
	var f promtest.Families
	for end := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		f = scrape(agentMetricsURL)
		n, _, err := f.Histogram("keyguard_agent_delivery_lag_seconds")
		spooled, _ := f.Value("keyguard_agent_spool_events")
		if err == nil && n > 0 && spooled == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("not delivered within 60 s: lag samples %d (%v), spool %v", n, err, spooled)
		}
	}
	if got, _ := f.Value("keyguard_agent_last_delivery_timestamp_seconds"); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last delivery timestamp %v is not recent", got)
	}
	if got, _ := f.Value("keyguard_agent_collector_connected"); got != 1 {
		t.Errorf("collector_connected = %v, want 1", got)
	}
	acked, _ := f.Value("keyguard_agent_collector_acked_sequence")
	cf := scrape("http://" + maddr + "/metrics")
	if got, err := cf.Value("keyguard_collector_acked_sequence", "host", "vm-metrics"); err != nil || got < acked || acked == 0 {
		t.Errorf("collector acked_sequence{vm-metrics} = %v (%v), agent acked %v", got, err, acked)
	}
	if got, err := cf.Value("keyguard_collector_ingested_events_total", "host", "vm-metrics"); err != nil || got < acked {
		t.Errorf("collector ingested_events{vm-metrics} = %v (%v), want at least %v", got, err, acked)
	}
	if got, _ := cf.Value("keyguard_collector_open_streams"); got != 1 {
		t.Errorf("collector open_streams = %v, want 1", got)
	}
}

// A non-loopback metrics address is refused unless -metrics-allow-remote is given.
func TestMetricsRemoteRefused(t *testing.T) {
	vmenv.Require(t)
	out, err := exec.Command(guesttest.AgentBin, "run", "-policy", guesttest.Dir+"/policy.yaml", "-metrics-listen", "0.0.0.0:9464",
		"-pin-path", "/sys/fs/bpf/kg-metrics", "-control-socket", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "-metrics-allow-remote") {
		t.Fatalf("agent with -metrics-listen 0.0.0.0:9464: %v\n%s", err, out)
	}
	if _, err := os.Stat("/sys/fs/bpf/kg-metrics"); err == nil {
		t.Error("pins were created although the agent refused to start")
	}
}
