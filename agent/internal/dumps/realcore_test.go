package dumps

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
)

// Real cores: the kernel's own (from a Go signer holding real keys, crashing by SIGABRT from a
// non-main thread) when the host's core_pattern writes plain files into the crasher's directory,
// and gdb's gcore of a tiny static C signer, rewritten in the kernel's layout. Neither changes any
// host setting.

// keyDir writes the test keys as PKCS#8 PEM files (rsa.pem, p256.pem, ed.pem) and raw.bin, raw
// material laid out as a C signer holds it (8-byte aligned): RSA p as 64-bit limbs, the P-256
// scalar big-endian, the Ed25519 seed||public key and RSA d as limbs.
func keyDir(t testing.TB) string {
	t.Helper()
	k := keytest.Generate()
	dir := t.TempDir()
	for name, key := range map[string]any{"rsa.pem": k.RSA, "p256.pem": k.P256, "ed.pem": k.Ed} {
		if err := os.WriteFile(filepath.Join(dir, name), keytest.PrivatePEM(key), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var raw []byte
	for _, n := range rawNames {
		raw = append(raw, enc(t, n)...)
		raw = append(raw, make([]byte, (8-len(raw)%8)%8)...)
	}
	if err := os.WriteFile(filepath.Join(dir, "raw.bin"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

var rawNames = []string{"rsa/prime-p-le64", "p256/scalar-be", "ed25519/seed-pub", "rsa/d-lambda-le64"}

func need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is needed (listed in .ci/packages.txt): %v", tool, err)
	}
	return p
}

func buildKeyholder(t testing.TB) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "keyholder")
	cmd := exec.Command("go", "build", "-o", exe, "./testdata/keyholder")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build keyholder: %v\n%s", err, out)
	}
	return exe
}

func buildTiny(t testing.TB) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "tinyholder")
	if out, err := exec.Command(need(t, "gcc"), "-static", "-O1", "-g", "-o", exe, "testdata/tinyholder/tinyholder.c", "-lpthread").CombinedOutput(); err != nil {
		t.Fatalf("build tinyholder: %v\n%s", err, out)
	}
	return exe
}

// startHolder starts exe with args in dir and waits for its READY line.
func startHolder(t testing.TB, dir string, env []string, exe string, args ...string) (*exec.Cmd, *os.File, int) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...) // nothing of the host's environment lands in a core
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = pr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	t.Cleanup(func() { pw.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		s.Scan()
		line <- s.Text()
	}()
	select {
	case l := <-line:
		var pid int
		if _, err := fmt.Sscanf(l, "READY %d", &pid); err != nil {
			t.Fatalf("%s said %q (stderr %s)", exe, l, stderr.String())
		}
		return cmd, pw, pid
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not get ready", exe)
	}
	return nil, nil, 0
}

// kernelCore crashes exe (args...) and returns the core the kernel wrote, or skips when the host's
// core_pattern does not write plain files into the crasher's directory.
func kernelCore(t testing.TB, env []string, exe string, args ...string) string {
	t.Helper()
	pat, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(string(pat))
	if strings.HasPrefix(p, "|") || strings.Contains(p, "/") || p == "" {
		t.Skipf("kernel.core_pattern is %q: the kernel would not write the core into the test's directory (this test never changes it)", p)
	}
	dir := t.TempDir()
	cmd, stdin, _ := startHolder(t, dir, env, exe, args...)
	fmt.Fprintln(stdin, "crash")
	err = cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || !ws.CoreDump() {
		t.Fatalf("%s did not dump core: %v (%v)", exe, err, cmd.ProcessState)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("want one core file in %s: %v %v", dir, ents, err)
	}
	return filepath.Join(dir, ents[0].Name())
}

// gcoreOf returns a gcore of a running tinyholder in the kernel's layout.
func gcoreOf(t testing.TB, exe string, args ...string) []byte {
	t.Helper()
	gcore := need(t, "gcore")
	_, _, pid := startHolder(t, t.TempDir(), nil, exe, args...)
	prefix := filepath.Join(t.TempDir(), "gcore")
	if out, err := exec.Command(gcore, "-o", prefix, fmt.Sprint(pid)).CombinedOutput(); err != nil {
		t.Fatalf("gcore: %v\n%s", err, out)
	}
	return kernelLayout(t, fmt.Sprintf("%s.%d", prefix, pid))
}

