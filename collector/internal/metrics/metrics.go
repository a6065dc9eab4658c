// Package metrics defines the collector's Prometheus metrics (all named keyguard_collector_*) in a
// registry of its own. Every method is safe on a nil *Collector (metrics off) and for concurrent use.
//
// Host labels are bounded: hosts are agents with a certificate from the collector's CA, and at most
// MaxHosts distinct hosts get their own series; later ones share host="_other".
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyguard/keyguard/deploy/metricsserver"
)

// DefaultMaxHosts is the default cap on distinct host label values.
const DefaultMaxHosts = 2000

// OtherHost is the host label of hosts beyond the cap.
const OtherHost = "_other"

// Store operations timed by ObserveStore.
const (
	OpAppend = "append" // a whole ingest batch: checks, inserts, chain update and commit
	OpCommit = "commit" // the commit of an ingest batch alone (the durable write)
	OpList   = "list"   // one page of an event query
	OpHosts  = "hosts"  // the host list
	OpVerify = "verify" // a chain verification
)

// Reasons a push batch is refused (label values of the rejected_* metrics).
const (
	ReasonTooManyEvents  = "too_many_events"
	ReasonTooManySkipped = "too_many_skipped"
	ReasonEmptyEvent     = "empty_event"
	ReasonHostMismatch   = "host_mismatch"
	ReasonZeroSequence   = "zero_sequence"
	ReasonNoKind         = "no_kind"
	ReasonNoTime         = "no_time"
	ReasonInvalidTime    = "invalid_time"
	ReasonTooLarge       = "event_too_large"
	ReasonRevoked        = "certificate_revoked"
	ReasonConflict       = "sequence_conflict"
	ReasonInvalid        = "invalid"
	ReasonStorage        = "storage_error"
)

var reasons = []string{ReasonTooManyEvents, ReasonTooManySkipped, ReasonEmptyEvent, ReasonHostMismatch, ReasonZeroSequence,
	ReasonNoKind, ReasonNoTime, ReasonInvalidTime, ReasonTooLarge, ReasonRevoked, ReasonConflict, ReasonInvalid, ReasonStorage}

// Collector holds the collector's metrics.
type Collector struct {
	reg      *prometheus.Registry
	maxHosts int

	events     *prometheus.CounterVec
	duplicates *prometheus.CounterVec
	batches    *prometheus.CounterVec
	rejEvents  *prometheus.CounterVec
	rejBatches *prometheus.CounterVec
	storeDur   *prometheus.HistogramVec
	streams    prometheus.Gauge
	acked      *prometheus.GaugeVec
	verified   *prometheus.CounterVec
	chainFail  *prometheus.CounterVec
	severity   *prometheus.CounterVec
	alertsSent *prometheus.CounterVec
	alertsFail *prometheus.CounterVec
	alertsSupp *prometheus.CounterVec
	alertsPend prometheus.Gauge
	alertsAge  prometheus.Gauge

	mu    sync.Mutex
	hosts map[string]struct{}
}

// New creates the metrics in a registry of their own (with the Go runtime and process collectors).
// maxHosts <= 0 means DefaultMaxHosts.
func New(maxHosts int) *Collector {
	if maxHosts <= 0 {
		maxHosts = DefaultMaxHosts
	}
	c := &Collector{
		reg: metricsserver.NewRegistry(), maxHosts: maxHosts, hosts: map[string]struct{}{},
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_ingested_events_total",
			Help: "Events stored (committed) from agents, by host; rate() of it is the ingest rate.",
		}, []string{"host"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_duplicate_events_total",
			Help: "Events received again that were already stored (resends after a reconnect), by host.",
		}, []string{"host"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_ingested_batches_total",
			Help: "Push batches committed and acknowledged, by host.",
		}, []string{"host"}),
		rejEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_rejected_events_total",
			Help: "Events in refused push batches (a refused batch is stored not at all), by reason.",
		}, []string{"reason"}),
		rejBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_rejected_batches_total",
			Help: "Refused push batches, by reason.",
		}, []string{"reason"}),
		storeDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyguard_collector_store_duration_seconds",
			Help:    "Storage latency by operation: append (a whole ingest batch), commit (its commit alone), list, hosts, verify.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"operation"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyguard_collector_open_streams",
			Help: "Agent ingest streams open now.",
		}),
		acked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyguard_collector_acked_sequence",
			Help: "Highest contiguous sequence number stored for a host (what the collector acknowledged).",
		}, []string{"host"}),
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_chain_verifications_total",
			Help: "Host chains verified (VerifyChain), by result (ok, failed).",
		}, []string{"result"}),
		chainFail: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_chain_verification_failures_total",
			Help: "Chain verifications that found events modified, deleted or relinked, by host.",
		}, []string{"host"}),
		severity: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_events_by_severity_total",
			Help: "Stored events evaluated for alerts, by kind and severity (proto/keyguard/v1 SeverityOf); each event counted once across collectors.",
		}, []string{"kind", "severity"}),
		alertsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_alerts_sent_total",
			Help: "Alerts delivered, by output.",
		}, []string{"output"}),
		alertsFail: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_alert_delivery_failures_total",
			Help: "Failed alert delivery attempts (the alert stays in the outbox and is retried), by output.",
		}, []string{"output"}),
		alertsSupp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_collector_alerts_suppressed_total",
			Help: "Events that matched an alert rule over its rate limit, by rule.",
		}, []string{"rule"}),
		alertsPend: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyguard_collector_alerts_pending",
			Help: "Alerts in the outbox not yet delivered.",
		}),
		alertsAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyguard_collector_alert_oldest_pending_seconds",
			Help: "Age of the oldest undelivered alert (0 when none).",
		}),
	}
	c.reg.MustRegister(c.severity, c.alertsSent, c.alertsFail, c.alertsSupp, c.alertsPend, c.alertsAge)
	c.reg.MustRegister(c.events, c.duplicates, c.batches, c.rejEvents, c.rejBatches, c.storeDur, c.streams,
		c.acked, c.verified, c.chainFail)
	// Known label values start at 0, so a rate or an alert sees them before the first occurrence.
	for _, r := range reasons {
		c.rejBatches.WithLabelValues(r)
		c.rejEvents.WithLabelValues(r)
	}
	for _, op := range []string{OpAppend, OpCommit, OpList, OpHosts, OpVerify} {
		c.storeDur.WithLabelValues(op)
	}
	c.verified.WithLabelValues("ok")
	c.verified.WithLabelValues("failed")
	return c
}

