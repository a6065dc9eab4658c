package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/console"
)

// guestLog writes what the guest /init would print for one suite with the given output.
func guestLog(t *testing.T, suite, output string, exit int, timedOut, result bool) string {
	t.Helper()
	var b bytes.Buffer
	w := console.NewWriter(&b)
	steps := []error{w.Init(1.5, "6.1.0-56-amd64"), w.Begin(suite)}
	b.WriteString(output)
	steps = append(steps, w.File(suite+"/out.txt", []byte("artifact")), w.End(suite, exit, 1.25, timedOut))
	if result {
		steps = append(steps, w.Result(exit == 0 && !timedOut, 1, map[bool]int{true: 0, false: 1}[exit == 0 && !timedOut], 2))
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	return strings.ReplaceAll(b.String(), "\n", "\r\n")
}

const passing = `=== RUN   TestA
--- PASS: TestA (0.00s)
=== RUN   TestB
=== RUN   TestB/sub
--- PASS: TestB (0.01s)
    --- PASS: TestB/sub (0.00s)
=== RUN   TestC
    c_test.go:9: VM test: runs only in the testvm guest
--- SKIP: TestC (0.00s)
PASS
`

const failing = `=== RUN   TestA
--- PASS: TestA (0.00s)
=== RUN   TestDeny
=== RUN   TestDeny/ptrace_attach
    deny_test.go:40: PTRACE_ATTACH succeeded, want EPERM
--- FAIL: TestDeny (0.02s)
    --- FAIL: TestDeny/ptrace_attach (0.01s)
FAIL
`

func evaluate(t *testing.T, log string, runErr error) (*session, []string) {
	t.Helper()
	dir := t.TempDir()
	s := newSession("6.1", dir, []string{"agent-enforce"}, false, nil)
	if err := console.Lines(strings.NewReader(log), func(l string) { s.feed(l, time.Second) }); err != nil {
		t.Fatal(err)
	}
	return s, s.finish(runErr)
}

func TestVerdicts(t *testing.T) {
	oops := "[   12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000008\r\n" +
		"[   12.345700] Oops: 0000 [#1] PREEMPT SMP NOPTI\r\n[   12.345800] Call Trace:\r\n"
	tests := []struct {
		name     string
		log      string
		runErr   error
		wantFail []string // substrings of the failure reasons; none means the run passes
	}{
		{"pass", guestLog(t, "agent-enforce", passing, 0, false, true), nil, nil},
		{"test fails", guestLog(t, "agent-enforce", failing, 1, false, true), nil,
			[]string{"suite agent-enforce exited with status 1 (failed: TestDeny, TestDeny/ptrace_attach)", "guest reported fail"}},
		{"failure lines but exit 0", guestLog(t, "agent-enforce", failing, 0, false, true), nil,
			[]string{"exited 0 but reported failures"}},
		{"suite timeout", guestLog(t, "agent-enforce", passing, 2, true, true), nil, []string{"timed out"}},
		{"test binary timeout", guestLog(t, "agent-enforce", "=== RUN   TestA\npanic: test timed out after 8m0s\n\trunning tests:\n", 2, false, true), nil,
			[]string{"suite agent-enforce timed out (-suite-timeout"}},
		{"panic without FAIL line", guestLog(t, "agent-enforce", "=== RUN   TestA\npanic: boom\n", 2, false, true), nil,
			[]string{"without a --- FAIL line"}},
		{"no result line", guestLog(t, "agent-enforce", passing, 0, false, false), nil, []string{"no final result line"}},
		{"VM killed", guestLog(t, "agent-enforce", passing, 0, false, false), errors.New("timed out: the VM ran longer than -timeout"),
			[]string{"timed out: the VM", "no final result line"}},
		{"kernel oops during a passing suite", guestLog(t, "agent-enforce", passing+oops, 0, false, true), nil,
			[]string{"kernel oops/BUG/panic/WARN"}},
		{"kernel never booted", "SeaBIOS\r\n[    0.5] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n", nil,
			[]string{"never reported", "no final result line", "suite agent-enforce never started", "kernel oops"}},
		{"no tests ran", guestLog(t, "agent-enforce", "testing: warning: no tests to run\nPASS\n", 0, false, true), nil,
			[]string{"no test ran at all"}},
		{"test output mentioning kernel words is not an oops", guestLog(t, "agent-enforce",
			"=== RUN   TestA\n    a_test.go:1: event: BUG: Call Trace: Oops: \n--- PASS: TestA (0.00s)\n", 0, false, true), nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, fails := evaluate(t, tc.log, tc.runErr)
			if len(tc.wantFail) == 0 {
				if len(fails) != 0 {
					t.Fatalf("run failed: %q, want pass", fails)
				}
				return
			}
			if len(fails) == 0 {
				t.Fatalf("run passed, want failures containing %q", tc.wantFail)
			}
			all := strings.Join(fails, "\n")
			for _, w := range tc.wantFail {
				if !strings.Contains(all, w) {
					t.Errorf("failures lack %q:\n%s", w, all)
				}
			}
		})
	}
}

