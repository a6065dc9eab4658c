package console

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"
)

// parseAll feeds every console line of out through ParseLine and Files, like the host does.
func parseAll(t *testing.T, out string) (recs []Record, files []*Complete, errs []error, text []string) {
	t.Helper()
	var f Files
	if err := Lines(strings.NewReader(out), func(line string) {
		before, rec, ok := ParseLine(line)
		if before != "" {
			text = append(text, before)
		}
		if !ok {
			return
		}
		switch rec.Kind {
		case KindFile, KindFileEnd:
			c, err := f.Add(rec)
			if err != nil {
				errs = append(errs, err)
			}
			if c != nil {
				files = append(files, c)
			}
		default:
			recs = append(recs, rec)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return recs, files, errs, text
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 1000) // several chunks, not a multiple of chunkBytes
	steps := []error{
		w.Init(2.345, "6.1.0-56-amd64"),
		w.Begin("agent-enforce"),
	}
	buf.WriteString("=== RUN   TestX\nlast line without newline")
	steps = append(steps,
		w.End("agent-enforce", 1, 12.5, true),
		w.File("agent-enforce/bench x=1.txt", big),
		w.File("empty", nil),
		w.Note("killed %d leftover processes\nsecond line", 2),
		w.Result(false, 3, 1, 40.25),
	)
	for i, err := range steps {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	// The guest tty turns \n into \r\n.
	recs, files, errs, text := parseAll(t, strings.ReplaceAll(buf.String(), "\n", "\r\n"))
	if len(errs) != 0 {
		t.Fatalf("file errors: %v", errs)
	}
	wantText := []string{"=== RUN   TestX", "last line without newline"}
	if strings.Join(text, "|") != strings.Join(wantText, "|") {
		t.Errorf("text outside records = %q, want %q", text, wantText)
	}
	kinds := []string{}
	for _, r := range recs {
		kinds = append(kinds, r.Kind)
	}
	if got, want := strings.Join(kinds, ","), "init,begin,end,note,result"; got != want {
		t.Fatalf("record kinds = %s, want %s", got, want)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"init uptime", recs[0].Seconds("uptime"), 2.345},
		{"init release", recs[0].Fields["release"], "6.1.0-56-amd64"},
		{"begin suite", recs[1].Arg(0), "agent-enforce"},
		{"end suite", recs[2].Arg(0), "agent-enforce"},
		{"end exit", recs[2].Int("exit"), 1},
		{"end seconds", recs[2].Seconds("seconds"), 12.5},
		{"end timeout", recs[2].Fields["timeout"], "1"},
		{"note", recs[3].Arg(0), "killed 2 leftover processes second line"},
		{"result verdict", recs[4].Arg(0), "fail"},
		{"result suites", recs[4].Int("suites"), 3},
		{"result failed", recs[4].Int("failed"), 1},
		{"missing int", recs[4].Int("nope"), -1},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if len(files) != 2 {
		t.Fatalf("got %d files, want 2", len(files))
	}
	if files[0].Name != "agent-enforce/bench x=1.txt" || !bytes.Equal(files[0].Data, big) {
		t.Errorf("file 0: name %q, %d bytes; want the %d sent bytes", files[0].Name, len(files[0].Data), len(big))
	}
	if files[1].Name != "empty" || len(files[1].Data) != 0 {
		t.Errorf("file 1: name %q, %d bytes; want empty", files[1].Name, len(files[1].Data))
	}
}

func TestFileDamage(t *testing.T) {
	var buf bytes.Buffer
	// Random bytes do not compress: three chunks of gzip stream.
	data := make([]byte, 2*chunkBytes+100)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := NewWriter(&buf).File("f.txt", data); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("expected 3 chunks and an end record, got %d lines", len(lines))
	}
	tests := []struct {
		name    string
		mangle  func([]string) []string
		wantErr string
	}{
		{"chunk lost", func(l []string) []string { return append(l[:1:1], l[2:]...) }, "corrupt after the console transfer"},
		{"kernel message inside a chunk", func(l []string) []string {
			l[1] = l[1][:100] + "[   12.345678] random: crng init done" + l[1][100:]
			return l
		}, "corrupt chunk"},
		{"flipped character", func(l []string) []string {
			i := strings.LastIndexByte(l[1], ' ') + 10
			c := byte('A')
			if l[1][i] == 'A' {
				c = 'B'
			}
			l[1] = l[1][:i] + string(c) + l[1][i+1:]
			return l
		}, "corrupt after the console transfer"},
		{"wrong checksum", func(l []string) []string {
			l[3] = strings.Replace(l[3], "sha256=", "sha256=00", 1)
			return l
		}, "sha256 mismatch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.mangle(append([]string(nil), lines...))
			_, files, errs, _ := parseAll(t, strings.Join(l, "\n")+"\n")
			if len(files) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.wantErr) {
				t.Fatalf("files %d, errors %v; want one error containing %q", len(files), errs, tc.wantErr)
			}
		})
	}
}

func TestFileNames(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a/b.txt", true},
		{"with space/and%percent=eq", true},
		{"", false},
		{"/abs", false},
		{"../up", false},
		{"a/../../up", false},
		{"a//b", false},
	}
	for _, tc := range tests {
		var buf bytes.Buffer
		err := NewWriter(&buf).File(tc.name, []byte("x"))
		if (err == nil) != tc.ok {
			t.Errorf("File(%q) error = %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		_, files, errs, _ := parseAll(t, buf.String())
		if len(errs) != 0 || len(files) != 1 || files[0].Name != tc.name {
			t.Errorf("File(%q) came back as %v (errors %v)", tc.name, files, errs)
		}
	}
	// A hostile record naming a path outside the output folder is refused on the host.
	var f Files
	_, rec, _ := ParseLine(Marker + "file-end ..%2F..%2Fetc%2Fpasswd size=0 sha256=x")
	if _, err := f.Add(rec); err == nil {
		t.Error("Files.Add accepted a name escaping the output folder")
	}
}

// FuzzConsole feeds arbitrary console lines to the host-side parser: it must never panic, and a
// file it accepts must have a clean relative name (the host writes it below the output folder).
func FuzzConsole(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	_ = w.Init(1, "6.1")
	_ = w.File("a/b.txt", []byte("hello"))
	_ = w.Result(true, 1, 0, 2)
	for _, l := range strings.Split(buf.String(), "\n") {
		f.Add(l)
	}
	f.Add(Marker + "file-end ..%2Fx size=0 sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
	f.Fuzz(func(t *testing.T, line string) {
		var files Files
		_, rec, ok := ParseLine(line)
		if !ok {
			return
		}
		_ = rec.Seconds("x") + float64(rec.Int("y"))
		if rec.Kind == KindFile || rec.Kind == KindFileEnd {
			c, err := files.Add(rec)
			if err == nil && c != nil && checkName(c.Name) != nil {
				t.Fatalf("accepted file name %q", c.Name)
			}
		}
	})
}
