package dumps

import (
	"bytes"
	"context"
	"crypto/x509"
	"debug/elf"
	"encoding/binary"
	"encoding/pem"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
)

var (
	detOnce sync.Once
	theDet  *detect.Detector
)

// testDetector finds the RSA-2048, P-256 and Ed25519 keys of keytest.Generate (the keys a
// protected signer holds in these tests) in every format and as raw material.
func testDetector(t testing.TB) *detect.Detector {
	t.Helper()
	detOnce.Do(func() {
		var keys []pubkeys.Key
		for _, k := range keytest.Generate().Pubs {
			if k.Name == "rsa.pem" || k.Name == "p256.pem" || k.Name == "ed.pem" {
				keys = append(keys, k)
			}
		}
		d, err := detect.New(detect.Options{Keys: keys})
		if err != nil {
			panic(err)
		}
		theDet = d
	})
	return theDet
}

// secrets returns every encoding of the test keys that the output must not contain, by name.
func secrets() map[string][]byte {
	out := map[string][]byte{}
	for _, e := range keytest.Generate().Encodings() {
		out[e.Name] = e.Data
	}
	return out
}

func enc(t testing.TB, name string) []byte {
	t.Helper()
	for _, e := range keytest.Generate().Encodings() {
		if e.Name == name {
			return e.Data
		}
	}
	t.Fatalf("no encoding %q", name)
	return nil
}

// Addresses of the synthetic core's mappings.
const (
	synText  = 0x400000
	synData  = 0x600000
	synHeap  = 0x1000000
	synRO    = 0x2000000
	synMemfd = 0x3000000
	synBig   = 0x4000000
	synStack = 0x7ffff0000000
	synVDSO  = 0x7ffff7ff0000
	synRSP   = synStack + 0x8000
)

func synRegs(tid int) [27]uint64 {
	var r [27]uint64
	for i := range r {
		r[i] = 0x1111111111111111*uint64(i%15+1) + uint64(tid)
	}
	r[19] = synRSP - uint64(tid-100)*0x1000 // rsp
	r[16] = synText + 0x123                 // rip
	return r
}

