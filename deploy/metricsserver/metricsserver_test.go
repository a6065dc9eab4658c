package metricsserver

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyguard/keyguard/collector/promtest"
)

func TestListenRefusesRemoteUnlessAllowed(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:0", false, true},
		{"localhost:0", false, true},
		{"127.0.0.2:0", false, true},
		{"0.0.0.0:0", false, false},
		{":0", false, false},
		{"192.0.2.1:9464", false, false},
		{"0.0.0.0:0", true, true},
		{"127.0.0.1", false, false}, // no port
	} {
		ln, err := Listen(tc.addr, tc.remote, Flags())
		if ln != nil {
			ln.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("Listen(%q, allowRemote=%v): err %v, want ok=%v", tc.addr, tc.remote, err, tc.ok)
		}
		if err != nil && !tc.ok && strings.Contains(tc.addr, ":") && tc.addr != "127.0.0.1" &&
			!strings.Contains(err.Error(), "-metrics-allow-remote") {
			t.Errorf("Listen(%q): the refusal does not say how to allow it: %v", tc.addr, err)
		}
	}
}

func TestServesOnlyMetrics(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "keyguard_test_things_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	ln, err := Listen("127.0.0.1:0", false, Flags())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, reg, nil) }()
	base := "http://" + ln.Addr().String()
	fams, err := promtest.Scrape(base + Path)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fams.Value("keyguard_test_things_total"); err != nil || v != 3 {
		t.Errorf("keyguard_test_things_total = %v, %v; want 3", v, err)
	}
	if _, err := fams.Value("go_goroutines"); err != nil {
		t.Errorf("no Go runtime metrics: %v", err)
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/", http.StatusNotFound},
		{"GET", "/debug/pprof/", http.StatusNotFound},
		{"POST", Path, http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}
