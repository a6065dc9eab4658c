// Package bench measures what keyguard's BPF programs cost processes they do not protect. It runs in
// the testvm guest only (make bench): syscall-heavy loops by an unprotected process, with keyguard's
// programs attached versus detached, in many interleaved rounds in one boot, reported as throughput
// ratios (1.0 = no cost) plus the kernel's own per-program run-time figures.
package bench

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"
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
	os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("1"), 0)
	coll, progs := loadAll(b, pinDir(b))
	defer coll.Close()
	var links []link.Link
	attach := func() {
		for _, p := range progs {
			var l link.Link
			var err error
			if p.Type() == ebpf.LSM {
				l, err = link.AttachLSM(link.LSMOptions{Program: p})
			} else {
				l, err = link.AttachTracing(link.TracingOptions{Program: p})
			}
			if err != nil {
				b.Fatalf("attach: %v", err)
			}
			links = append(links, l)
		}
	}
	detach := func() {
		for _, l := range links {
			l.Close()
		}
		links = nil
	}
	// A protected process exists throughout, as on a real signing host.
	victim := exec.Command("/bin/testproc", "hold")
	if err := victim.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { victim.Process.Kill(); victim.Wait() }()
	attach()
	if err := coll.Maps["marks"].Update(uint32(pidfd(b, victim.Process.Pid)), kgbpf.KeyguardKgMark{RuleId: 1, Reason: 4}, ebpf.UpdateAny); err != nil {
		b.Fatalf("mark victim: %v", err)
	}
	detach()

	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) {
			var base, with, paired []float64 // ns per op; per-round ratios
			for r := 0; r < rounds; r++ {
				// Alternate which side goes first so drift hits both equally.
				for _, on := range []bool{r%2 == 0, r%2 != 0} {
					if on {
						attach()
					}
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
	names := make([]string, 0, len(progs))
	for n := range progs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		st, err := progs[name].Stats()
		if err != nil || st.RunCount == 0 {
			continue
		}
		fmt.Printf("BENCH kernel=%s program=%s runs=%d avg=%dns\n", vmenv.Kernel(), name, st.RunCount, st.Runtime.Nanoseconds()/int64(st.RunCount))
	}
}

// loadAll loads every program of keyguard's object that this kernel can attach (the agent's probe,
// agent/internal/loader/variants.go, leaves out the same ones: a hook the kernel lacks, a traced function
// with two BTF entries), by their program name.
func loadAll(b testing.TB, pins string) (*ebpf.Collection, map[string]*ebpf.Program) {
	spec, err := kgbpf.LoadKeyguard()
	if err != nil {
		b.Fatal(err)
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		b.Fatal(err)
	}
	for name, p := range spec.Programs {
		target := p.AttachTo
		if p.Type == ebpf.LSM {
			target = "bpf_lsm_" + target
		} else if p.AttachType == ebpf.AttachTraceRawTp {
			target = "btf_trace_" + target
		}
		ts, _ := kernel.AnyTypesByName(target)
		funcs := 0
		for _, t := range ts {
			if _, ok := t.(*btf.Func); ok {
				funcs++
			}
		}
		if len(ts) == 0 || (p.Type == ebpf.Tracing && p.AttachType != ebpf.AttachTraceRawTp && funcs != 1) {
			fmt.Printf("BENCH kernel=%s program=%s not attachable here (%s)\n", vmenv.Kernel(), name, target)
			delete(spec.Programs, name)
			if name == "kg_vm_readv_exit" {
				spec.Variables["cfg_vm_rw_tracked"].Set(uint32(0))
			}
		}
	}
	if spec.Programs["kg_vm_rw_enter"] != nil && spec.Programs["kg_vm_rw_exit"] != nil {
		delete(spec.Programs, "kg_vm_readv_exit") // the agent attaches one process_vm_rw end variant
		delete(spec.Programs, "kg_vm_writev_exit")
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pins}})
	if err != nil {
		b.Fatalf("load: %v", err)
	}
	progs := map[string]*ebpf.Program{}
	for name, p := range coll.Programs {
		progs[strings.TrimPrefix(name, "kg_")] = p
	}
	return coll, progs
}

func pidfd(b *testing.B, pid int) int {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		b.Fatal(err)
	}
	return fd
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// pinDir is a private bpffs folder, so the benchmark never touches a real agent's pins.
func pinDir(b *testing.B) string {
	d := "/sys/fs/bpf/kg_bench"
	os.RemoveAll(d)
	if err := os.MkdirAll(d, 0o700); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}