// synthetic returns a core with keys planted in every kind of segment.
func synthetic(t testing.TB) []byte {
	t.Helper()
	rng := mrand.New(mrand.NewPCG(1, 2))
	var c tcore
	c.note("CORE", ntPRStatus, prstatus(100, 11, synRegs(100)))
	c.note("CORE", ntPRPSInfo, prpsinfo(100, "signer", "/usr/bin/signer --serve"))
	si := make([]byte, siginfoSize)
	binary.LittleEndian.PutUint32(si, 11)
	c.note("CORE", ntSigInfo, si)
	c.note("CORE", ntAuxv, append(append(le64(atSysinfoEH), le64(synVDSO)...), make([]byte, 16)...))
	c.note("CORE", ntFile, fileNote([]Mapping{
		{Start: synText, End: synText + 2*pageSize, Path: "/usr/bin/signer"},
		{Start: synData, End: synData + 4*pageSize, Offset: 2 * pageSize, Path: "/usr/bin/signer"},
		{Start: synMemfd, End: synMemfd + 2*pageSize, Path: "/memfd:keys (deleted)"},
		{Start: synBig, End: synBig + 3<<20, Path: "/usr/lib/big.so"},
	}))
	c.note("CORE", ntFPRegset, bytes.Repeat([]byte{0xaa}, 512))
	c.note("LINUX", ntX86XState, bytes.Repeat([]byte{0xbb}, 0xa80))
	c.note("CORE", ntPRStatus, prstatus(101, 0, synRegs(101)))
	c.note("CORE", ntFPRegset, bytes.Repeat([]byte{0xaa}, 512))
	c.note("LINUX", ntX86XState, bytes.Repeat([]byte{0xbb}, 0xa80))

	text := bytes.Repeat([]byte("TEXT"), 2*pageSize/4)
	c.add(tseg{vaddr: synText, flags: 5, data: text})

	data := keytest.Filler(rng, 4*pageSize, false)
	copy(data[100:], enc(t, "rsa/pem-pkcs8"))         // PEM in writable file-backed memory
	copy(data[3*pageSize:], enc(t, "p256/scalar-be")) // raw scalar, page aligned
	c.add(tseg{vaddr: synData, flags: 6, data: data})

	heap := keytest.Filler(rng, 64*pageSize, true)
	copy(heap[800:], enc(t, "rsa/prime-p-le64"))
	copy(heap[5000:], enc(t, "ed25519/seed-pub"))
	c.add(tseg{vaddr: synHeap, flags: 6, data: heap})

	ro := keytest.Filler(rng, 2*pageSize, false)
	copy(ro[64:], enc(t, "ed25519/seed")) // mprotect'ed key page: anonymous, read-only
	c.add(tseg{vaddr: synRO, flags: 4, data: ro})

	memfd := keytest.Filler(rng, 2*pageSize, false)
	copy(memfd[8:], enc(t, "p256/der-sec1"))
	c.add(tseg{vaddr: synMemfd, flags: 6, data: memfd})

	// A big file-backed segment, mostly zero pages, with keys right after a long zero run and
	// across the detector's window boundaries.
	big := make([]byte, 3<<20)
	copy(big[1<<20+8:], enc(t, "rsa/pem-pkcs1"))
	copy(big[detect.DefaultChunk-detect.MaxMatch-700:], enc(t, "ed25519/pem-pkcs8"))
	copy(big[2*detect.DefaultChunk+detect.MaxMatch-16:], enc(t, "p256/jwk"))
	copy(big[3<<20-4096:], enc(t, "rsa/d-lambda-le64"))
	c.add(tseg{vaddr: synBig, flags: 4, data: big})

	stack := keytest.Filler(rng, 16*pageSize, false)
	copy(stack[0x8000-0x2000:], enc(t, "p256/scalar-le64"))  // below thread 101's rsp: dead
	copy(stack[0x8000+0x100:], enc(t, "ed25519/seed-pub"))   // live stack of thread 100
	copy(stack[0x8000-0x40:], []byte("RED ZONE BYTES KEPT")) // red zone of thread 100
	c.add(tseg{vaddr: synStack, flags: 6, data: stack})

	vdso := bytes.Repeat([]byte("VDSO"), 2*pageSize/4)
	c.add(tseg{vaddr: synVDSO, flags: 5, data: vdso})
	// A mapping the kernel did not dump.
	c.add(tseg{vaddr: 0x7ffff8000000, memsz: 16 * pageSize, flags: 0})
	return c.bytes()
}

func redactBytes(t testing.TB, in []byte, opts Options) ([]byte, Summary) {
	t.Helper()
	var out bytes.Buffer
	sum, err := Redact(context.Background(), bytes.NewReader(in), &out, opts)
	if err != nil {
		t.Fatalf("Redact: %v", err)
	}
	if int64(out.Len()) != int64(len(in)) || sum.Bytes != int64(len(in)) {
		t.Fatalf("output is %d bytes (summary %d), input %d", out.Len(), sum.Bytes, len(in))
	}
	return out.Bytes(), sum
}

// segBytes returns the file bytes of the PT_LOAD at vaddr.
func segBytes(t testing.TB, core []byte, vaddr uint64) []byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(core))
	if err != nil {
		t.Fatalf("debug/elf: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Vaddr == vaddr {
			return core[p.Off : p.Off+p.Filesz]
		}
	}
	t.Fatalf("no PT_LOAD at %#x", vaddr)
	return nil
}

func allZero(b []byte) bool {
	for len(b) > 0 {
		k := min(len(b), len(zeros))
		if !bytes.Equal(b[:k], zeros[:k]) {
			return false
		}
		b = b[k:]
	}
	return true
}

