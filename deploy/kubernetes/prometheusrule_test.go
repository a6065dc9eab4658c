package kubernetes_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestPrometheusRule: with prometheusRule.enabled the chart renders a PrometheusRule whose spec is
// exactly deploy/prometheus/keyguard-rules.yaml (the chart's files/ copy must not drift from it), with
// the extra labels; off by default.
func TestPrometheusRule(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join(here(t), "..", "prometheus", "keyguard-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	inChart, err := os.ReadFile(filepath.Join(chartDir(t), "files", "prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shipped, inChart) {
		t.Fatal("deploy/helm/keyguard/files/prometheus-rules.yaml differs from deploy/prometheus/keyguard-rules.yaml: copy it")
	}
	c := loadChart(t)
	off, err := render(t, c, "kg", "keyguard", "v1.30.0", values(t, "collector: {enabled: false}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(off, "kind: PrometheusRule") {
		t.Error("PrometheusRule rendered although prometheusRule.enabled is false")
	}
	out, err := render(t, c, "kg", "keyguard", "v1.30.0", values(t, "collector: {enabled: false}\nprometheusRule: {enabled: true, labels: {release: prom}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var rule map[string]any
	for _, doc := range strings.Split(out, "\n---") {
		if strings.Contains(doc, "kind: PrometheusRule") {
			if err := yaml.UnmarshalStrict([]byte(doc), &rule); err != nil {
				t.Fatalf("PrometheusRule does not parse: %v\n%s", err, doc)
			}
		}
	}
	if rule == nil {
		t.Fatalf("no PrometheusRule rendered:\n%s", out)
	}
	if rule["apiVersion"] != "monitoring.coreos.com/v1" {
		t.Errorf("apiVersion = %v", rule["apiVersion"])
	}
	md, _ := rule["metadata"].(map[string]any)
	labels, _ := md["labels"].(map[string]any)
	if labels["release"] != "prom" || md["namespace"] != "keyguard" {
		t.Errorf("metadata = %v", md)
	}
	var want map[string]any
	if err := yaml.Unmarshal(shipped, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rule["spec"], want) {
		t.Errorf("PrometheusRule spec differs from the rules file:\n got %v\nwant %v", rule["spec"], want)
	}
}
