package store

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/keyguard/keyguard/collector/pgtest"
	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// BenchmarkAppend measures the store alone: batches of 500 events committed per transaction.
func BenchmarkAppend(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "events.db")
			if backend == "postgres" {
				dsn = pgtest.NewDatabase(b)
			}
			s, err := Open(context.Background(), Options{DSN: dsn})
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
			for _, bt := range batches {
				if _, err := s.Append(context.Background(), "h", bt, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