// sameLayout checks that out has the program headers and threads of in.
func sameLayout(t testing.TB, in, out []byte) {
	t.Helper()
	fi, err := elf.NewFile(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	fo, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("debug/elf cannot open the output: %v", err)
	}
	if fo.Type != elf.ET_CORE || fo.Machine != elf.EM_X86_64 || len(fo.Progs) != len(fi.Progs) {
		t.Fatalf("output: type %v machine %v, %d program headers; input %d", fo.Type, fo.Machine, len(fo.Progs), len(fi.Progs))
	}
	for i := range fi.Progs {
		if fi.Progs[i].ProgHeader != fo.Progs[i].ProgHeader {
			t.Errorf("program header %d: %+v, input %+v", i, fo.Progs[i].ProgHeader, fi.Progs[i].ProgHeader)
		}
	}
	ii, err := Inspect(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	io, err := Inspect(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("Inspect(output): %v", err)
	}
	if len(io.Threads) != len(ii.Threads) || len(ii.Threads) == 0 {
		t.Fatalf("output has %d threads, input %d", len(io.Threads), len(ii.Threads))
	}
	for i := range ii.Threads {
		a, b := ii.Threads[i], io.Threads[i]
		if a != b {
			t.Errorf("thread %d: %+v, input %+v", i, b, a)
		}
	}
	if io.PID != ii.PID || io.Signal != ii.Signal || len(io.Mappings) != len(ii.Mappings) {
		t.Errorf("output info pid %d sig %d %d mappings; input %d %d %d", io.PID, io.Signal, len(io.Mappings), ii.PID, ii.Signal, len(ii.Mappings))
	}
}

// condense replaces each run of whole zero pages with one zero page: every encoding (all shorter
// than a page) found in b is still found, and searching a mostly-zero core gets fast.
func condense(b []byte) []byte {
	var out []byte
	zeroRun := false
	for i := 0; i < len(b); i += pageSize {
		p := b[i:min(len(b), i+pageSize)]
		z := allZero(p)
		if z && zeroRun {
			continue
		}
		zeroRun = z
		out = append(out, p...)
	}
	return out
}

// noSecrets fails if out holds any encoding of the test keys, and checks Verify agrees.
func noSecrets(t testing.TB, out []byte) {
	t.Helper()
	c := condense(out)
	for name, s := range secrets() {
		if strings.HasPrefix(name, "other/") || strings.HasPrefix(name, "oct/") || strings.HasPrefix(name, "p384/") || strings.HasPrefix(name, "p521/") {
			continue
		}
		if bytes.Contains(c, s) {
			t.Errorf("output still holds %s at offset %d", name, bytes.Index(out, s))
		}
	}
	fs, err := Verify(context.Background(), bytes.NewReader(out), testDetector(t))
	if err != nil || len(fs) > 0 {
		t.Errorf("Verify(output) = %v, %v; want no findings", fs, err)
	}
}

// registersScrubbed checks every NT_PRSTATUS, NT_FPREGSET and NT_X86_XSTATE of out against in.
func registersScrubbed(t testing.TB, in, out []byte) {
	t.Helper()
	ni, no := notesOf(t, in), notesOf(t, out)
	if len(ni) != len(no) {
		t.Fatalf("%d notes in the output, %d in the input", len(no), len(ni))
	}
	var prstatus, fp int
	for i := range ni {
		a, b := ni[i], no[i]
		if a.typ != b.typ || a.name != b.name || len(a.desc) != len(b.desc) {
			t.Fatalf("note %d: %s/%#x (%d bytes), input %s/%#x (%d bytes)", i, b.name, b.typ, len(b.desc), a.name, a.typ, len(a.desc))
		}
		switch a.typ {
		case ntPRStatus:
			prstatus++
			if !bytes.Equal(a.desc[:prRegOff], b.desc[:prRegOff]) || !bytes.Equal(a.desc[prRegOff+27*8:], b.desc[prRegOff+27*8:]) {
				t.Errorf("NT_PRSTATUS %d: fields outside pr_reg changed", i)
			}
			for r := range 27 {
				va := binary.LittleEndian.Uint64(a.desc[prRegOff+8*r:])
				vb := binary.LittleEndian.Uint64(b.desc[prRegOff+8*r:])
				want := va
				switch regRule[r] {
				case regZero:
					want = 0
				case regLow16:
					want = va & 0xffff
				case regLow32:
					want = va & 0xffffffff
				}
				if vb != want {
					t.Errorf("NT_PRSTATUS %d: %s = %#x, want %#x (input %#x)", i, regNames[r], vb, want, va)
				}
			}
		case ntFPRegset, ntX86XState:
			fp++
			d := append([]byte(nil), b.desc...)
			if a.typ == ntX86XState && len(d) >= xsaveXCR0End && plausibleXCR0(binary.LittleEndian.Uint64(a.desc[xsaveXCR0Off:])) {
				if !bytes.Equal(d[xsaveXCR0Off:xsaveXCR0End], a.desc[xsaveXCR0Off:xsaveXCR0End]) {
					t.Errorf("note %d: XCR0 word not kept", i)
				}
				clear(d[xsaveXCR0Off:xsaveXCR0End])
			}
			if !allZero(d) {
				t.Errorf("note %d (%#x): FPU/SIMD state not zeroed", i, a.typ)
			}
		default:
			if !bytes.Equal(a.desc, b.desc) {
				t.Errorf("note %d (%s/%#x) changed", i, a.name, a.typ)
			}
		}
	}
	if prstatus == 0 || fp == 0 {
		t.Fatalf("found %d NT_PRSTATUS and %d FPU notes: the test core is not what it should be", prstatus, fp)
	}
}

type tnote struct {
	name string
	typ  uint32
	desc []byte
}

func notesOf(t testing.TB, core []byte) []tnote {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(core))
	if err != nil {
		t.Fatal(err)
	}
	var out []tnote
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := core[p.Off : p.Off+p.Filesz]
		for len(b) >= 12 {
			nn, dn, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			name := cstring(b[12 : 12+nn])
			d := b[12+align4(uint64(nn)):]
			out = append(out, tnote{name, typ, d[:dn]})
			b = d[align4(uint64(dn)):]
		}
	}
	return out
}

