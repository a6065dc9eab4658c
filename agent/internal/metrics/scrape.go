package metrics

import (
	"time"

	"github.com/keyguard/keyguard/agent/internal/export"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descKernelCounter = prometheus.NewDesc("keyguard_agent_kernel_counter_total",
		"The kernel programs' own per-CPU counters (summed), read at scrape time; they count every check, "+
			"including those not reported as events (noaudit), since keyguard's maps were created.",
		[]string{"counter"}, nil)
	descKernelLost = prometheus.NewDesc("keyguard_agent_kernel_ringbuf_lost_events_total",
		"Events the kernel could not put into the ring buffer (buffer full), since keyguard's maps were created.",
		nil, nil)
	descScrapeErrors = prometheus.NewDesc("keyguard_agent_scrape_source_up",
		"1 if the named source could be read at this scrape, 0 if it failed (see the agent's log).",
		[]string{"source"}, nil)
	descProtected = prometheus.NewDesc("keyguard_agent_protected_processes",
		"Processes protected now (marked in the kernel).", nil, nil)
	descSpoolEvents = prometheus.NewDesc("keyguard_agent_spool_events",
		"Events in the spool not yet acknowledged by the collector.", nil, nil)
	descSpoolBytes = prometheus.NewDesc("keyguard_agent_spool_bytes",
		"Bytes the spool uses on disk.", nil, nil)
	descSpoolMaxBytes = prometheus.NewDesc("keyguard_agent_spool_max_bytes",
		"The spool's configured size cap.", nil, nil)
	descSpoolOldest = prometheus.NewDesc("keyguard_agent_spool_oldest_event_age_seconds",
		"Age of the oldest event not yet acknowledged by the collector (0 when none).", nil, nil)
	descSpoolLost = prometheus.NewDesc("keyguard_agent_spool_lost_events_total",
		"Events lost in the spool since the agent started, by reason (evicted for room, refused when full, corrupt on disk).",
		[]string{"reason"}, nil)
	descQueueEvents = prometheus.NewDesc("keyguard_agent_export_queue_events",
		"Events in the in-memory queue in front of the spool.", nil, nil)
	descQueueLost = prometheus.NewDesc("keyguard_agent_export_queue_lost_events_total",
		"Events dropped since the agent started because the export queue was full or the spool could not take them.",
		nil, nil)
	descConnected = prometheus.NewDesc("keyguard_agent_collector_connected",
		"1 while a stream to the collector is open.", nil, nil)
	descAcked = prometheus.NewDesc("keyguard_agent_collector_acked_sequence",
		"Highest sequence number the collector acknowledged.", nil, nil)
	descLastAck = prometheus.NewDesc("keyguard_agent_last_delivery_timestamp_seconds",
		"Unix time of the collector's last acknowledgement since the agent started (0: none yet).", nil, nil)
	descSent = prometheus.NewDesc("keyguard_agent_export_sent_events_total",
		"Events sent to the collector since the agent started (resends included).", nil, nil)
	descResent = prometheus.NewDesc("keyguard_agent_export_resent_events_total",
		"Events sent again after a reconnect since the agent started.", nil, nil)
	descReconnects = prometheus.NewDesc("keyguard_agent_export_reconnects_total",
		"Collector streams that ended and were reopened since the agent started.", nil, nil)
	descExportFailures = prometheus.NewDesc("keyguard_agent_export_failures_total",
		"Failed collector streams since the agent started, by reason (unreachable, tls_untrusted, cert_expired, cert_refused, refused, other).", []string{"reason"}, nil)
	descExportProblem = prometheus.NewDesc("keyguard_agent_export_problem",
		"1 while events cannot be delivered (reason label says why; keyguard status says what to do), else absent.", []string{"reason"}, nil)
)

// scrape reads Sources when Prometheus scrapes.
type scrape struct{ src Sources }

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descKernelCounter, descKernelLost, descScrapeErrors, descProtected,
		descSpoolEvents, descSpoolBytes, descSpoolMaxBytes, descSpoolOldest, descSpoolLost, descQueueEvents,
		descQueueLost, descConnected, descAcked, descLastAck, descSent, descResent, descReconnects, descExportFailures, descExportProblem} {
		ch <- d
	}
}

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	up := func(source string, err error) {
		v := 1.0
		if err != nil {
			v = 0
		}
		ch <- prometheus.MustNewConstMetric(descScrapeErrors, prometheus.GaugeValue, v, source)
	}
	if f := s.src.KernelCounters; f != nil {
		cs, err := f()
		up("kernel_counters", err)
		if err == nil {
			for i, v := range cs {
				if i < len(s.src.CounterNames) {
					ch <- prometheus.MustNewConstMetric(descKernelCounter, prometheus.CounterValue, float64(v), s.src.CounterNames[i])
				}
			}
		}
	}
	if f := s.src.KernelLost; f != nil {
		n, err := f()
		up("kernel_lost", err)
		if err == nil {
			ch <- prometheus.MustNewConstMetric(descKernelLost, prometheus.CounterValue, float64(n))
		}
	}
	if f := s.src.Protected; f != nil {
		n, err := f()
		up("protected", err)
		if err == nil {
			ch <- prometheus.MustNewConstMetric(descProtected, prometheus.GaugeValue, float64(n))
		}
	}
	if f := s.src.Export; f != nil {
		st := f()
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
		}
		gauge(descSpoolEvents, float64(st.Spool.Records))
		gauge(descSpoolBytes, float64(st.Spool.Bytes))
		gauge(descSpoolMaxBytes, float64(st.Spool.MaxBytes))
		age := 0.0
		if !st.Spool.OldestUnacked.IsZero() {
			age = max(0, time.Since(st.Spool.OldestUnacked).Seconds())
		}
		gauge(descSpoolOldest, age)
		counter(descSpoolLost, st.Spool.Evicted, "evicted")
		counter(descSpoolLost, st.Spool.Refused, "refused")
		counter(descSpoolLost, st.Spool.Corrupt, "corrupt")
		gauge(descQueueEvents, float64(st.QueueLen))
		counter(descQueueLost, st.QueueLost)
		connected := 0.0
		if st.Connected {
			connected = 1
		}
		gauge(descConnected, connected)
		gauge(descAcked, float64(st.AckedSeq))
		last := 0.0
		if !st.LastAck.IsZero() {
			last = float64(st.LastAck.UnixNano()) / 1e9
		}
		gauge(descLastAck, last)
		counter(descSent, st.Sent)
		counter(descResent, st.Resent)
		counter(descReconnects, st.Reconnects)
		for _, r := range export.Reasons {
			counter(descExportFailures, st.Failures[r], r)
		}
		if st.Problem != nil {
			gauge(descExportProblem, 1, st.Problem.Reason)
		}
	}
}
