package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cilium/ebpf"
	"google.golang.org/protobuf/types/known/timestamppb"

	kgbpf "github.com/keyguard/keyguard/bpf"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// DefaultAggregateWindow is how long repeated access attempts are counted in the kernel before the agent
// turns them into one aggregate event.
const DefaultAggregateWindow = 10 * time.Second

// Aggregates drains the kernel's aggregation of repeated access attempts (bpf/src: agg, agg_epoch,
// agg_sync). The kernel reports the first attempt of each (accessor executable and uid, whichever
// process, target thread, operation, access mode, class, decision, rule) in a window at once through
// the ring buffer and only counts the others in agg, keyed by the window's epoch, with the last
// attempt's process and the number of processes. Drain closes the window: it bumps the epoch, waits until no BPF program
// can still count into the old one, and turns each closed entry with repeats into an aggregate event.
// The map is pinned, so attempts made while no agent runs are drained, exactly, by the next one.
type Aggregates struct {
	Agg, Epoch, Sync *ebpf.Map
	Names            Names
}

// Drain closes the current window and returns the aggregate events of every closed one.
func (a *Aggregates) Drain() ([]*keyguardv1.Event, error) {
	var cur uint32
	if err := a.Epoch.Lookup(uint32(0), &cur); err != nil {
		return nil, fmt.Errorf("read the aggregation epoch: %w", err)
	}
	next := cur + 1
	if err := a.Epoch.Put(uint32(0), next); err != nil {
		return nil, fmt.Errorf("start a new aggregation window: %w", err)
	}
	if err := a.barrier(); err != nil {
		return nil, err
	}
	var (
		k      kgbpf.KeyguardKgAggKey
		v      kgbpf.KeyguardKgAgg
		closed []kgbpf.KeyguardKgAggKey
	)
	it := a.Agg.Iterate()
	for it.Next(&k, &v) {
		// Older than our window (wrap-safe). A newer one belongs to an agent that drained after us.
		if int32(k.Epoch-next) < 0 {
			closed = append(closed, k)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the aggregation map: %w", err)
	}
	var out []*keyguardv1.Event
	for i := range closed {
		if err := a.Agg.LookupAndDelete(&closed[i], &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue // drained by another agent (an upgrade running beside us)
			}
			return out, fmt.Errorf("drain the aggregation map: %w", err)
		}
		ev, err := Aggregate(&v, a.Names)
		if err != nil {
			return out, err
		}
		if ev != nil {
			out = append(out, ev)
		}
	}
	return out, nil
}

// barrier waits for an RCU grace period: the kernel updates an element of a map-in-map only after every
// BPF program that could still see the old values has finished (maybe_wait_bpf_programs).
func (a *Aggregates) barrier() error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create the aggregation barrier map: %w", err)
	}
	defer inner.Close()
	if err := a.Sync.Put(uint32(0), inner); err != nil {
		return fmt.Errorf("wait for BPF programs to leave the old aggregation window: %w", err)
	}
	return nil
}

// Aggregate turns one closed agg entry into an aggregate event, or nil when the window held only the
// attempt already reported through the ring buffer.
func Aggregate(v *kgbpf.KeyguardKgAgg, names Names) (*keyguardv1.Event, error) {
	if v.Count == 0 {
		return nil, nil
	}
	ev, err := decodeRecord(&v.Ev, names)
	if err != nil {
		return nil, fmt.Errorf("decode an aggregate: %w", err)
	}
	ma := ev.GetMemoryAccess()
	if ma == nil {
		return nil, fmt.Errorf("aggregate of event kind %d: only access events are aggregated", v.Ev.Kind)
	}
	first, last := v.FirstNs, v.LastNs
	if first == 0 {
		first = last
	}
	lastWall := bootToWall(last) // one clock reading for both, so last - first is the kernel's
	ma.Count = v.Count
	ma.LastAccessorPid = v.LastTgid
	ma.AccessorProcesses = uint64(v.Processes)
	ma.FirstTime = timestamppb.New(lastWall.Add(-time.Duration(last - first)))
	ma.LastTime = timestamppb.New(lastWall)
	ev.Time = ma.LastTime
	return ev, nil
}

// Run drains every window (and once at start, for what was counted while no agent ran) until ctx is
// done, then once more so that nothing counted stays behind at shutdown.
func (a *Aggregates) Run(ctx context.Context, window time.Duration, log *slog.Logger, emit func(*keyguardv1.Event)) {
	if window <= 0 {
		window = DefaultAggregateWindow
	}
	drain := func() {
		evs, err := a.Drain()
		for _, ev := range evs {
			emit(ev)
		}
		if err != nil {
			log.Error("drain aggregated access attempts; they stay counted in the kernel until the next drain", "error", err)
		}
	}
	drain()
	t := time.NewTicker(window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			drain()
			return
		case <-t.C:
			drain()
		}
	}
}
