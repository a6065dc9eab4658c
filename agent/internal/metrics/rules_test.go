package metrics

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyguard/keyguard/collector/promtest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestShippedAlertRulesUseRealMetrics: every keyguard_agent_* metric deploy/prometheus/keyguard-rules.yaml
// uses is one the agent exports, and the agent alerts the issue asks for are there.
func TestShippedAlertRulesUseRealMetrics(t *testing.T) {
	_, uses, err := promtest.LoadRules(filepath.Join("..", "..", "..", "deploy", "prometheus", "keyguard-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Sources{})
	have := map[string]bool{}
	ch := make(chan *prometheus.Desc, 256)
	go func() {
		for _, c := range []prometheus.Collector{a.decisions, a.events, a.lag, a.untracked, &scrape{}} {
			c.Describe(ch)
		}
		close(ch)
	}()
	for d := range ch {
		s := d.String()
		if i := strings.Index(s, `fqName: "`); i >= 0 {
			rest := s[i+len(`fqName: "`):]
			have[rest[:strings.IndexByte(rest, '"')]] = true
		}
	}
	checked := 0
	for alert, names := range uses {
		for _, n := range names {
			if strings.HasPrefix(n, "keyguard_agent_") {
				checked++
				if !have[n] {
					t.Errorf("alert %s uses %s, which the agent does not export", alert, n)
				}
			}
		}
	}
	if checked < 5 {
		t.Errorf("only %d agent metric uses checked", checked)
	}
	for _, want := range []string{"KeyguardAgentDown", "KeyguardAgentSilent", "KeyguardAgentNotEnforcing", "KeyguardEventsLost", "KeyguardAgentCannotDeliver"} {
		if _, ok := uses[want]; !ok {
			t.Errorf("rules lack %s", want)
		}
	}
}
