package supervise

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestSteps(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		fail    int // index of the failing step, -1: none
		wantRan int
	}{
		{"all run", -1, 3},
		{"first fails", 0, 1},
		{"second fails", 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := 0
			var steps []Step
			for i := 0; i < 3; i++ {
				steps = append(steps, Step{Name: "s", Run: func() error {
					ran++
					if i == tc.fail {
						return boom
					}
					return nil
				}})
			}
			err := Steps(slog.New(slog.DiscardHandler), steps...)
			if ran != tc.wantRan {
				t.Errorf("%d steps ran, want %d", ran, tc.wantRan)
			}
			if (tc.fail >= 0) != errors.Is(err, boom) {
				t.Errorf("Steps error = %v", err)
			}
		})
	}
}

func TestGroup(t *testing.T) {
	var logBuf bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	g := New(ctx, slog.New(slog.NewTextHandler(&logBuf, nil)))
	var ticks atomic.Int32
	g.Every("ticker", 5*time.Millisecond, func(time.Time) { ticks.Add(1) })
	g.Go("failing work", func(context.Context) error { return errors.New("disk gone") })
	stopped := make(chan struct{})
	g.Go("waiting work", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil })
	deadline := time.Now().Add(5 * time.Second)
	for ticks.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if ticks.Load() < 3 {
		t.Fatalf("periodic work ran %d times", ticks.Load())
	}
	cancel()
	g.Wait()
	<-stopped
	n := ticks.Load()
	time.Sleep(20 * time.Millisecond)
	if ticks.Load() != n {
		t.Error("periodic work ran after the context ended")
	}
	if !strings.Contains(logBuf.String(), `level=ERROR msg="failing work stopped" error="disk gone"`) {
		t.Errorf("log does not name the failed work: %s", logBuf.String())
	}
}
