package delivery

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/export"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// benchEnv is a collector process on a backend and an in-process export pipeline for one host.
type benchEnv struct {
	p      *export.Pipeline
	cancel context.CancelFunc
	done   chan error
}

func newBenchPipeline(b *testing.B, k *pki, host, addr string, ackHook func(uint64)) *benchEnv {
	b.Helper()
	cert, key := k.host(b, host)
	p, err := export.New(export.Config{
		Collector: addr, CAFile: k.caFile, CertFile: cert, KeyFile: key, ServerName: "localhost",
		SpoolDir: filepath.Join(b.TempDir(), "spool"), AgentVersion: "bench",
		QueueSize: 1 << 17,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	if ackHook != nil {
		p.SetAckHook(ackHook)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &benchEnv{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- p.Run(ctx) }()
	b.Cleanup(func() {
		e.cancel()
		<-e.done
		p.Close()
	})
	return e
}

func benchEvent(k uint64) *keyguardv1.Event {
	ev := sampleEvent()
	ev.GetMemoryAccess().Detail = fmt.Sprintf("bench n=%d", k)
	return ev
}

// waitAllAcked waits until everything submitted so far is acknowledged by the collector.
func (e *benchEnv) waitAllAcked(b *testing.B, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		st := e.p.Stats()
		if st.QueueLen == 0 && st.Spool.DurableSeq == st.Spool.NextSeq-1 && st.AckedSeq >= st.Spool.DurableSeq {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("not all acknowledged after %s: %+v", timeout, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// BenchmarkSustainedThroughput pushes events from one agent pipeline as fast as its queue takes them
// (never overflowing it) through the collector into each backend, and reports events/s from the
// first submit to the last acknowledgement (events durably committed by the collector).
func BenchmarkSustainedThroughput(b *testing.B) {
	bins := buildBinaries(b)
	const perIter = 100000
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			k := newPKI(b)
			coll := startCollector(b, bins, k, "bench", be.dsn(b))
			var total time.Duration
			events := 0
			lost := uint64(0)
			i := 0
			for b.Loop() {
				i++
				e := newBenchPipeline(b, k, fmt.Sprintf("bench-%d", i), coll.addr, nil)
				start := time.Now()
				for n := range uint64(perIter) {
					for st := e.p.Stats(); st.QueueLen > st.QueueCap/2; st = e.p.Stats() {
						time.Sleep(100 * time.Microsecond)
					}
					e.p.Submit(benchEvent(n+1), export.PriorityOf(benchEvent(0)))
				}
				e.waitAllAcked(b, 5*time.Minute)
				total += time.Since(start)
				events += perIter
				st := e.p.Stats()
				lost += st.QueueLost + st.Spool.Evicted + st.Spool.Refused
			}
			b.ReportMetric(float64(events)/total.Seconds(), "events/s")
			b.ReportMetric(float64(lost), "lost")
		})
	}
}

// BenchmarkLatencyAt1000PerSecond submits 1,000 events/s for 10 s and reports the p50 and p99 time
// from Submit until the collector acknowledged the event as durably stored.
func BenchmarkLatencyAt1000PerSecond(b *testing.B) {
	bins := buildBinaries(b)
	const rate, seconds = 1000, 10
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			k := newPKI(b)
			coll := startCollector(b, bins, k, "bench", be.dsn(b))
			var all []time.Duration
			i := 0
			for b.Loop() {
				i++
				n := rate * seconds
				submitted := make([]time.Time, n+1)
				latency := make([]time.Duration, 0, n)
				var mu sync.Mutex
				var acked uint64
				hook := func(seq uint64) {
					now := time.Now()
					mu.Lock()
					defer mu.Unlock()
					for s := acked + 1; s <= seq && s <= uint64(n); s++ {
						latency = append(latency, now.Sub(submitted[s]))
					}
					acked = max(acked, seq)
				}
				e := newBenchPipeline(b, k, fmt.Sprintf("lat-%d", i), coll.addr, hook)
				start := time.Now()
				for j := 1; j <= n; j++ {
					if d := time.Until(start.Add(time.Duration(j-1) * time.Second / rate)); d > 0 {
						time.Sleep(d)
					}
					mu.Lock()
					submitted[j] = time.Now()
					mu.Unlock()
					e.p.Submit(benchEvent(uint64(j)), export.PriorityOf(benchEvent(0)))
				}
				e.waitAllAcked(b, time.Minute)
				mu.Lock()
				all = append(all, latency...)
				mu.Unlock()
			}
			slices.Sort(all)
			pct := func(p float64) float64 {
				return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(pct(1.0), "max-ms")
		})
	}
}
