package manpage

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeBin writes a shell script that prints help text the way a Go flag set does, with roff's
// special characters in it.
func fakeBin(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFromBinary(t *testing.T) {
	bin := fakeBin(t, `case "$1" in
-h) printf 'usage: tool run|probe [flags]\n\n.starts with a dot\n' ;;
run) printf 'Usage of run:\n  -cert string\n    \tC:\\keys\\agent.pem (default "/etc/x")\n' >&2; exit 2 ;;
esac
`)
	page, err := FromBinary(context.Background(), bin, Page{Name: "tool", Section: "1", Summary: "does things",
		Version: "1.2.3", Date: time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), Helps: [][]string{{"-h"}, {"run", "-h"}},
		SeeAlso: []string{"keyguard(1)", "keyguard-collector(1)"}})
	if err != nil {
		t.Fatal(err)
	}
	s := string(page)
	for _, want := range []string{
		`.TH TOOL 1 "2026-11-24" "keyguard 1.2.3" "keyguard manual"`,
		`tool \- does things`,
		`usage: tool run|probe [flags]`,
		`\&.starts with a dot`,
		`.SH "RUN"`,
		`\-cert string`, // from stderr, exit status 2
		`C:\ekeys\eagent.pem`,
		`.BR keyguard (1),`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("page lacks %q:\n%s", want, s)
		}
	}
	// groff renders it without a warning, and the text survives the round trip.
	if _, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command("groff", "-man", "-Tutf8", "-ww")
		cmd.Stdin = bytes.NewReader(page)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || stderr.Len() > 0 {
			t.Errorf("groff: %v\n%s", err, stderr.String())
		}
		text := string(out)
		text = regexpStrip(text)
		for _, want := range []string{".starts with a dot", `C:\keys\agent.pem`, "-cert string"} {
			if !strings.Contains(text, want) {
				t.Errorf("rendered page lacks %q:\n%s", want, text)
			}
		}
	}
}

// regexpStrip removes groff's overstrike (bold/underline) sequences.
func regexpStrip(s string) string {
	var b strings.Builder
	r := []rune(s)
	for i := 0; i < len(r); i++ {
		if i+1 < len(r) && r[i+1] == '\b' {
			i++
			continue
		}
		b.WriteRune(r[i])
	}
	return strings.ReplaceAll(b.String(), "\u2010", "-")
}

func TestFromBinaryNoHelp(t *testing.T) {
	bin := fakeBin(t, "exit 1\n")
	if _, err := FromBinary(context.Background(), bin, Page{Name: "tool", Section: "1", Helps: [][]string{{"-h"}}}); err == nil ||
		!strings.Contains(err.Error(), "printed no help") {
		t.Fatalf("a binary without help: %v", err)
	}
}

func TestGzip(t *testing.T) {
	a, err := Gzip([]byte("page"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	b, _ := Gzip([]byte("page"))
	if !bytes.Equal(a, b) {
		t.Error("gzip output depends on the time: not reproducible")
	}
	r, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "" || !r.ModTime.IsZero() {
		t.Errorf("gzip header has name %q time %v", r.Name, r.ModTime)
	}
	if got, _ := io.ReadAll(r); string(got) != "page" {
		t.Errorf("round trip %q", got)
	}
}
