package loader

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// BenchmarkAggregation reports what the kernel-side aggregation of repeated access attempts costs per
// attempt: a denied process_vm_readv of a protected process, detached (no keyguard: the read fails
// with EFAULT after the check) versus attached as the first attempt of its window (ring-buffer event
// and a new agg entry) versus attached as a repeat (only counted). Interleaved rounds in one boot,
// medians, plus the kernel's own run time of ptrace_access_check for first and repeated attempts.
func BenchmarkAggregation(b *testing.B) {
	vmenv.Require(b)
	setStats(b, true)
	defer setStats(b, false)
	g := benchLoad(b)
	objs := &g.Maps
	check := g.coll.Programs["kg_ptrace_access_check"]
	pid := g.protectedVictim(b)
	rd, err := ringbuf.NewReader(objs.Events)
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	var l link.Link
	attach := func() {
		if l, err = link.AttachLSM(link.LSMOptions{Program: check}); err != nil {
			b.Fatalf("attach: %v", err)
		}
	}
	detach := func() { l.Close() }
	// Between rounds, outside the timing: empty the ring buffer and the agg map, as the agent would.
	reset := func() {
		rd.SetDeadline(time.Now())
		var rec ringbuf.Record
		for rd.ReadInto(&rec) == nil {
		}
		var k kgbpf.KeyguardKgAggKey
		var v kgbpf.KeyguardKgAgg
		var keys []kgbpf.KeyguardKgAggKey
		for it := objs.Agg.Iterate(); it.Next(&k, &v); {
			keys = append(keys, k)
		}
		for i := range keys {
			objs.Agg.Delete(&keys[i])
		}
	}
	const iter = 400 // first attempts per round stay well inside the ring buffer and the agg map
	var buf [1]byte
	local := []unix.Iovec{{Base: &buf[0], Len: 1}}
	remote := []unix.RemoteIovec{{Base: 0, Len: 1}}
	epoch := uint32(0)
	attemptOnce := func(want error) {
		_, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if !errors.Is(err, want) {
			b.Fatalf("process_vm_readv: %v, want %v", err, want)
		}
	}
	// Each side bumps (first) or rewrites (repeat, detached) the epoch before every attempt, so all
	// three pay the same extra map update.
	sides := []struct {
		name     string
		attached bool
		newEpoch bool
		want     error
	}{
		{"detached", false, false, unix.EFAULT},
		{"first", true, true, unix.EPERM},
		{"repeat", true, false, unix.EPERM},
	}
	ns := map[string][]float64{}
	progNs := map[string][]float64{}
	const rounds = 15
	for r := 0; r < rounds; r++ {
		for i := range sides {
			s := sides[(i+r)%len(sides)] // rotate the order so drift hits every side alike
			reset()
			if s.attached {
				attach()
			}
			before, _ := check.Stats()
			start := time.Now()
			for n := 0; n < iter; n++ {
				if s.newEpoch {
					epoch++
				}
				if err := objs.AggEpoch.Put(uint32(0), epoch); err != nil {
					b.Fatal(err)
				}
				attemptOnce(s.want)
			}
			ns[s.name] = append(ns[s.name], float64(time.Since(start).Nanoseconds())/iter)
			if s.attached {
				after, _ := check.Stats()
				if runs := after.RunCount - before.RunCount; runs > 0 {
					progNs[s.name] = append(progNs[s.name], float64((after.Runtime-before.Runtime).Nanoseconds())/float64(runs))
				}
				detach()
			}
		}
	}
	d, f, rp := median(ns["detached"]), median(ns["first"]), median(ns["repeat"])
	if len(progNs["first"]) == 0 || len(progNs["repeat"]) == 0 {
		b.Fatal("no per-program run-time figures (kernel.bpf_stats_enabled)")
	}
	pf, pr := median(progNs["first"]), median(progNs["repeat"])
	b.ReportMetric(f/rp, "first/repeat")
	fmt.Printf("BENCH kernel=%s aggregation rounds=%d attempt(ns): detached=%.0f first=%.0f repeat=%.0f; repeat/detached=%.3f first/repeat=%.3f; ptrace_access_check(ns): first=%.0f repeat=%.0f first/repeat=%.2f\n",
		vmenv.Kernel(), rounds, d, f, rp, rp/d, f/rp, pf, pr, pf/pr)
}