// checkReal runs every check on a real core: layout and threads kept, no key encoding left,
// registers scrubbed, file-backed read-only memory unchanged, anonymous memory zeroed, readelf
// and gdb read the result and gdb finds the threads and their frames.
func checkReal(t *testing.T, in []byte, exe string, mustHold []string, wantFrames []string) {
	det := testDetector(t)
	for _, n := range mustHold {
		if !bytes.Contains(in, enc(t, n)) {
			t.Fatalf("the input core does not hold %s: the test would prove nothing", n)
		}
	}
	info, err := Inspect(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "keep-stacks"}[keep], func(t *testing.T) {
			out, sum := redactBytes(t, in, Options{Detector: det, KeepStacks: keep})
			t.Logf("summary: %d threads, %d segments, zeroed %+v, findings %v", sum.Threads, sum.Segments, sum.Zeroed, sum.Findings)
			sameLayout(t, in, out)
			noSecrets(t, out)
			registersScrubbed(t, in, out)
			p := newPlan(&info, Options{})
			for _, s := range info.Segments {
				if s.Type != ptLoad || s.FileSize == 0 {
					continue
				}
				sp := p.spans(s)
				a, b := in[s.Offset:s.end()], out[s.Offset:s.end()]
				fileBacked := len(sp) == 1 && sp[0].keep
				switch {
				case fileBacked && !s.Writable() && !bytes.Equal(a, b):
					t.Errorf("file-backed read-only segment %#x changed", s.Vaddr)
				case !fileBacked && s.Writable() && !keep && !allZero(b):
					t.Errorf("writable anonymous segment %#x not zeroed", s.Vaddr)
				}
			}
			path := writeTemp(t, out)
			if o, err := exec.Command(need(t, "readelf"), "-a", "-W", path).CombinedOutput(); err != nil || bytes.Contains(o, []byte("Error")) {
				t.Errorf("readelf -a: %v\n%s", err, o)
			}
			o, err := exec.Command(need(t, "gdb"), "-batch", "-nx", "-ex", "info threads", "-ex", "thread apply all bt", exe, path).CombinedOutput()
			if err != nil || bytes.Contains(o, []byte("Unexpected size")) {
				t.Fatalf("gdb: %v\n%s", err, o)
			}
			threads := regexp.MustCompile(`(?m)^\*?\s+\d+\s+(Thread|LWP) `).FindAll(o, -1)
			if len(threads) != len(info.Threads) {
				t.Errorf("gdb sees %d threads, the core has %d:\n%s", len(threads), len(info.Threads), o)
			}
			if n := len(regexp.MustCompile(`(?m)^Thread \d+ \(.*\):\n#0\s+(0x[0-9a-f]+ in )?[a-zA-Z_.]`).FindAll(o, -1)); n != len(info.Threads) {
				t.Errorf("gdb resolves frame #0 of %d threads, want all %d:\n%s", n, len(info.Threads), o)
			}
			if keep {
				for _, f := range wantFrames {
					if !bytes.Contains(o, []byte(f)) {
						t.Errorf("with stacks kept gdb's backtraces lack %q:\n%s", f, o)
					}
				}
			}
		})
	}
}

func TestRealCoreKernelGo(t *testing.T) {
	exe := buildKeyholder(t)
	path := kernelCore(t, []string{"GOTRACEBACK=crash"}, exe, keyDir(t))
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// math/big keeps RSA primes as 64-bit limbs; crypto/ed25519 keeps seed||public key.
	checkReal(t, in, exe, []string{"rsa/prime-p-le64", "ed25519/seed-pub"}, []string{"main.main", "runtime."})
}

func TestRealCoreKernelC(t *testing.T) {
	exe := buildTiny(t)
	dir := keyDir(t)
	path := kernelCore(t, nil, exe, filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "p256.pem"), filepath.Join(dir, "ed.pem"), filepath.Join(dir, "raw.bin"))
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkReal(t, in, exe, append([]string{"rsa/pem-pkcs8"}, rawNames...), []string{"worker", "main"})
}

func TestRealCoreGcore(t *testing.T) {
	exe := buildTiny(t)
	dir := keyDir(t)
	in := gcoreOf(t, exe, filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "p256.pem"), filepath.Join(dir, "ed.pem"), filepath.Join(dir, "raw.bin"))
	checkReal(t, in, exe, append([]string{"rsa/pem-pkcs8"}, rawNames...), []string{"worker", "main"})
}
