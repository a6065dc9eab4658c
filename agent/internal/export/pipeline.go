// Package export delivers the agent's events to the collector without losing any silently.
//
// The BPF ring-buffer reader hands each event to Pipeline.Submit, which never blocks: the event
// goes into a bounded in-memory queue, or, when the queue is full, is counted as lost. One writer
// goroutine moves queued events into the durable spool (assigning their sequence numbers) with one
// fsync per batch; one sender goroutine streams durable events to the collector over mTLS gRPC,
// deletes them from the spool when the collector acknowledges them, and after any disconnect
// reconnects with jittered exponential backoff and resends everything not yet acknowledged.
//
// Losses are events too: queue overflow and kernel ring-buffer loss (reported by the caller with
// ReportLoss) become LossReport events once a second, written straight into the spool by the
// writer so that they cannot themselves be dropped by the queue; spool evictions become
// LossReport events inside the spool.
//
// Wiring it into the agent:
//
//	p, err := export.New(cfg, log) // validates config, loads TLS, opens/recovers the spool
//	if err != nil { ... }
//	go func() { errc <- p.Run(ctx) }() // until ctx is cancelled; then flushes queue to disk
//	...
//	p.Submit(ev, export.PriorityOf(ev))           // from the ring-buffer reader; never blocks
//	p.ReportLoss(keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER, kind, n) // ring-buffer drops
//	st := p.Stats()                               // queue, spool depth/age, last ack, losses
//	...
//	cancel(); <-errc; p.Close()
package export

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/spool"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

const numKinds = int(keyguardv1.EventKind_EVENT_KIND_KEY_FINGERPRINTS) + 1

// maxEventBytes is the collector's per-event limit.
const maxEventBytes = 256 << 10

type item struct {
	ev   *keyguardv1.Event
	prio spool.Priority
}

// lossCounter accumulates losses of one source per kind, lock-free.
type lossCounter struct {
	perKind [numKinds]atomic.Uint64
	total   atomic.Uint64 // since start, for stats
}

func (c *lossCounter) add(kind keyguardv1.EventKind, n uint64) {
	if int(kind) < 0 || int(kind) >= numKinds {
		kind = keyguardv1.EventKind_EVENT_KIND_UNSPECIFIED
	}
	c.perKind[kind].Add(n)
	c.total.Add(n)
}

// take returns and resets the per-kind counts.
func (c *lossCounter) take() (counts [numKinds]uint64, sum uint64) {
	for k := range c.perKind {
		counts[k] = c.perKind[k].Swap(0)
		sum += counts[k]
	}
	return counts, sum
}

// Pipeline is the agent's event export: queue, spool and sender.
type Pipeline struct {
	cfg   Config
	log   *slog.Logger
	sp    *spool.Spool
	creds credentials.TransportCredentials
	keys  *keyPair // host key and certificate; nil in plaintext mode (no signed checkpoints)
	chain *agentChain
	queue chan item

	queueLoss  lossCounter
	kernelLoss lossCounter
	lossSince  time.Time // start of the current loss window (writer goroutine only)

	started atomic.Bool
	closed  atomic.Bool
	done    chan struct{} // closed when Run returns

	connected     atomic.Bool
	lastAck       atomic.Int64 // unix nanos
	ackedSeq      atomic.Uint64
	sent          atomic.Uint64
	resent        atomic.Uint64
	maxSent       atomic.Uint64 // highest sequence number sent so far
	reconnects    atomic.Uint64
	storeErrs     atomic.Uint64
	lastErr       atomic.Pointer[string]
	problem       atomic.Pointer[Problem] // nil while delivery works
	problemLogged atomic.Int64            // unix nanos of the last warning about it
	failures      [6]atomic.Uint64        // by Reasons index

	ackHook   func(uint64)
	spoolHook func(seq uint64, eventTime time.Time)
	mu        sync.Mutex // guards close of the spool
}

