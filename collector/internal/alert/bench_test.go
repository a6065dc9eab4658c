package alert

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// BenchmarkAlertThroughput: b.N stored events, each a distinct attack (no grouping), evaluated into the
// SQLite outbox and delivered to a signed webhook receiver on loopback; reports alerts/s end to end, and
// for comparison in the same run events/s when a group window folds them into one alert.
func BenchmarkAlertThroughput(b *testing.B) {
	for _, grouped := range []bool{false, true} {
		name := "each"
		if grouped {
			name = "grouped"
		}
		b.Run(name, func(b *testing.B) {
			s := openStore(b, filepath.Join(b.TempDir(), "events.db"))
			rcv := newReceiver(b)
			r := Rule{Name: "attacks", Outputs: []string{"hook"}}
			if grouped {
				r.GroupWindow = time.Nanosecond
			}
			e := newEngine(b, s, Config{Outputs: []Output{{Name: "hook", Type: "webhook", URL: "http://" + rcv.addr + "/webhook", secret: secret}}, Rules: []Rule{r}}, "bench")
			for i := 1; i <= b.N; i += 500 {
				var evs []*pb.Event
				for j := i; j < min(i+500, b.N+1); j++ {
					exe := fmt.Sprintf("/usr/bin/a%d", j)
					if grouped {
						exe = "/usr/bin/loop"
					}
					evs = append(evs, attack(uint64(j), exe, pb.Decision_DECISION_DENIED))
				}
				appendEvents(b, s, "web1", evs...)
			}
			b.ResetTimer()
			start := time.Now()
			for {
				if err := e.evaluate(context.Background()); err != nil {
					b.Fatal(err)
				}
				n, _, err := e.Pending(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.deliver(context.Background()); err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					break
				}
			}
			el := time.Since(start).Seconds()
			b.ReportMetric(float64(b.N)/el, "events/s")
			b.ReportMetric(float64(rcv.count("/webhook"))/el, "alerts/s")
		})
	}
}
