package store

import (
	"context"
	"path/filepath"
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

// BenchmarkAppend measures the store alone: batches of 500 events committed per transaction.
func BenchmarkAppend(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "events.db")
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(b)
			}
			var commit time.Duration // time in Commit: writing the log and waiting for the disk
			s, err := Open(context.Background(), Options{DSN: dsn, Timed: func(op string, d time.Duration) {
				if op == "commit" {
					commit += d
				}
			}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const batch = 500
			total := uint64(b.N)
			var batches [][]*pb.Event
			for from := uint64(1); from <= total; from += batch {
				batches = append(batches, seqEvents("h", from, min(from+batch-1, total)))
			}
			b.ResetTimer()
			commit = 0
			cpu0, srv0 := cpuTime(b), pgtest.BackendCPU(b, backend)
			for _, bt := range batches {
				if _, err := s.Append(context.Background(), "h", bt, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
			// On a loaded, shared machine wall-clock rates say more about the neighbours than about the
			// code: the process's own CPU time per event (user+system, all threads) does not.
			cpu, srv := cpuTime(b)-cpu0, pgtest.BackendCPU(b, backend)-srv0
			b.ReportMetric(float64(cpu.Microseconds())/float64(total), "cpu-us/event")
			if backend == "postgres" {
				// The server's own CPU time per event (backends, WAL writer, checkpointer): with the
				// collector's, what one event costs the machine.
				b.ReportMetric(float64(srv.Microseconds())/float64(total), "pg-cpu-us/event")
			}
			b.ReportMetric(float64(total)/cpu.Seconds(), "events/cpu-s")
			b.ReportMetric(100*commit.Seconds()/b.Elapsed().Seconds(), "commit-%")
		})
	}
}
