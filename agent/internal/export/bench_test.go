package export

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSubmitToDurable measures the agent side alone: events/s from Submit until they are
// fsynced in the spool (the collector is unreachable, so nothing is sent). End-to-end figures with
// the collector are in agent/internal/delivery.
func BenchmarkSubmitToDurable(b *testing.B) {
	cfg := Config{
		Collector: "127.0.0.1:1", Plaintext: true, PlaintextHost: "bench",
		SpoolDir: b.TempDir() + "/spool", BootID: "boot", AgentVersion: "bench",
		SpoolMaxBytes: 1 << 30,
	}
	cfg.QueueSize = 16384
	p, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		p.Close()
	}()
	ev := memEvent(0, "")
	prio := PriorityOf(ev)
	start := time.Now()
	n := uint64(0)
	for b.Loop() {
		for p.Stats().QueueLen > cfg.QueueSize/2 {
			time.Sleep(50 * time.Microsecond)
		}
		p.Submit(memEvent(1, "benchmark event detail"), prio)
		n++
	}
	for p.Stats().Spool.DurableSeq < n {
		time.Sleep(100 * time.Microsecond)
	}
	el := time.Since(start)
	b.ReportMetric(float64(n)/el.Seconds(), "events/s")
	if st := p.Stats(); st.QueueLost != 0 {
		b.Fatalf("lost %d", st.QueueLost)
	}
}
