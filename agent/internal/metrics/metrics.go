// Package metrics defines the agent's Prometheus metrics (all named keyguard_agent_*) in a registry of
// its own. Decisions are counted from the events the agent reads from the kernel's ring buffer
// (Observe); the kernel's own per-CPU counters, its ring-buffer loss, the export pipeline's spool and
// the protected processes are read when Prometheus scrapes; delivery lag is measured from the time of
// each event to the collector's acknowledgement of its sequence number (Spooled, Acked).
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/deploy/metricsserver"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Label values (part of the metrics' contract, unchanged since the agent's events were strings).
var (
	kindLabels = map[keyguardv1.EventKind]string{
		keyguardv1.EventKind_EVENT_KIND_MEMORY_ACCESS:     "access",
		keyguardv1.EventKind_EVENT_KIND_PROTECTION_CHANGE: "protect",
		keyguardv1.EventKind_EVENT_KIND_CORE_DUMP:         "core_dump",
		keyguardv1.EventKind_EVENT_KIND_KEY_FILE_ACCESS:   "key_file_access",
		keyguardv1.EventKind_EVENT_KIND_SIDE_DOOR:         "side_door",
		keyguardv1.EventKind_EVENT_KIND_BREAK_GLASS:       "break_glass",
		keyguardv1.EventKind_EVENT_KIND_AGENT_HEALTH:      "health",
		keyguardv1.EventKind_EVENT_KIND_LOSS_REPORT:       "loss",
		keyguardv1.EventKind_EVENT_KIND_UNSPECIFIED:       "unknown",
	}
	decisionLabels = map[keyguardv1.Decision]string{
		keyguardv1.Decision_DECISION_DENIED:              "denied",
		keyguardv1.Decision_DECISION_ALLOWED_AUDIT:       "allowed_audit",
		keyguardv1.Decision_DECISION_ALLOWED_POLICY:      "allowed_policy",
		keyguardv1.Decision_DECISION_ALLOWED_BREAK_GLASS: "allowed_break_glass",
		keyguardv1.Decision_DECISION_ALLOWED:             "allowed",
	}
	dumpLabels = map[keyguardv1.CoreDumpAction]string{
		keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_BLOCKED:   "blocked",
		keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_ALLOWED:   "allowed",
		keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_REDACTED:  "redacted",
		keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_DISCARDED: "discarded",
		// The kernel's report that a dump streams to keyguard's handler has no action yet (the handler
		// reports redacted or discarded).
		keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_UNSPECIFIED: "to_handler",
	}
)

// MaxRuleLabels caps the distinct rule label values; later ones are counted under rule="other". Rules
// come from the policy (plus placeholders for rules removed since an event was raised), so the cap only
// matters for a pathological policy.
const MaxRuleLabels = 256

// maxTracked caps the events whose delivery lag is pending (16 bytes each); beyond it, events are
// delivered without a lag sample and counted in keyguard_agent_delivery_lag_untracked_events_total.
const maxTracked = 1 << 16

// Sources are read at scrape time. Every field may be nil (that metric is then absent).
type Sources struct {
	// KernelCounters returns the kernel's per-CPU-summed counters, by index; CounterNames names them.
	KernelCounters func() ([]uint64, error)
	CounterNames   []string
	// KernelLost returns the kernel's cumulative ring-buffer loss.
	KernelLost func() (uint64, error)
	// Export returns the export pipeline's snapshot (nil when the agent exports nothing).
	Export func() export.Stats
	// Protected counts the processes protected now.
	Protected func() (int, error)
}

// Agent holds the agent's metrics.
type Agent struct {
	reg       *prometheus.Registry
	decisions *prometheus.CounterVec
	events    *prometheus.CounterVec
	lag       prometheus.Histogram
	untracked prometheus.Counter

	mu       sync.Mutex
	decCache map[decisionKey]prometheus.Counter
	evCache  map[string]prometheus.Counter
	rules    map[string]struct{}
	// The last label sets used: events come in runs of the same kind, rule and decision (an attack
	// loop), and comparing strings that share their bytes is cheaper than hashing them.
	lastKind string
	lastEC   prometheus.Counter
	lastKey  decisionKey
	lastDC   prometheus.Counter

	dmu     sync.Mutex
	pending ring
}

type decisionKey struct{ kind, rule, decision string }

