package dumps

import (
	"bytes"
	"context"
	"debug/elf"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

// testdata/cores holds real cores used as fuzz seeds: tinyholder crashed by the kernel
// (kernel.core) and dumped by gdb's gcore then rewritten in the kernel's layout (gcore.core),
// holding throwaway test keys whose public halves are in seed-keys.pem. Regenerate them with
// KEYGUARD_DUMPS_MAKE_SEEDS=1 go test -run TestMakeSeeds ./agent/internal/dumps
const seedDir = "testdata/cores"

var (
	fuzzDetOnce sync.Once
	fuzzDet     *detect.Detector
)

// seedDetector finds the seed cores' keys (and any key in a format).
func seedDetector(t testing.TB) *detect.Detector {
	t.Helper()
	fuzzDetOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(seedDir, "seed-keys.pem"))
		if err != nil {
			panic(err)
		}
		keys, err := pubkeys.Parse("seed-keys.pem", b)
		if err != nil {
			panic(err)
		}
		fuzzDet, err = detect.New(detect.Options{Keys: keys})
		if err != nil {
			panic(err)
		}
	})
	return fuzzDet
}

// FuzzRedact: Redact never panics, and when it succeeds its output has the input's size, parses as
// an ELF core with the same program headers, holds no detector match (Verify, a separate pass) and
// no non-zero byte in writable memory that is not file-backed.
func FuzzRedact(f *testing.F) {
	ents, err := os.ReadDir(seedDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".core" {
			// The real cores with every segment cut to its first page (keys included): the same
			// headers and notes, 10 times smaller, so the fuzzer runs 10 times faster. The whole
			// seeds are checked by TestSeedCores.
			f.Add(shortSegments(f, filepath.Join(seedDir, e.Name()), pageSize))
		}
	}
	f.Add(small().bytes())
	det := seedDetector(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		sum, err := Redact(context.Background(), bytes.NewReader(in), &out, Options{Detector: det})
		if err != nil {
			return
		}
		checkRedacted(t, in, out.Bytes(), sum, det)
	})
}

func checkRedacted(t *testing.T, in, out []byte, sum Summary, det *detect.Detector) {
	if len(out) != len(in) || sum.Bytes != int64(len(in)) {
		t.Fatalf("output %d bytes (summary %d), input %d", len(out), sum.Bytes, len(in))
	}
	if fs, err := Verify(context.Background(), bytes.NewReader(out), det); err != nil || len(fs) > 0 {
		t.Fatalf("Verify(output) = %v, %v", fs, err)
	}
	fo, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("debug/elf cannot open the output: %v", err)
	}
	fi, err := elf.NewFile(bytes.NewReader(in))
	if err != nil {
		t.Fatalf("debug/elf cannot open an input Redact accepted: %v", err)
	}
	if len(fo.Progs) != len(fi.Progs) {
		t.Fatalf("%d program headers, input %d", len(fo.Progs), len(fi.Progs))
	}
	info, err := Inspect(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("Inspect(output): %v", err)
	}
	for i, p := range fo.Progs {
		if p.ProgHeader != fi.Progs[i].ProgHeader {
			t.Fatalf("program header %d changed", i)
		}
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_W == 0 || p.Filesz == 0 {
			continue
		}
		data := out[p.Off : p.Off+p.Filesz]
		for j := 0; j < len(data); j++ {
			if data[j] == 0 {
				continue
			}
			a := p.Vaddr + uint64(j)
			fileBacked := false
			for _, m := range info.Mappings {
				if !m.Anonymous() && m.Start <= a && a < m.End {
					fileBacked = true
					break
				}
			}
			if !fileBacked {
				t.Fatalf("writable anonymous memory at %#x (segment %d, byte %d) is %#x, not zero", a, i, j, data[j])
			}
		}
	}
}

// TestSeedCores runs the fuzz properties on the committed seeds, and checks they are what they
// claim: real cores with threads and key material the redactor removes.
func TestSeedCores(t *testing.T) {
	det := seedDetector(t)
	for _, name := range []string{"kernel.core", "gcore.core"} {
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join(seedDir, name))
			if err != nil {
				t.Fatal(err)
			}
			fs, err := Verify(context.Background(), bytes.NewReader(in), det)
			if err != nil || len(fs) < 4 {
				t.Fatalf("the seed holds %d findings (%v): want its keys", len(fs), err)
			}
			var out bytes.Buffer
			sum, err := Redact(context.Background(), bytes.NewReader(in), &out, Options{Detector: det})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Threads != 3 {
				t.Errorf("%d threads, want 3", sum.Threads)
			}
			checkRedacted(t, in, out.Bytes(), sum, det)
		})
	}
}

// TestMakeSeeds regenerates testdata/cores (only with KEYGUARD_DUMPS_MAKE_SEEDS=1).
func TestMakeSeeds(t *testing.T) {
	if os.Getenv("KEYGUARD_DUMPS_MAKE_SEEDS") != "1" {
		t.Skip("set KEYGUARD_DUMPS_MAKE_SEEDS=1 to regenerate testdata/cores")
	}
	// keytest.Generate makes fresh keys in each process: these exist only in the seeds.
	k := keytest.Generate()
	var pubs []byte
	for _, pk := range []any{&k.RSA.PublicKey, &k.P256.PublicKey, k.Ed.Public()} {
		pubs = append(pubs, keytest.PublicPEM(pk)...)
	}
	exe := buildTiny(t)
	dir := keyDir(t)
	args := []string{filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "raw.bin")}
	kc, err := os.ReadFile(kernelCore(t, nil, exe, args...))
	if err != nil {
		t.Fatal(err)
	}
	gc := gcoreOf(t, exe, args...)
	if err := os.MkdirAll(seedDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"kernel.core": kc, "gcore.core": gc, "seed-keys.pem": pubs} {
		if err := os.WriteFile(filepath.Join(seedDir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes", name, len(b))
	}
}

// shortSegments rewrites a core with each PT_LOAD's data cut to at most n bytes.
func shortSegments(t testing.TB, path string, n uint64) []byte {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var c tcore
	for _, p := range f.Progs {
		b, err := io.ReadAll(p.Open())
		if err != nil {
			t.Fatal(err)
		}
		switch p.Type {
		case elf.PT_NOTE:
			c.notes = append(c.notes, b...)
		case elf.PT_LOAD:
			c.add(tseg{vaddr: p.Vaddr, memsz: p.Memsz, flags: uint32(p.Flags), data: b[:min(uint64(len(b)), n)]})
		}
	}
	return c.bytes()
}