// New validates the configuration, loads the TLS material and opens (recovering) the spool.
// Nothing is sent until Run.
func New(cfg Config, log *slog.Logger) (*Pipeline, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	creds, keys, err := cfg.transportCredentials()
	if err != nil {
		return nil, err
	}
	if cfg.Plaintext {
		log.Warn("export: PLAINTEXT export to the collector: no encryption and no authentication; loopback demo only",
			"collector", cfg.Collector, "claimed_host", cfg.PlaintextHost)
	}
	p := &Pipeline{
		cfg:       cfg,
		log:       log,
		creds:     creds,
		keys:      keys,
		queue:     make(chan item, cfg.QueueSize),
		done:      make(chan struct{}),
		lossSince: time.Now(),
	}
	p.sp, err = spool.Open(spool.Config{
		Dir:          cfg.SpoolDir,
		MaxBytes:     cfg.SpoolMaxBytes,
		SegmentBytes: cfg.SpoolSegmentBytes,
		// The collector refuses events over 256 KiB; the spool refuses them first, where they can
		// be counted, instead of blocking the stream.
		MaxRecordBytes: maxEventBytes + spool.RecordOverhead,
		EncodeLoss:     p.encodeSpoolLoss,
		LossKind:       uint8(keyguardv1.EventKind_EVENT_KIND_LOSS_REPORT),
		Logger:         log,
	})
	if err != nil {
		return nil, fmt.Errorf("export: open spool: %w", err)
	}
	if p.chain, err = loadChain(cfg.SpoolDir); err != nil {
		p.sp.Close()
		return nil, err
	}
	st := p.sp.Stats()
	p.ackedSeq.Store(st.AckedSeq)
	return p, nil
}

// SetAckHook registers a function called (from the sender goroutine) with each new acknowledged
// sequence number; for metrics and benchmarks. Call before Run.
func (p *Pipeline) SetAckHook(f func(ackedSeq uint64)) { p.ackHook = f }

// SetSpoolHook registers a function called (from the writer goroutine) after each event is appended to
// the spool, with its sequence number and event time; with SetAckHook it measures delivery lag. It
// must return quickly. Call before Run.
func (p *Pipeline) SetSpoolHook(f func(seq uint64, eventTime time.Time)) { p.spoolHook = f }

// Submit queues an event for export and returns at once. The pipeline owns ev afterwards (it sets
// seq, boot id, agent version and, if missing, time). If the queue is full the event is dropped,
// counted, and reported in a LossReport; Submit then returns false.
func (p *Pipeline) Submit(ev *keyguardv1.Event, prio spool.Priority) bool {
	if !p.closed.Load() {
		select {
		case p.queue <- item{ev, prio}:
			return true
		default:
		}
	}
	p.queueLoss.add(keyguardv1.KindOf(ev), 1)
	return false
}

// ReportLoss counts events lost before they reached Submit, e.g. kernel ring-buffer overflow
// (source LOSS_SOURCE_KERNEL_RING_BUFFER; kind EVENT_KIND_UNSPECIFIED when unknown). It never
// blocks; the counts are sent as a LossReport within Config.LossReportInterval.
func (p *Pipeline) ReportLoss(source keyguardv1.LossSource, kind keyguardv1.EventKind, n uint64) {
	if n == 0 {
		return
	}
	switch source {
	case keyguardv1.LossSource_LOSS_SOURCE_AGENT_QUEUE:
		p.queueLoss.add(kind, n)
	default:
		p.kernelLoss.add(kind, n)
	}
}

// Stats is a snapshot for status output and metrics.
type Stats struct {
	QueueLen, QueueCap int
	Spool              spool.Stats
	Connected          bool
	AckedSeq           uint64
	LastAck            time.Time // zero if none since start
	Sent, Resent       uint64    // events sent since start; of which resent after a reconnect
	Reconnects         uint64
	QueueLost          uint64 // events dropped because the queue was full, since start
	KernelLost         uint64 // kernel ring-buffer loss reported by the caller, since start
	SpoolErrors        uint64 // events that could not be written to the spool (disk errors)
	LastError          string
	// Problem is why events cannot be delivered now (nil while delivery works).
	Problem *Problem
	// Failures counts failed streams by reason (Reasons), since start.
	Failures map[string]uint64
}

