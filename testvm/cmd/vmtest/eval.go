package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/keyguard/keyguard/testvm/console"
)

// kernelProblem matches the kernel lines that make a run a harness failure whatever the tests said:
// oops headers ("[#1]"), BUG, panic, WARN and every stack trace. Only kernel lines count (they carry a
// printk timestamp), so test output that mentions these words does not.
var kernelProblem = regexp.MustCompile(`\[\s*\d+\.\d+\]\s.*?(Oops: |BUG: |kernel BUG at |Kernel panic|Call Trace:|WARNING: CPU: |\] RIP: 0010:|\[#\d+\] )`)

// testLine matches go test -v result lines; top-level tests have no indentation.
var testLine = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+) \(`)

// benchLine matches benchmark result lines and the headers benchstat groups by.
var benchLine = regexp.MustCompile(`^(Benchmark\S+\s+\d+\s+\S+ \S+/op|goos: |goarch: |pkg: |cpu: )`)

type suiteResult struct {
	name                    string
	began, ended            bool
	exit                    int
	timedOut                bool // killed by the guest /init's backstop
	testTimedOut            bool // the test binary's own -test.timeout fired
	seconds                 float64
	passed, failed, skipped int      // top-level tests
	failedTests             []string // every failed test, subtests included
	tail                    []string // last lines of output, shown on failure
	log                     io.WriteCloser
}

// session turns one VM's serial console into results. Feed it every line, then call finish.
type session struct {
	series string
	outDir string
	demo   bool
	live   io.Writer // non-nil: echo console text (not records) here

	expected []string
	suites   map[string]*suiteResult
	cur      *suiteResult
	files    console.Files
	notes    []string
	problems []string // harness failures
	kernel   []string // kernel oops/BUG/panic/WARN lines
	bench    bytes.Buffer

	initRec, resultRec *console.Record
	bootTime           time.Duration // host time from QEMU start to the init record
	resultTime         time.Duration
}

func newSession(series, outDir string, expected []string, demo bool, live io.Writer) *session {
	s := &session{series: series, outDir: outDir, expected: expected, demo: demo, live: live, suites: map[string]*suiteResult{}}
	for _, name := range expected {
		s.suites[name] = &suiteResult{name: name, exit: -1}
	}
	return s
}

const tailLines = 60

// feed handles one console line that arrived at host time at since QEMU started.
func (s *session) feed(line string, at time.Duration) {
	if kernelProblem.MatchString(line) {
		s.kernel = append(s.kernel, "serial: "+strings.TrimSpace(line))
	}
	before, rec, ok := console.ParseLine(line)
	if ok && before == "" && rec.Kind == console.KindFile {
		s.fileRecord(rec)
		return
	}
	if !ok || before != "" {
		s.text(before)
	}
	if !ok {
		return
	}
	switch rec.Kind {
	case console.KindInit:
		r := rec
		s.initRec, s.bootTime = &r, at
	case console.KindBegin:
		name := rec.Arg(0)
		sr := s.suites[name]
		if sr == nil {
			s.problems = append(s.problems, fmt.Sprintf("guest ran suite %q that the host did not ask for", name))
			sr = &suiteResult{name: name, exit: -1}
			s.suites[name] = sr
		}
		sr.began = true
		if f, err := createFile(filepath.Join(s.outDir, "suites", name+".log")); err == nil {
			sr.log = f
		} else {
			s.problems = append(s.problems, err.Error())
		}
		s.cur = sr
	case console.KindEnd:
		sr := s.suites[rec.Arg(0)]
		if sr == nil || sr != s.cur {
			s.problems = append(s.problems, fmt.Sprintf("end of suite %q without its begin", rec.Arg(0)))
			return
		}
		sr.ended, sr.exit, sr.seconds, sr.timedOut = true, rec.Int("exit"), rec.Seconds("seconds"), rec.Fields["timeout"] == "1"
		if sr.log != nil {
			sr.log.Close()
			sr.log = nil
		}
		s.cur = nil
	case console.KindFileEnd:
		s.fileRecord(rec)
	case console.KindNote:
		s.notes = append(s.notes, rec.Arg(0))
		s.text("vmtest guest: " + rec.Arg(0))
	case console.KindResult:
		r := rec
		s.resultRec, s.resultTime = &r, at
	case console.KindFile:
		s.fileRecord(rec) // after a partial line
	}
}

// text handles console output that is not a record: a suite's output, or boot/shutdown chatter.
func (s *session) text(line string) {
	// The demo shows what its program prints, not the firmware and kernel chatter around it.
	if s.live != nil && (!s.demo || (s.initRec != nil && s.resultRec == nil)) {
		fmt.Fprintln(s.live, line)
	}
	sr := s.cur
	if sr == nil {
		return
	}
	if sr.log != nil {
		fmt.Fprintln(sr.log, line)
	}
	sr.tail = append(sr.tail, line)
	if len(sr.tail) > 2*tailLines {
		sr.tail = append(sr.tail[:0], sr.tail[len(sr.tail)-tailLines:]...)
	}
	if strings.HasPrefix(line, "panic: test timed out after ") {
		sr.testTimedOut = true
	}
	if m := testLine.FindStringSubmatch(line); m != nil {
		top := m[1] == ""
		switch m[2] {
		case "PASS":
			if top {
				sr.passed++
			}
		case "SKIP":
			if top {
				sr.skipped++
			}
		case "FAIL":
			sr.failedTests = append(sr.failedTests, m[3])
			if top {
				sr.failed++
			}
		}
	}
	if benchLine.MatchString(line) {
		if strings.HasPrefix(line, "pkg: ") {
			line = "pkg: " + sr.name
		}
		s.bench.WriteString(line + "\n")
	}
}

func (s *session) fileRecord(rec console.Record) {
	c, err := s.files.Add(rec)
	if err != nil {
		s.problems = append(s.problems, "file transfer: "+err.Error())
		return
	}
	if c == nil {
		return
	}
	dst := filepath.Join(s.outDir, "files", filepath.FromSlash(c.Name))
	if c.Name == "dmesg.txt" {
		dst = filepath.Join(s.outDir, "dmesg.txt")
		for _, l := range strings.Split(string(c.Data), "\n") {
			if kernelProblem.MatchString(l) {
				s.kernel = append(s.kernel, "dmesg: "+strings.TrimSpace(l))
			}
		}
	}
	if err := writeFile(dst, c.Data); err != nil {
		s.problems = append(s.problems, err.Error())
	}
}

// finish checks everything after QEMU has exited (runErr: timeout, QEMU failure) and returns the
// reasons the run failed; none means it passed.
func (s *session) finish(runErr error) []string {
	if s.cur != nil && s.cur.log != nil {
		s.cur.log.Close()
		s.cur.log = nil
	}
	var fails []string
	if runErr != nil {
		fails = append(fails, runErr.Error())
	}
	fails = append(fails, s.problems...)
	if s.initRec == nil {
		fails = append(fails, "the guest /init never reported (kernel did not boot, or the initramfs is broken): see serial.log")
	}
	if s.resultRec == nil {
		fails = append(fails, "no final result line from the guest (it crashed, hung or was killed): see serial.log")
	} else if s.resultRec.Arg(0) != "pass" {
		fails = append(fails, fmt.Sprintf("guest reported %s (%d of %d suites failed)", s.resultRec.Arg(0), s.resultRec.Int("failed"), s.resultRec.Int("suites")))
	}
	for _, n := range s.files.Pending() {
		fails = append(fails, fmt.Sprintf("file %s: transfer never finished", n))
	}
	total := 0
	for _, name := range s.expected {
		sr := s.suites[name]
		total += sr.passed + sr.failed + sr.skipped
		switch {
		case !sr.began:
			fails = append(fails, fmt.Sprintf("suite %s never started", name))
		case !sr.ended:
			fails = append(fails, fmt.Sprintf("suite %s never finished", name))
		case sr.timedOut:
			fails = append(fails, fmt.Sprintf("suite %s timed out after %.0fs", name, sr.seconds))
		case sr.testTimedOut:
			fails = append(fails, fmt.Sprintf("suite %s timed out (-suite-timeout; goroutine dump in its log)", name))
		case sr.exit != 0 && len(sr.failedTests) == 0:
			fails = append(fails, fmt.Sprintf("suite %s exited with status %d without a --- FAIL line (panic, log.Fatal or os.Exit: see its log)", name, sr.exit))
		case sr.exit != 0:
			fails = append(fails, fmt.Sprintf("suite %s exited with status %d (failed: %s)", name, sr.exit, strings.Join(sr.failedTests, ", ")))
		case sr.failed > 0:
			fails = append(fails, fmt.Sprintf("suite %s exited 0 but reported failures: %s", name, strings.Join(sr.failedTests, ", ")))
		}
	}
	if !s.demo && total == 0 && s.resultRec != nil {
		fails = append(fails, "no test ran at all (does -run match anything?)")
	}
	if len(s.kernel) > 0 {
		fails = append(fails, fmt.Sprintf("kernel oops/BUG/panic/WARN in the log (%d lines), first: %s", len(s.kernel), s.kernel[0]))
	}
	return fails
}

func createFile(p string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	return os.Create(p)
}

func writeFile(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}