// Registry is the registry to serve (nil for a nil Collector).
func (c *Collector) Registry() *prometheus.Registry {
	if c == nil {
		return nil
	}
	return c.reg
}

// host returns the label for h, admitting new hosts up to the cap.
func (c *Collector) host(h string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.hosts[h]; ok {
		return h
	}
	if len(c.hosts) >= c.maxHosts {
		return OtherHost
	}
	c.hosts[h] = struct{}{}
	return h
}

// StreamOpened counts an open ingest stream and records the host's acknowledged sequence number.
func (c *Collector) StreamOpened(host string, acked uint64) {
	if c == nil {
		return
	}
	c.streams.Inc()
	if h := c.host(host); h != OtherHost {
		c.acked.WithLabelValues(h).Set(float64(acked))
	}
}

// StreamClosed counts a closed ingest stream.
func (c *Collector) StreamClosed() {
	if c == nil {
		return
	}
	c.streams.Dec()
}

// Batch records a committed batch.
func (c *Collector) Batch(host string, stored, duplicates int, acked uint64) {
	if c == nil {
		return
	}
	h := c.host(host)
	c.batches.WithLabelValues(h).Inc()
	c.events.WithLabelValues(h).Add(float64(stored))
	c.duplicates.WithLabelValues(h).Add(float64(duplicates))
	if h != OtherHost {
		c.acked.WithLabelValues(h).Set(float64(acked))
	}
}

// Rejected records a refused batch of n events.
func (c *Collector) Rejected(reason string, n int) {
	if c == nil {
		return
	}
	c.rejBatches.WithLabelValues(reason).Inc()
	c.rejEvents.WithLabelValues(reason).Add(float64(n))
}

// ObserveStore records the duration of one storage operation (see the Op constants).
func (c *Collector) ObserveStore(op string, d time.Duration) {
	if c == nil {
		return
	}
	c.storeDur.WithLabelValues(op).Observe(d.Seconds())
}

// ChainVerified records one host's chain verification.
func (c *Collector) ChainVerified(host string, ok bool) {
	if c == nil {
		return
	}
	if ok {
		c.verified.WithLabelValues("ok").Inc()
		return
	}
	c.verified.WithLabelValues("failed").Inc()
	c.chainFail.WithLabelValues(c.host(host)).Inc()
}

// EventEvaluated counts one stored event by kind and severity (alert.Observer).
func (c *Collector) EventEvaluated(kind, severity string) {
	if c == nil {
		return
	}
	c.severity.WithLabelValues(kind, severity).Inc()
}

// AlertSent counts a delivered alert (alert.Observer).
func (c *Collector) AlertSent(output string) {
	if c == nil {
		return
	}
	c.alertsSent.WithLabelValues(output).Inc()
}

// AlertFailed counts a failed delivery attempt (alert.Observer).
func (c *Collector) AlertFailed(output string) {
	if c == nil {
		return
	}
	c.alertsFail.WithLabelValues(output).Inc()
}

// AlertSuppressed counts an event over a rule's rate limit (alert.Observer).
func (c *Collector) AlertSuppressed(rule string) {
	if c == nil {
		return
	}
	c.alertsSupp.WithLabelValues(rule).Inc()
}

// AlertsPending sets the outbox gauges (alert.Observer).
func (c *Collector) AlertsPending(n int, oldest time.Duration) {
	if c == nil {
		return
	}
	c.alertsPend.Set(float64(n))
	c.alertsAge.Set(oldest.Seconds())
}
