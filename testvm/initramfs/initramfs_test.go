package initramfs

import (
	"bytes"
	"compress/gzip"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func build(t *testing.T, w *Writer) {
	t.Helper()
	src := t.TempDir()
	if err := os.Chmod(src, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "data.txt"), []byte("testdata"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/data.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	steps := []error{
		w.CharDev("/dev/console", 0o600, 5, 1),
		w.File("/init", 0o755, []byte("#!/bin/sh\n")),
		w.File("tests/a/a.test", 0o755, []byte("12345")), // creates tests and tests/a
		w.Dir("tmp", 0o777|fs.ModeSticky),
		w.File("bin/suid", 0o755|fs.ModeSetuid, nil),
		w.CopyTree("tests/a/testdata", src),
		w.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
}

func TestWriteRead(t *testing.T) {
	var buf bytes.Buffer
	build(t, NewWriter(&buf))
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
	entries, err := Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Entry{}
	var order []string
	for _, e := range entries {
		if _, dup := got[e.Name]; dup {
			t.Errorf("entry %s written twice", e.Name)
		}
		got[e.Name] = e
		order = append(order, e.Name)
	}
	want := []struct {
		name   string
		mode   uint32
		data   string
		rmajor uint32
		rminor uint32
	}{
		{"dev", 0o040755, "", 0, 0},
		{"dev/console", 0o020600, "", 5, 1},
		{"init", 0o100755, "#!/bin/sh\n", 0, 0},
		{"tests", 0o040755, "", 0, 0},
		{"tests/a", 0o040755, "", 0, 0},
		{"tests/a/a.test", 0o100755, "12345", 0, 0},
		{"tmp", 0o041777, "", 0, 0},
		{"bin", 0o040755, "", 0, 0},
		{"bin/suid", 0o104755, "", 0, 0},
		{"tests/a/testdata", 0o040700, "", 0, 0},
		{"tests/a/testdata/link", 0o120777, "sub/data.txt", 0, 0},
		{"tests/a/testdata/sub", 0o040750, "", 0, 0},
		{"tests/a/testdata/sub/data.txt", 0o100640, "testdata", 0, 0},
	}
	if len(entries) != len(want) {
		t.Errorf("got entries %v, want %d", order, len(want))
	}
	for _, w := range want {
		e, ok := got[w.name]
		if !ok {
			t.Errorf("missing %s (have %v)", w.name, order)
			continue
		}
		if e.Mode != w.mode || string(e.Data) != w.data || e.RMajor != w.rmajor || e.RMinor != w.rminor {
			t.Errorf("%s: mode %o data %q dev %d:%d; want mode %o data %q dev %d:%d",
				w.name, e.Mode, e.Data, e.RMajor, e.RMinor, w.mode, w.data, w.rmajor, w.rminor)
		}
		if e.HeaderOffset%4 != 0 {
			t.Errorf("%s: header at offset %d, not 4-aligned", w.name, e.HeaderOffset)
		}
	}
	// Parents come before children, as the kernel creates them in archive order.
	seen := map[string]bool{}
	for _, n := range order {
		if i := strings.LastIndex(n, "/"); i > 0 && !seen[n[:i]] {
			t.Errorf("%s comes before its directory %s", n, n[:i])
		}
		seen[n] = true
	}
}

// TestGNUCpioReadsIt checks the archive with GNU cpio, an independent newc reader.
func TestGNUCpioReadsIt(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed; TestWriteRead still checks the format")
	}
	var buf bytes.Buffer
	w, err := NewGzipWriter(&buf, gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	build(t, w)
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-t", "-v", "--quiet")
	cmd.Stdin = zr
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"crw-------", "5,   1", "dev/console", "-rwxr-xr-x", "tests/a/a.test", "tests/a/testdata/link -> sub/data.txt"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio -tv output lacks %q:\n%s", want, out)
		}
	}
}

func TestBadNames(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	for _, name := range []string{"", "/", "..", "../x", "a/../../x"} {
		if err := w.File(name, 0o644, nil); err == nil {
			t.Errorf("File(%q) was accepted", name)
		}
	}
}