func TestRedactSynthetic(t *testing.T) {
	in := synthetic(t)
	det := testDetector(t)
	// The planted keys are there and found before redaction.
	if fs, err := Verify(context.Background(), bytes.NewReader(in), det); err != nil || len(fs) < 10 {
		t.Fatalf("Verify(input) found %d findings (%v); the test core should hold at least 10", len(fs), err)
	}
	for _, keep := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "keep-stacks"}[keep], func(t *testing.T) {
			out, sum := redactBytes(t, in, Options{Detector: det, KeepStacks: keep})
			sameLayout(t, in, out)
			noSecrets(t, out)
			registersScrubbed(t, in, out)
			if !bytes.Equal(segBytes(t, out, synText), segBytes(t, in, synText)) {
				t.Error("file-backed text changed")
			}
			if !bytes.Equal(segBytes(t, out, synVDSO), segBytes(t, in, synVDSO)) {
				t.Error("vdso changed")
			}
			for _, a := range []uint64{synHeap, synRO, synMemfd} {
				if !allZero(segBytes(t, out, a)) {
					t.Errorf("anonymous segment %#x not zeroed", a)
				}
			}
			// Writable file-backed data: kept except the matches.
			di, do := segBytes(t, in, synData), segBytes(t, out, synData)
			if !bytes.Equal(di[:100], do[:100]) || bytes.Equal(di, do) {
				t.Error("file-backed data: want bytes before the PEM kept and the PEM scrubbed")
			}
			si, so := segBytes(t, in, synStack), segBytes(t, out, synStack)
			if !keep {
				if !allZero(so) {
					t.Error("stack not zeroed")
				}
			} else {
				live := 0x8000 - 0x1000 - redZone // thread 101's red zone start
				if !allZero(so[:live]) {
					t.Error("dead stack below the lowest red zone not zeroed")
				}
				if !bytes.Contains(so, []byte("RED ZONE BYTES KEPT")) || !bytes.Equal(si[0x8000+0x200:], so[0x8000+0x200:]) {
					t.Error("live stack not kept")
				}
			}
			for _, k := range []string{detect.KindPEMPKCS8, detect.KindPEMRSA, detect.KindJWK, detect.KindECScalarBE, detect.KindRSADLE} {
				if sum.Findings[k] == 0 {
					t.Errorf("summary: no %s finding scrubbed: %v", k, sum.Findings)
				}
			}
			if sum.Threads != 2 || sum.Segments != 9 || sum.Info.PID != 100 || sum.Info.Signal != 11 || sum.Info.Comm != "signer" || sum.Info.VDSO != synVDSO {
				t.Errorf("summary: %d threads, %d segments, info %+v", sum.Threads, sum.Segments, sum.Info)
			}
			z := sum.Zeroed
			if z.Anonymous != (64+2+2)*pageSize || z.Registers != 2*(14*8+512+0xa80) || z.Matches == 0 {
				t.Errorf("zeroed: %+v", z)
			}
			if (z.Stack == 16*pageSize) == keep {
				t.Errorf("zeroed stack %d with KeepStacks=%v", z.Stack, keep)
			}
		})
	}
}

