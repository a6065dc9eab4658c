package metrics

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/collector/promtest"
	"github.com/prometheus/client_golang/prometheus"
)

// describedNames returns the metric names a registry's collectors describe (whether or not a labelled
// series exists yet).
func describedNames(t *testing.T, cs ...prometheus.Collector) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	ch := make(chan *prometheus.Desc, 256)
	go func() {
		for _, c := range cs {
			c.Describe(ch)
		}
		close(ch)
	}()
	for d := range ch {
		s := d.String() // Desc{fqName: "name", ...}
		if i := strings.Index(s, `fqName: "`); i >= 0 {
			rest := s[i+len(`fqName: "`):]
			names[rest[:strings.IndexByte(rest, '"')]] = true
		}
	}
	return names
}

// TestShippedAlertRulesUseRealMetrics: deploy/prometheus/keyguard-rules.yaml parses (strictly, with
// the checks promtool makes short of PromQL) and every keyguard_collector_* metric it uses is one the
// collector exports.
func TestShippedAlertRulesUseRealMetrics(t *testing.T) {
	_, uses, err := promtest.LoadRules(filepath.Join("..", "..", "..", "deploy", "prometheus", "keyguard-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := New(0)
	have := describedNames(t, c.events, c.duplicates, c.batches, c.rejEvents, c.rejBatches, c.storeDur, c.streams,
		c.acked, c.verified, c.chainFail, c.severity, c.alertsSent, c.alertsFail, c.alertsSupp, c.alertsPend, c.alertsAge)
	checked := 0
	for alert, names := range uses {
		for _, n := range names {
			if !strings.HasPrefix(n, "keyguard_collector_") {
				continue
			}
			checked++
			if !have[n] {
				t.Errorf("alert %s uses %s, which the collector does not export", alert, n)
			}
		}
	}
	if checked < 5 {
		t.Errorf("only %d collector metric uses checked; the rules lost their collector alerts?", checked)
	}
	for _, want := range []string{"KeyguardChainVerificationFailed", "KeyguardAlertDeliveryFailing", "KeyguardHostSilent"} {
		if _, ok := uses[want]; !ok {
			t.Errorf("rules lack %s", want)
		}
	}
}
