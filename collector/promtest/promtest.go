// Package promtest scrapes a /metrics endpoint over HTTP and reads values out of it, for tests of the
// agent's and the collector's metrics (host tests and VM tests alike).
package promtest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families is one parsed scrape.
type Families map[string]*dto.MetricFamily

// Scrape GETs url (e.g. http://127.0.0.1:9464/metrics) and parses the text exposition format.
func Scrape(url string) (Families, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("scrape %s: %s: %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse scrape of %s: %w", url, err)
	}
	return Families(fams), nil
}

// find returns the sample of family name whose labels include every name=value pair in labels
// (given as name, value, name, value, ...). Exactly one sample must match.
func (f Families) find(name string, labels ...string) (*dto.Metric, error) {
	mf, ok := f[name]
	if !ok {
		return nil, fmt.Errorf("metric %s absent", name)
	}
	var found *dto.Metric
	n := 0
	for _, m := range mf.GetMetric() {
		if matches(m, labels) {
			found = m
			n++
		}
	}
	switch n {
	case 0:
		return nil, fmt.Errorf("metric %s has no sample with labels %v (has %s)", name, labels, describe(mf))
	case 1:
		return found, nil
	default:
		return nil, fmt.Errorf("metric %s has %d samples with labels %v", name, n, labels)
	}
}

func matches(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		ok := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func describe(mf *dto.MetricFamily) string {
	var parts []string
	for _, m := range mf.GetMetric() {
		var ls []string
		for _, lp := range m.GetLabel() {
			ls = append(ls, lp.GetName()+"="+lp.GetValue())
		}
		parts = append(parts, "{"+strings.Join(ls, ",")+"}")
	}
	return strings.Join(parts, " ")
}

// Value returns the value of a counter, gauge or untyped sample.
func (f Families) Value(name string, labels ...string) (float64, error) {
	m, err := f.find(name, labels...)
	if err != nil {
		return 0, err
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue(), nil
	case m.Gauge != nil:
		return m.Gauge.GetValue(), nil
	case m.Untyped != nil:
		return m.Untyped.GetValue(), nil
	}
	return 0, fmt.Errorf("metric %s is not a counter, gauge or untyped", name)
}

// Histogram returns a histogram's sample count and sum.
func (f Families) Histogram(name string, labels ...string) (count uint64, sum float64, err error) {
	m, err := f.find(name, labels...)
	if err != nil {
		return 0, 0, err
	}
	if m.Histogram == nil {
		return 0, 0, fmt.Errorf("metric %s is not a histogram", name)
	}
	return m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum(), nil
}

// Sum adds the values of every sample of a counter or gauge family that matches labels (0 if absent).
func (f Families) Sum(name string, labels ...string) float64 {
	mf, ok := f[name]
	if !ok {
		return 0
	}
	s := 0.0
	for _, m := range mf.GetMetric() {
		if matches(m, labels) {
			s += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return s
}