// Stats returns a snapshot of the pipeline's counters.
func (p *Pipeline) Stats() Stats {
	st := Stats{
		QueueLen: len(p.queue), QueueCap: cap(p.queue),
		Spool:     p.sp.Stats(),
		Connected: p.connected.Load(), AckedSeq: p.ackedSeq.Load(),
		Sent: p.sent.Load(), Resent: p.resent.Load(), Reconnects: p.reconnects.Load(),
		QueueLost: p.queueLoss.total.Load(), KernelLost: p.kernelLoss.total.Load(),
		SpoolErrors: p.storeErrs.Load(),
	}
	if t := p.lastAck.Load(); t != 0 {
		st.LastAck = time.Unix(0, t)
	}
	if e := p.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	if pr := p.problem.Load(); pr != nil {
		c := *pr
		st.Problem = &c
	}
	st.Failures = make(map[string]uint64, len(Reasons))
	for i, r := range Reasons {
		st.Failures[r] = p.failures[i].Load()
	}
	return st
}

// Run moves events from the queue into the spool and from the spool to the collector until ctx
// is cancelled. Before returning it writes every queued event and pending loss count into the
// spool and syncs it, so a clean stop loses nothing. Run may be called once.
func (p *Pipeline) Run(ctx context.Context) error {
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("export: Run called twice")
	}
	defer close(p.done)
	sendCtx, stopSend := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { p.sendLoop(sendCtx) })
	err := p.writeLoop(ctx)
	stopSend()
	wg.Wait()
	return err
}