func TestCountsAndFiles(t *testing.T) {
	s, fails := evaluate(t, guestLog(t, "agent-enforce", passing, 0, false, true), nil)
	if len(fails) != 0 {
		t.Fatal(fails)
	}
	sr := s.suites["agent-enforce"]
	if sr.passed != 2 || sr.failed != 0 || sr.skipped != 1 {
		t.Errorf("counts passed/failed/skipped = %d/%d/%d, want 2/0/1 (top-level tests only)", sr.passed, sr.failed, sr.skipped)
	}
	if sr.exit != 0 || sr.seconds != 1.25 {
		t.Errorf("exit %d seconds %v, want 0 and 1.25", sr.exit, sr.seconds)
	}
	if s.bootTime != time.Second || s.initRec.Seconds("uptime") != 1.5 {
		t.Errorf("boot time %v uptime %v", s.bootTime, s.initRec.Seconds("uptime"))
	}
	got, err := os.ReadFile(filepath.Join(s.outDir, "files", "agent-enforce", "out.txt"))
	if err != nil || string(got) != "artifact" {
		t.Errorf("artifact = %q, %v; want \"artifact\"", got, err)
	}
	log, err := os.ReadFile(filepath.Join(s.outDir, "suites", "agent-enforce.log"))
	if err != nil || !strings.Contains(string(log), "--- PASS: TestB/sub") || strings.Contains(string(log), console.Marker) {
		t.Errorf("suite log = %q, %v; want the test output without protocol records", log, err)
	}
}

func TestBenchLines(t *testing.T) {
	out := "goos: linux\ngoarch: amd64\npkg: github.com/keyguard/keyguard/agent\ncpu: QEMU Virtual CPU\n" +
		"BenchmarkOpenClose/agent=off-2   \t  100000\t     10200 ns/op\t     120 B/op\t       3 allocs/op\n" +
		"--- PASS: TestA (0.00s)\nPASS\n"
	s, fails := evaluate(t, guestLog(t, "agent-enforce", out, 0, false, true), nil)
	if len(fails) != 0 {
		t.Fatal(fails)
	}
	want := "goos: linux\ngoarch: amd64\npkg: agent-enforce\ncpu: QEMU Virtual CPU\nBenchmarkOpenClose/agent=off-2   \t  100000\t     10200 ns/op\t     120 B/op\t       3 allocs/op\n"
	if got := s.bench.String(); got != want {
		t.Errorf("bench.txt =\n%s\nwant\n%s", got, want)
	}
}

func TestReadList(t *testing.T) {
	p := filepath.Join(t.TempDir(), "suites.txt")
	data := "# comment\n\ngithub.com/x/a   # trailing comment\n  ./b extra words\n#github.com/x/c\n"
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readList(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "github.com/x/a,./b" {
		t.Errorf("readList = %q", got)
	}
	if _, err := readList(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing list file: no error")
	}
}

func TestCmdline(t *testing.T) {
	cfg := &config{run: "TestDeny/ptrace attach|Test\"X\"", env: []string{"A=b c", "ROUNDS=5"}, suiteTimeout: 90 * time.Second}
	got := cmdline(cfg, "6.12")
	for _, w := range strings.Fields(got) {
		if strings.ContainsAny(w, `"'\`) {
			t.Errorf("command-line word %q needs quoting; the kernel would mangle it", w)
		}
	}
	for _, want := range []string{"console=ttyS0", "panic=-1", "KEYGUARD_KERNEL=6.12", "KEYGUARD_MODE=test", "KEYGUARD_SUITE_TIMEOUT=90", "KEYGUARD_RUN=", "KEYGUARD_ENV="} {
		if !strings.Contains(got, want) {
			t.Errorf("cmdline %q lacks %q", got, want)
		}
	}
}

// The systemd demo: its hold reaches the guest (-1 = until Ctrl-C), and QEMU forwards only the
// host's loopback port to the guest console; no other mode gets a network.
func TestDemoQEMU(t *testing.T) {
	for _, c := range []struct {
		name          string
		cfg           config
		hold, nic     string
		wantNoHoldArg bool
	}{
		{"until Ctrl-C", config{demo: true, systemd: true, demoHold: -1, demoPort: 8443}, "KEYGUARD_DEMO_HOLD=-1", "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:8443-:8443", false},
		{"CI", config{demo: true, systemd: true, demoHold: 0, demoPort: 8443}, "KEYGUARD_DEMO_HOLD=0", "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:8443-:8443", false},
		{"ten minutes, other port", config{demo: true, systemd: true, demoHold: 10 * time.Minute, demoPort: 9443}, "KEYGUARD_DEMO_HOLD=600", "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:9443-:8443", false},
		{"initramfs demo", config{demo: true, demoHold: -1, demoPort: 8443}, "", "none", true},
		{"systemd tests", config{systemd: true, demoHold: -1, demoPort: 8443}, "", "none", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := qemuArgs(&c.cfg, &image{path: "initrd"}, &vmResult{series: "6.12", vmlinuz: "vmlinuz"})
			var nic, appendArg string
			for i := 0; i+1 < len(args); i++ {
				switch args[i] {
				case "-nic":
					nic = args[i+1]
				case "-append":
					appendArg = args[i+1]
				}
			}
			if nic != c.nic {
				t.Errorf("-nic %q, want %q", nic, c.nic)
			}
			if c.wantNoHoldArg {
				if strings.Contains(appendArg, "KEYGUARD_DEMO_HOLD") {
					t.Errorf("cmdline %q has a demo hold", appendArg)
				}
			} else if !strings.Contains(" "+appendArg+" ", " "+c.hold+" ") {
				t.Errorf("cmdline %q lacks %q", appendArg, c.hold)
			}
		})
	}
}