// New creates the metrics and a registry holding them, the scrape-time collectors for src, and the Go
// runtime and process collectors.
func New(src Sources) *Agent {
	a := &Agent{
		reg: metricsserver.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_agent_decisions_total",
			Help: "Decisions reported by the kernel and read by the agent (an aggregate of repeated attempts counts each), by kind (access, side_door, tamper, core_dump), " +
				"rule (empty for side doors and tampering without a target) and decision (denied, allowed_audit, " +
				"allowed_policy, allowed_break_glass; for core_dump the dump action: blocked, allowed, to_handler, redacted, discarded).",
		}, []string{"kind", "rule", "decision"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyguard_agent_events_total",
			Help: "Events the agent emitted (event log and export), by kind.",
		}, []string{"kind"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyguard_agent_delivery_lag_seconds",
			Help: "Time from an event to the collector's acknowledgement of it (events spooled by this agent process).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
				4 * 3600, 24 * 3600},
		}),
		untracked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keyguard_agent_delivery_lag_untracked_events_total",
			Help: "Events spooled while more than 65536 awaited acknowledgement: delivered without a lag sample.",
		}),
		decCache: map[decisionKey]prometheus.Counter{},
		evCache:  map[string]prometheus.Counter{},
		rules:    map[string]struct{}{},
		pending:  ring{buf: make([]tracked, 1024), max: maxTracked},
	}
	a.reg.MustRegister(a.decisions, a.events, a.lag, a.untracked, &scrape{src: src})
	return a
}

// Registry is the registry to serve.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Observe counts one emitted event. It is on the ring-buffer reader's path: after the first event of a
// label combination it takes one mutex, at most two map lookups (none when the labels repeat the
// previous event's) and two atomic adds, and allocates nothing.
func (a *Agent) Observe(ev *keyguardv1.Event) {
	kind := kindLabels[keyguardv1.KindOf(ev)]
	var k decisionKey
	switch e := ev.GetKind().(type) {
	case *keyguardv1.Event_MemoryAccess:
		k = decisionKey{kind: kind, rule: e.MemoryAccess.GetRule(), decision: decisionLabels[e.MemoryAccess.GetDecision()]}
	case *keyguardv1.Event_SideDoor:
		k = decisionKey{kind: kind, rule: e.SideDoor.GetRule(), decision: decisionLabels[e.SideDoor.GetDecision()]}
		if e.SideDoor.IsTamper() {
			k.kind = "tamper"
		}
	case *keyguardv1.Event_CoreDump:
		k = decisionKey{kind: kind, rule: e.CoreDump.GetRule(), decision: dumpLabels[e.CoreDump.GetAction()]}
	}
	if k.decision == "" && k.kind != "" {
		k.decision = "unknown"
	}
	a.mu.Lock()
	ec := a.lastEC
	if ec == nil || kind != a.lastKind {
		var ok bool
		if ec, ok = a.evCache[kind]; !ok {
			ec = a.events.WithLabelValues(kind)
			a.evCache[kind] = ec
		}
		a.lastKind, a.lastEC = kind, ec
	}
	var dc prometheus.Counter
	if k.kind != "" && a.lastDC != nil && k == a.lastKey {
		dc = a.lastDC
	} else if k.kind != "" {
		orig := k
		var ok bool
		if dc, ok = a.decCache[k]; !ok {
			if _, known := a.rules[k.rule]; !known {
				if len(a.rules) >= MaxRuleLabels {
					k.rule = "other"
				} else {
					a.rules[k.rule] = struct{}{}
				}
			}
			if dc, ok = a.decCache[k]; !ok {
				dc = a.decisions.WithLabelValues(k.kind, k.rule, k.decision)
				a.decCache[k] = dc
			}
		}
		a.lastKey, a.lastDC = orig, dc
	}
	a.mu.Unlock()
	ec.Inc()
	if dc != nil {
		// An aggregate of repeated attempts (issue 13) stands for count decisions.
		dc.Add(float64(max(ev.GetMemoryAccess().GetCount(), 1)))
	}
}

// Spooled records that the event with sequence number seq, raised at t, is in the spool
// (export.Pipeline.SetSpoolHook).
func (a *Agent) Spooled(seq uint64, t time.Time) {
	a.dmu.Lock()
	ok := a.pending.push(tracked{seq: seq, t: t.UnixNano()})
	a.dmu.Unlock()
	if !ok {
		a.untracked.Inc()
	}
}

// Acked records the collector's acknowledgement of every sequence number up to seq
// (export.Pipeline.SetAckHook) and observes the delivery lag of each tracked event it covers.
func (a *Agent) Acked(seq uint64) {
	now := time.Now().UnixNano()
	a.dmu.Lock()
	defer a.dmu.Unlock()
	for {
		e, ok := a.pending.peek()
		if !ok || e.seq > seq {
			return
		}
		a.pending.pop()
		a.lag.Observe(max(0, float64(now-e.t)/1e9))
	}
}

type tracked struct {
	seq uint64
	t   int64 // unix nanoseconds
}

// ring is a FIFO of tracked events that grows up to max entries.
type ring struct {
	buf             []tracked
	head, size, max int
}

func (r *ring) push(e tracked) bool {
	if r.size == len(r.buf) {
		if len(r.buf) >= r.max {
			return false
		}
		nb := make([]tracked, min(2*len(r.buf), r.max))
		for i := range r.size {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = e
	r.size++
	return true
}

func (r *ring) peek() (tracked, bool) {
	if r.size == 0 {
		return tracked{}, false
	}
	return r.buf[r.head], true
}

func (r *ring) pop() {
	r.head = (r.head + 1) % len(r.buf)
	r.size--
}
