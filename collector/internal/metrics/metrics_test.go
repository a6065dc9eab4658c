package metrics

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func value(t *testing.T, c *Collector, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	fams, err := c.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range fams {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return val(m), true
		}
	}
	return 0, false
}

func val(m *dto.Metric) float64 {
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

func TestHostLabelsCapped(t *testing.T) {
	c := New(2)
	for _, b := range []struct {
		host   string
		stored int
		acked  uint64
	}{{"web1", 3, 3}, {"web2", 4, 4}, {"web3", 5, 5}, {"web4", 6, 6}, {"web1", 1, 4}} {
		c.Batch(b.host, b.stored, 0, b.acked)
	}
	for _, tc := range []struct {
		name, host string
		want       float64
		present    bool
	}{
		{"keyguard_collector_ingested_events_total", "web1", 4, true},
		{"keyguard_collector_ingested_events_total", "web2", 4, true},
		{"keyguard_collector_ingested_events_total", OtherHost, 11, true},
		{"keyguard_collector_ingested_events_total", "web3", 0, false},
		{"keyguard_collector_ingested_batches_total", OtherHost, 2, true},
		{"keyguard_collector_acked_sequence", "web1", 4, true},
		{"keyguard_collector_acked_sequence", OtherHost, 0, false}, // a sequence number of several hosts means nothing
	} {
		got, ok := value(t, c, tc.name, map[string]string{"host": tc.host})
		if ok != tc.present || got != tc.want {
			t.Errorf("%s{host=%s} = %v (present %v), want %v (present %v)", tc.name, tc.host, got, ok, tc.want, tc.present)
		}
	}
}

// A nil Collector (metrics off) is safe to call.
func TestNilCollector(t *testing.T) {
	var c *Collector
	c.StreamOpened("h", 1)
	c.Batch("h", 1, 0, 1)
	c.Rejected(ReasonInvalid, 1)
	c.ObserveStore(OpAppend, 1)
	c.ChainVerified("h", false)
	c.StreamClosed()
	if c.Registry() != nil {
		t.Fatal("nil collector has a registry")
	}
}