// Close stops accepting events and closes the spool. Call it after Run has returned (it waits for
// Run if Run is active).
func (p *Pipeline) Close() error {
	p.closed.Store(true)
	if p.started.Load() {
		<-p.done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Whatever arrived after Run stopped still goes to disk.
	p.drainQueue()
	p.flushLoss(time.Now())
	return p.sp.Close()
}

func (p *Pipeline) writeLoop(ctx context.Context) error {
	lossTick := time.NewTicker(p.cfg.LossReportInterval)
	defer lossTick.Stop()
	syncTimer := time.NewTimer(time.Hour)
	syncTimer.Stop()
	var lastSync time.Time
	dirty := false
	sync := func() {
		if err := p.sp.Sync(); err != nil {
			p.setErr(err)
			p.log.Error("export: spool sync failed; events are counted as lost and reported once the disk takes writes again", "err", err)
		}
		lastSync = time.Now()
		dirty = false
	}
	for {
		select {
		case it := <-p.queue:
			p.store(it)
			for range 8192 { // group commit: take what is queued, then one fsync
				select {
				case it = <-p.queue:
					p.store(it)
					continue
				default:
				}
				break
			}
			dirty = true
			if wait := p.cfg.SyncInterval - time.Since(lastSync); wait > 0 {
				syncTimer.Reset(wait)
			} else {
				sync()
			}
		case <-syncTimer.C:
			if dirty {
				sync()
			}
		case now := <-lossTick.C:
			// Also lets the spool write a pending loss record of its own; cheap when idle.
			p.flushLoss(now)
			sync()
		case <-ctx.Done():
			p.mu.Lock()
			p.drainQueue()
			p.flushLoss(time.Now())
			err := p.sp.Sync()
			p.mu.Unlock()
			if err != nil {
				return fmt.Errorf("export: final spool sync: %w", err)
			}
			return nil
		}
	}
}

func (p *Pipeline) drainQueue() {
	for {
		select {
		case it := <-p.queue:
			p.store(it)
		default:
			return
		}
	}
}

// storeNow appends a PriorityKeep event to the spool and makes it durable, from any goroutine. It
// reports whether the event is on disk.
func (p *Pipeline) storeNow(ev *keyguardv1.Event) bool {
	if !p.store(item{ev, spool.PriorityKeep}) {
		return false
	}
	if err := p.sp.Sync(); err != nil {
		p.setErr(err)
		return false
	}
	return true
}

// store appends one event to the spool and reports whether it was stored.
func (p *Pipeline) store(it item) bool {
	ev := it.ev
	ev.Host = "" // the collector decides the host from the certificate
	if ev.BootId == "" {
		ev.BootId = p.cfg.BootID
	}
	if ev.AgentVersion == "" {
		ev.AgentVersion = p.cfg.AgentVersion
	}
	if ev.Time == nil || ev.Time.CheckValid() != nil {
		ev.Time = timestamppb.Now()
	}
	kind := keyguardv1.KindOf(ev)
	if kind == keyguardv1.EventKind_EVENT_KIND_UNSPECIFIED {
		// The collector refuses an event without a kind, and one refused event would hold up every
		// later one on the stream: drop it here, counted and logged.
		p.storeErrs.Add(1)
		p.queueLoss.add(kind, 1)
		p.log.Error("export: event without a kind dropped (agent bug); counted as lost")
		return false
	}
	seq, stored, err := p.sp.Append(uint8(kind), it.prio, func(seq uint64, dst []byte) ([]byte, error) {
		ev.Seq = seq
		return proto.MarshalOptions{}.MarshalAppend(dst, ev)
	})
	if err == nil && stored && p.spoolHook != nil {
		p.spoolHook(seq, ev.Time.AsTime())
	}
	if err != nil {
		// Refusals for lack of space are counted by the spool itself; this is a real error (disk
		// failure, oversized event). Count it as queue loss so it is reported.
		p.storeErrs.Add(1)
		p.queueLoss.add(kind, 1)
		p.setErr(err)
		p.log.Error("export: event could not be spooled; counted as lost", "kind", kind, "err", err)
	}
	return err == nil && stored
}

// flushLoss turns accumulated queue and kernel losses into LossReport events in the spool.
// It reports whether it wrote any.
func (p *Pipeline) flushLoss(now time.Time) bool {
	if p.sp.Failing() {
		// The report would be refused and counted as one lost event, hiding its counts: keep
		// counting until the spool takes writes again.
		return false
	}
	wrote := false
	for _, src := range []struct {
		c      *lossCounter
		source keyguardv1.LossSource
	}{
		{&p.kernelLoss, keyguardv1.LossSource_LOSS_SOURCE_KERNEL_RING_BUFFER},
		{&p.queueLoss, keyguardv1.LossSource_LOSS_SOURCE_AGENT_QUEUE},
	} {
		counts, sum := src.c.take()
		if sum == 0 {
			continue
		}
		lr := &keyguardv1.LossReport{
			Source:          src.source,
			Count:           sum,
			WindowStartTime: timestamppb.New(p.lossSince),
			WindowEndTime:   timestamppb.New(now),
		}
		for k, n := range counts {
			if n > 0 && k != int(keyguardv1.EventKind_EVENT_KIND_UNSPECIFIED) {
				lr.PerKind = append(lr.PerKind, &keyguardv1.KindCount{Kind: keyguardv1.EventKind(k), Count: n})
			}
		}
		p.log.Warn("export: events lost before the spool; reporting", "source", src.source, "count", sum)
		// Not through Submit: a loss report must not be dropped by the full queue it reports.
		p.store(item{&keyguardv1.Event{Time: timestamppb.New(now), Kind: &keyguardv1.Event_LossReport{LossReport: lr}}, spool.PriorityKeep})
		wrote = true
	}
	p.lossSince = now
	return wrote
}

// encodeSpoolLoss encodes the spool's own eviction report as a LossReport event.
func (p *Pipeline) encodeSpoolLoss(seq uint64, l spool.Loss, dst []byte) ([]byte, error) {
	lr := &keyguardv1.LossReport{
		Source:          keyguardv1.LossSource_LOSS_SOURCE_SPOOL_EVICTION,
		Count:           l.Total(),
		WindowStartTime: timestamppb.New(l.Start),
		WindowEndTime:   timestamppb.New(l.End),
	}
	for k := range numKinds {
		if n := l.ByKind[uint8(k)]; n > 0 {
			lr.PerKind = append(lr.PerKind, &keyguardv1.KindCount{Kind: keyguardv1.EventKind(k), Count: n})
		}
	}
	for _, r := range l.Gone {
		lr.Evicted = append(lr.Evicted, &keyguardv1.SequenceRange{First: r.First, Last: r.Last})
	}
	ev := &keyguardv1.Event{
		BootId:       p.cfg.BootID,
		Seq:          seq,
		Time:         timestamppb.New(l.End),
		AgentVersion: p.cfg.AgentVersion,
		Kind:         &keyguardv1.Event_LossReport{LossReport: lr},
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, ev)
}

func (p *Pipeline) setErr(err error) {
	s := err.Error()
	p.lastErr.Store(&s)
}
