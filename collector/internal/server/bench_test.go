package server

import (
	"context"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// cpuTime is the process's CPU time so far (user + system).
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchDSN(b *testing.B, backend string) string {
	if backend == "postgres" {
		return pgtest.NewDatabase(b)
	}
	return sqliteDSN(b)
}

// BenchmarkIngest measures sustained events/s from one agent stream through mTLS gRPC into the store,
// batches of 500 with up to 8 batches in flight, and checks nothing was lost.
func BenchmarkIngest(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			p := newPKI(b)
			s := start(b, p.config(benchDSN(b, backend)))
			cc := p.dial(b, s.Addr(), "web1")
			const batch, window = 500, 8
			// Pre-build the batches so the benchmark measures the collector, not event construction.
			total := uint64(b.N)
			var batches [][]*pb.Event
			for from := uint64(1); from <= total; from += batch {
				batches = append(batches, events(from, min(from+batch-1, total)))
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pu, err := openPush(ctx, cc)
			if err != nil {
				b.Fatal(err)
			}
			acks, errc := pu.recvAcks(len(batches))
			b.ResetTimer()
			start := time.Now()
			cpu0, srv0 := cpuTime(b), pgtest.BackendCPU(b, backend)
			inflight := 0
			var last *pb.PushResponse
			for _, bt := range batches {
				for inflight >= window {
					select {
					case last = <-acks:
						inflight--
					case err := <-errc:
						b.Fatal(err)
					}
				}
				if err := pu.stream.Send(&pb.PushRequest{Events: bt}); err != nil {
					b.Fatal(err)
				}
				inflight++
			}
			for r := range acks {
				last = r
			}
			elapsed := time.Since(start)
			b.StopTimer()
			select {
			case err := <-errc:
				b.Fatal(err)
			default:
			}
			if last.GetAckedSeq() != total {
				b.Fatalf("acked %d of %d events", last.GetAckedSeq(), total)
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "events/s")
			// CPU time of the whole process (collector and the benchmark's client with its TLS): on a
			// loaded, shared machine the wall-clock rate mostly measures the neighbours.
			cpu, srv := cpuTime(b)-cpu0, pgtest.BackendCPU(b, backend)-srv0
			b.ReportMetric(float64(cpu.Microseconds())/float64(total), "cpu-us/event")
			if backend == "postgres" {
				// The server's own CPU time per event (backends, WAL writer, checkpointer): with the
				// collector's, what one event costs the machine.
				b.ReportMetric(float64(srv.Microseconds())/float64(total), "pg-cpu-us/event")
			}
		})
	}
}

// BenchmarkLatencyAt1000PerSecond paces 1,000 events/s (a batch of 10 every 10 ms, as an agent flushing
// every 10 ms would) and reports the send-to-durable-ack latency percentiles.
func BenchmarkLatencyAt1000PerSecond(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			p := newPKI(b)
			s := start(b, p.config(benchDSN(b, backend)))
			pu, err := openPush(context.Background(), p.dial(b, s.Addr(), "web1"))
			if err != nil {
				b.Fatal(err)
			}
			defer pu.close()
			const per = 10
			n := max(b.N, 200) // enough samples for a p99
			lat := make([]time.Duration, 0, n)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			b.ResetTimer()
			for i := 0; i < n; i++ {
				<-tick.C
				from := uint64(i*per + 1)
				t0 := time.Now()
				r, err := pu.push(events(from, from+per-1))
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				if r.AckedSeq != from+per-1 {
					b.Fatalf("acked %d, want %d", r.AckedSeq, from+per-1)
				}
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