// Verify's shortening of zero runs finds exactly what a full scan finds.
func TestVerifyMatchesFullScan(t *testing.T) {
	det := testDetector(t)
	rng := mrand.New(mrand.NewPCG(5, 6))
	encs := keytest.Generate().Encodings()
	for trial := range 4 {
		b := make([]byte, 3<<20)
		for i := 0; i < 12; i++ {
			at := rng.IntN(len(b) - 8192)
			if rng.IntN(2) == 0 {
				copy(b[at:], keytest.Filler(rng, 2000+rng.IntN(200000), false))
			}
			e := encs[rng.IntN(len(encs))]
			if e.Align {
				at &^= 7
			}
			if at+len(e.Data) < len(b) {
				copy(b[at:], e.Data)
			}
		}
		want := det.ScanBytes(b)
		got, err := Verify(context.Background(), bytes.NewReader(b), det)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 || len(got) != len(want) {
			t.Fatalf("trial %d: Verify found %d, full scan %d", trial, len(got), len(want))
		}
		for i := range want {
			if got[i].Offset != want[i].Offset || got[i].Length != want[i].Length || got[i].Kind != want[i].Kind {
				t.Errorf("trial %d finding %d: %+v, full scan %+v", trial, i, got[i], want[i])
			}
		}
	}
}

// The redactor's PEM search works on real PEM too (sanity of the keytest encodings used above).
func TestPEMEncodingParses(t *testing.T) {
	blk, _ := pem.Decode(enc(t, "rsa/pem-pkcs8"))
	if blk == nil {
		t.Fatal("no PEM")
	}
	if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
}

// Sparse output reads back byte for byte like the plain output, takes less disk, and a file opened
// with O_APPEND (where seeks do nothing) is refused.
func TestRedactSparse(t *testing.T) {
	c := small()
	c.add(tseg{vaddr: 0x5000000, flags: 6, size: 8 << 20}) // anonymous: 8 MiB of holes
	in := c.bytes()
	det := testDetector(t)
	want, _ := redactBytes(t, in, Options{Detector: det})
	path := filepath.Join(t.TempDir(), "core")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Redact(context.Background(), bytes.NewReader(in), f, Options{Detector: det, Sparse: true}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("sparse output differs from the plain output (%d vs %d bytes, %v)", len(got), len(want), err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("sparse output of %d bytes uses %d bytes of disk", st.Size(), used)
	}
	af, err := os.OpenFile(filepath.Join(t.TempDir(), "append"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	if _, err := Redact(context.Background(), bytes.NewReader(in), af, Options{Detector: det, Sparse: true}); err == nil || !strings.Contains(err.Error(), "O_APPEND") {
		t.Fatalf("sparse redaction into an O_APPEND file: %v", err)
	}
}
