package dumps

import (
	"bufio"
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// The benchmark child: the test binary re-executed with KEYGUARD_DUMPS_BENCH_CHILD=copy|redact
// copies or redacts stdin (a pipe) to the file KEYGUARD_DUMPS_BENCH_OUT, then prints its peak RSS
// (VmHWM) and exits.
func TestMain(m *testing.M) {
	if mode := os.Getenv("KEYGUARD_DUMPS_BENCH_CHILD"); mode != "" {
		os.Exit(benchChild(mode))
	}
	os.Exit(m.Run())
}

func benchChild(mode string) int {
	out, err := os.Create(os.Getenv("KEYGUARD_DUMPS_BENCH_OUT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer out.Close()
	switch mode {
	case "copy":
		_, err = io.Copy(out, os.Stdin)
	case "cat":
		_, err = io.Copy(io.Discard, os.Stdin)
	case "redact-fp":
		err = redactVerifyFP(out)
	case "redact", "redact-sparse":
		var keys []pubkeys.Key
		var b []byte
		if b, err = os.ReadFile(os.Getenv("KEYGUARD_DUMPS_BENCH_KEYS")); err == nil {
			keys, err = pubkeys.Parse("bench-keys.pem", b)
		}
		var det *detect.Detector
		if err == nil {
			det, err = detect.New(detect.Options{Keys: keys})
		}
		if err == nil {
			var sum Summary
			sum, err = Redact(context.Background(), os.Stdin, out, Options{Detector: det, Sparse: mode == "redact-sparse"})
			fmt.Printf("findings %v zeroed %+v\n", sum.Findings, sum.Zeroed)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			fmt.Println(l)
		}
	}
	return 0
}

// benchCore returns a synthetic core of about size bytes shaped like a real one: 16 threads,
// NT_FILE, file-backed memory (ELF header pages and written .data of libraries: 24 MiB of
// pointers, integers and text with keys planted), thread stacks, and anonymous heap and mmap
// segments (the rest: the same plus random stretches, with keys planted).
func benchCore(size int64) *tcore {
	k := keytest.Generate()
	rng := mrand.New(mrand.NewPCG(7, 8))
	var planted [][]byte
	for _, e := range k.Encodings() {
		if strings.HasPrefix(e.Name, "rsa/") || strings.HasPrefix(e.Name, "p256/") || strings.HasPrefix(e.Name, "ed25519/") {
			planted = append(planted, e.Data)
		}
	}
	// Memory-like blocks with one key encoding planted every 16 KiB (8-byte aligned): anonymous
	// memory has random stretches (a fifth: compressed or encrypted buffers), library .data has
	// pointers, integers and text.
	filler := func(random bool) func(p []byte, off int64) {
		block := keytest.Filler(rng, 1<<20, random)
		for i, off := 0, 4096; off+4096 < len(block); i, off = i+1, off+16<<10 {
			copy(block[off:], planted[i%len(planted)])
		}
		return func(p []byte, off int64) {
			for len(p) > 0 {
				n := copy(p, block[off%int64(len(block)):])
				p, off = p[n:], off+int64(n)
			}
		}
	}
	fill, dataFill := filler(true), filler(false)
	var c tcore
	var ms []Mapping
	const threads = 16
	const stackSize = 256 << 10
	addr := uint64(0x400000)
	var file int64
	for i := range 16 { // 16 libraries: ELF header page + 1.5 MiB of written .data
		ms = append(ms, Mapping{Start: addr, End: addr + pageSize, Path: fmt.Sprintf("/usr/lib/lib%d.so", i)})
		c.add(tseg{vaddr: addr, flags: 5, size: pageSize, fill: dataFill})
		addr += 1 << 20
		ms = append(ms, Mapping{Start: addr, End: addr + 3<<19, Offset: 1 << 20, Path: fmt.Sprintf("/usr/lib/lib%d.so", i)})
		c.add(tseg{vaddr: addr, flags: 6, size: 3 << 19, fill: dataFill})
		addr += 4 << 20
		file += pageSize + 3<<19
	}
	anon := size - file - threads*stackSize
	const anonSegs = 64
	for range anonSegs {
		c.add(tseg{vaddr: addr, flags: 6, size: uint64(anon/anonSegs) &^ (pageSize - 1), fill: fill})
		addr += uint64(anon/anonSegs) + 1<<20
	}
	addr = 0x7f0000000000
	for i := range threads {
		regs := synRegs(100)
		regs[19] = addr + stackSize - 4096
		c.note("CORE", ntPRStatus, prstatus(1000+i, 6, regs))
		c.note("CORE", ntFPRegset, make([]byte, 512))
		c.note("LINUX", ntX86XState, make([]byte, 0xa80))
		c.add(tseg{vaddr: addr, flags: 6, size: stackSize, fill: fill})
		addr += 2 * stackSize
	}
	c.note("CORE", ntPRPSInfo, prpsinfo(1000, "signer", "signer"))
	c.note("CORE", ntFile, fileNote(ms))
	return &c
}

// childRun is one run of the benchmark child.
type childRun struct {
	wall, cpu time.Duration // wall time (process start included) and the child's user+system time
	rssKiB    int64         // peak RSS
	out       string
}

// runBenchChild runs the test binary as the benchmark child in mode, with env added. Its stdin is
// the file in if it is not "", else core written through a pipe.
func runBenchChild(b *testing.B, mode, in string, core *tcore, env ...string) childRun {
	out := filepath.Join(b.TempDir(), mode+".out")
	defer os.Remove(out)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "KEYGUARD_DUMPS_BENCH_CHILD="+mode, "KEYGUARD_DUMPS_BENCH_OUT="+out), env...)
	var stdin io.WriteCloser
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	} else {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			b.Fatal(err)
		}
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if stdin != nil {
		w := bufio.NewWriterSize(stdin, 1<<20)
		if _, err := core.WriteTo(w); err != nil {
			b.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
		stdin.Close()
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("%s child: %v", mode, err)
	}
	r := childRun{wall: time.Since(start), cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), out: stdout.String()}
	for _, l := range strings.Split(r.out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			r.rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return r
}

// runChild feeds core to a child in mode through a pipe and returns the wall time and the child's
// peak RSS in KiB.
func runChild(b *testing.B, mode string, core *tcore, keys string) (time.Duration, int64, string) {
	r := runBenchChild(b, mode, "", core, "KEYGUARD_DUMPS_BENCH_KEYS="+keys)
	return r.wall, r.rssKiB, r.out
}

// coreSize is the number of memory bytes in core.
func coreSize(core *tcore) int64 {
	var size int64
	for _, s := range core.segs {
		size += int64(s.size)
	}
	return size
}

// BenchmarkRedact1GiB compares redaction of a 1 GiB synthetic core with a plain io.Copy of the
// same bytes, each in a child process reading a pipe and writing a file (redaction also with
// Options.Sparse); it reports the throughputs, their ratios (goal >= 0.5) and the children's peak
// RSS (goal <= 64 MiB for redact). The kept file-backed data holds a key encoding every 16 KiB,
// far more than a real signer: the detector's raw searches on those keys' random-looking bytes
// are most of the redactor's CPU time.
// Run: go test -run '^$' -bench Redact1GiB -benchtime 1x ./agent/internal/dumps
// (KEYGUARD_DUMPS_BENCH_GIB=N changes the size.)
func BenchmarkRedact1GiB(b *testing.B) {
	gib := int64(1)
	if v, err := strconv.ParseInt(os.Getenv("KEYGUARD_DUMPS_BENCH_GIB"), 10, 64); err == nil && v > 0 {
		gib = v
	}
	core := benchCore(gib << 30)
	size := coreSize(core)
	k := keytest.Generate()
	var pubs []byte
	for _, pk := range []any{&k.RSA.PublicKey, &k.P256.PublicKey, k.Ed.Public()} {
		pubs = append(pubs, keytest.PublicPEM(pk)...)
	}
	keys := filepath.Join(b.TempDir(), "keys.pem")
	if err := os.WriteFile(keys, pubs, 0o600); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		copyT, copyRSS, _ := runChild(b, "copy", core, keys)
		redT, redRSS, out := runChild(b, "redact", core, keys)
		spT, spRSS, _ := runChild(b, "redact-sparse", core, keys)
		mb := float64(size) / 1e6
		b.ReportMetric(mb/copyT.Seconds(), "copy-MB/s")
		b.ReportMetric(mb/redT.Seconds(), "redact-MB/s")
		b.ReportMetric(copyT.Seconds()/redT.Seconds(), "redact/copy")
		b.ReportMetric(copyT.Seconds()/spT.Seconds(), "sparse-redact/copy")
		b.ReportMetric(float64(copyRSS)/1024, "copy-peak-RSS-MiB")
		b.ReportMetric(float64(max(redRSS, spRSS))/1024, "redact-peak-RSS-MiB")
		fmt.Printf("core %.0f MB: copy %v (%.0f MB/s, peak RSS %d KiB)\n", mb, copyT.Round(time.Millisecond), mb/copyT.Seconds(), copyRSS)
		fmt.Printf("  redact %v (%.0f MB/s, peak RSS %d KiB): %.2f of copy speed\n", redT.Round(time.Millisecond), mb/redT.Seconds(), redRSS, copyT.Seconds()/redT.Seconds())
		fmt.Printf("  redact, sparse output %v (%.0f MB/s, peak RSS %d KiB): %.2f of copy speed\n%s", spT.Round(time.Millisecond), mb/spT.Seconds(), spRSS, copyT.Seconds()/spT.Seconds(), out)
	}
}
