package loader

// What keyguard's BPF programs cost processes they do not protect, measured in the testvm guest only
// (make bench): syscall-heavy loops by an unprotected process, with the programs the agent attaches on
// this kernel (same settings, variants and fast-path filter, loaded by the loader's own path) attached
// versus detached, in many interleaved rounds in one boot, reported as throughput ratios (1.0 = no
// cost) plus the kernel's own per-program run-time figures.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/keyguard/keyguard/testvm/vmenv"
)

const rounds = 21

type workload struct {
	name string
	iter int
	run  func(b *testing.B, n int)
}

var workloads = []workload{
	{"open+close", 1500, func(b *testing.B, n int) {
		for i := 0; i < n; i++ {
			f, err := os.Open("/tmp/kg-bench-file")
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	}},
	{"read /proc/self/{stat,status}", 700, func(b *testing.B, n int) {
		buf := make([]byte, 4096)
		for i := 0; i < n; i++ {
			for _, p := range []string{"/proc/self/stat", "/proc/self/status"} {
				f, err := os.Open(p)
				if err != nil {
					b.Fatal(err)
				}
				f.Read(buf)
				f.Close()
			}
		}
	}},
	{"fork+exec+wait", 8, func(b *testing.B, n int) {
		for i := 0; i < n; i++ {
			if err := exec.Command("/bin/testproc").Run(); err == nil {
				b.Fatal("testproc without arguments should exit 2")
			}
		}
	}},
}

// BenchmarkUnprotectedOverhead reports, per workload, ops/s with keyguard attached divided by ops/s
// without (goal ≥ 0.97), as the median over interleaved rounds, while a protected process exists.
func BenchmarkUnprotectedOverhead(b *testing.B) {
	vmenv.Require(b)
	if err := os.WriteFile("/tmp/kg-bench-file", []byte("x"), 0o644); err != nil {
		b.Fatal(err)
	}
	// The ratios are measured as the agent runs: without kernel.bpf_stats_enabled (the agent never sets
	// it; under TCG its two clock reads per program run cost about as much as a short program). The
	// per-program figures come from a separate pass with it on, after the ratios.
	setStats(b, false)
	// No garbage collection inside a timed run (it would run on the measured CPU when the guest has
	// one): collected before each run instead, untimed. The workloads allocate a few MB in all.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	g := benchLoad(b)
	// A protected process exists throughout, as on a real signing host.
	g.protectedVictim(b)
	attach, detach := func() { g.attachAll(b) }, g.detachAll

	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) {
			var base, with, paired []float64 // ns per op; per-round ratios
			for r := 0; r < rounds; r++ {
				// Alternate which side goes first so drift hits both equally.
				for _, on := range []bool{r%2 == 0, r%2 != 0} {
					if on {
						attach()
					}
					// Attaching and detaching patch kernel text, and QEMU then translates the
					// patched code again: a short untimed run first, so each side is measured in
					// its steady state. Detaching also leaves RCU work (trampolines, links freed
					// after a grace period): a pause first lets it run outside the timed run, which
					// matters most on a one-CPU guest (RCU Tasks grace periods of trampolines take hundreds of
					// milliseconds; under -icount sleep=off an idle second costs no host time).
					time.Sleep(time.Second)
					w.run(b, w.iter/4)
					runtime.GC()
					start := time.Now()
					w.run(b, w.iter)
					ns := float64(time.Since(start).Nanoseconds()) / float64(w.iter)
					if on {
						with = append(with, ns)
						detach()
					} else {
						base = append(base, ns)
					}
				}
				paired = append(paired, base[r]/with[r])
			}
			// The median of per-round ratios: each pair ran back to back, so slow drift of the
			// emulated machine cancels within a pair.
			mb, mw := median(base), median(with)
			ratio := median(paired)
			b.ReportMetric(mb, "ns/op-detached")
			b.ReportMetric(mw, "ns/op-attached")
			b.ReportMetric(ratio, "ratio")
			fmt.Printf("BENCH kernel=%s workload=%q rounds=%d detached=%.0fns attached=%.0fns throughput_ratio=%.3f (goal >= 0.97)\n",
				vmenv.Kernel(), w.name, rounds, mb, mw, ratio)
		})
	}
	setStats(b, true)
	attach()
	for _, w := range workloads {
		w.run(b, w.iter*3)
	}
	detach()
	setStats(b, false)
	for _, name := range g.names {
		st, err := g.coll.Programs[name].Stats()
		if err != nil || st.RunCount == 0 {
			continue
		}
		fmt.Printf("BENCH kernel=%s program=%s runs=%d avg=%dns\n", vmenv.Kernel(), strings.TrimPrefix(name, "kg_"), st.RunCount,
			st.Runtime.Nanoseconds()/int64(st.RunCount))
	}
}

// benchGuard is keyguard's object loaded as the agent loads it on this kernel (Config.prepare: settings,
// variants, fast-path filter), maps pinned in a private folder, with links the benchmark makes and
// drops itself instead of pinning them.
type benchGuard struct {
	*Guard
	coll  *ebpf.Collection
	names []string // in the agent's attach order
	links []link.Link
}

func benchLoad(tb testing.TB) *benchGuard {
	cfg := DefaultConfig()
	cfg.PinPath = pinDir(tb)
	spec, opts, v, _, err := cfg.prepare()
	if err != nil {
		tb.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *opts)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) { // the error's own text keeps only the last lines
			tb.Logf("verifier log:\n%s", strings.Join(ve.Log, "\n"))
		}
		tb.Fatalf("load: %v", err)
	}
	g := &benchGuard{Guard: &Guard{Variants: v}, coll: coll, names: programs(spec)}
	tb.Cleanup(func() {
		g.detachAll()
		coll.Close()
		g.Maps.Close()
	})
	if err := coll.Assign(&g.Maps); err != nil {
		tb.Fatal(err)
	}
	if err := g.rebuildFast(); err != nil {
		tb.Fatal(err)
	}
	return g
}

// protectedVictim starts a process that holds memory and marks it protected (rule 1), as a protected
// signer on a real host; it is killed at the end of the test.
func (g *benchGuard) protectedVictim(tb testing.TB) int {
	victim := exec.Command("/bin/testproc", "hold")
	if err := victim.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { victim.Process.Kill(); victim.Wait() })
	if err := g.Mark(victim.Process.Pid, 1, 4); err != nil {
		tb.Fatalf("mark victim: %v", err)
	}
	return victim.Process.Pid
}

func (g *benchGuard) attachAll(tb testing.TB) {
	for _, name := range g.names {
		l, err := attach(g.coll.Programs[name])
		if err != nil {
			tb.Fatalf("attach %s: %v", name, err)
		}
		g.links = append(g.links, l)
	}
}

func (g *benchGuard) detachAll() {
	closeLinks(g.links)
	g.links = nil
}

// setStats turns the kernel's per-program run-time accounting on or off.
func setStats(b testing.TB, on bool) {
	v := "0"
	if on {
		v = "1"
	}
	if err := os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte(v), 0); err != nil {
		b.Fatalf("kernel.bpf_stats_enabled: %v", err)
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// pinDir is a private bpffs folder, so the benchmark never touches a real agent's pins.
func pinDir(b testing.TB) string {
	d := "/sys/fs/bpf/kg_bench"
	os.RemoveAll(d)
	if err := os.MkdirAll(d, 0o700); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}
