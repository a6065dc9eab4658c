package daemon

import (
	"context"

	"github.com/keyguard/keyguard/agent/internal/export"
	"github.com/keyguard/keyguard/agent/internal/metrics"
	"github.com/keyguard/keyguard/deploy/metricsserver"
)

// MetricsConfig configures the agent's Prometheus endpoint.
type MetricsConfig struct {
	// Listen is the HTTP address of /metrics, e.g. 127.0.0.1:9464 ("": no metrics).
	Listen string
	// AllowRemote permits a non-loopback Listen address.
	AllowRemote bool
}

// startMetrics creates the agent's metrics, hooks them to the export pipeline and serves them until Run
// returns. With no listen address it does nothing. Call it after the export pipeline
// is created and before it runs.
//
// A malformed address, or a non-loopback one without AllowRemote, is a configuration error and stops the agent. An address
// that cannot be bound (port in use) does not: reporting attacks matters more than metrics, so the
// agent logs the error and runs without them (Prometheus then sees the target down).
func (a *Agent) startMetrics() error {
	mc := a.cfg.Metrics
	if mc.Listen == "" {
		return nil
	}
	if err := metricsserver.Check(mc.Listen, mc.AllowRemote, metricsserver.Flags()); err != nil {
		return err
	}
	ln, err := metricsserver.Listen(mc.Listen, mc.AllowRemote, metricsserver.Flags())
	if err != nil {
		a.log.Error("metrics endpoint not started; the agent runs without it", "error", err)
		return nil
	}
	src := metrics.Sources{
		KernelCounters: a.guard.Counters,
		CounterNames:   counterNames,
		KernelLost:     a.guard.Lost,
		Protected:      a.protectedNow,
	}
	if a.exp != nil {
		src.Export = func() export.Stats { return a.exp.Stats() }
	}
	a.met = metrics.New(src)
	if a.exp != nil {
		a.exp.SetSpoolHook(a.met.Spooled)
		a.exp.SetAckHook(a.met.Acked)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := metricsserver.Serve(ctx, ln, a.met.Registry(), a.log); err != nil {
			a.log.Error("metrics endpoint stopped", "error", err)
		}
	}()
	a.onClose(func() { cancel(); <-done })
	return nil
}

// protectedNow counts the processes marked in the kernel now.
func (a *Agent) protectedNow() (int, error) {
	pids, err := a.protectedPIDs()
	return len(pids), err
}

// protectedPIDs lists the processes marked in the kernel now.
func (a *Agent) protectedPIDs() ([]int, error) {
	pids, err := a.proc.PIDs()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, pid := range pids {
		if _, ok, err := a.guard.MarkOf(pid); err == nil && ok {
			out = append(out, pid)
		}
	}
	return out, nil
}
