// Package manpage writes keyguard's man pages from the binaries' own help output, so a page can never
// disagree with the flags the binary has: for each invocation (`keyguard-agent -h`, `keyguard-agent run
// -h`, ...) the binary is run, what it prints (stdout and stderr, any exit status) becomes one section
// of the page, preformatted and escaped for roff. Gzip pages the way Debian wants them (-9n:
// no name, no time stamp, so builds are reproducible).
package manpage

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Page describes one man page.
type Page struct {
	Name    string     // command name, e.g. keyguard-agent
	Section string     // "1" or "8"
	Summary string     // one line for NAME
	Version string     // shown in the footer
	Date    time.Time  // shown in the footer (the commit's time for reproducible pages)
	Helps   [][]string // argument lists that make the binary print help, e.g. {"-h"}, {"run", "-h"}
	SeeAlso []string   // other pages, "name(section)"
}

// FromBinary runs bin with each of p.Helps and returns the roff page. A help invocation that prints
// nothing is an error (the page would be empty where the binary has help).
func FromBinary(ctx context.Context, bin string, p Page) ([]byte, error) {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH %s %s %q %q %q\n", strings.ToUpper(escape(p.Name)), p.Section,
		p.Date.UTC().Format("2006-01-02"), "keyguard "+p.Version, "keyguard manual")
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", escape(p.Name), escape(p.Summary))
	for i, args := range p.Helps {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		cancel()
		if len(bytes.TrimSpace(out)) == 0 {
			return nil, fmt.Errorf("%s %s printed no help (%v): the man page needs it", bin, strings.Join(args, " "), err)
		}
		title := "DESCRIPTION"
		if i > 0 {
			title = strings.Join(trimHelpFlag(args), " ")
			title = `"` + strings.ToUpper(escape(title)) + `"`
		}
		fmt.Fprintf(&b, ".SH %s\n.nf\n", title)
		for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			b.WriteString(line(l))
		}
		b.WriteString(".fi\n")
	}
	if len(p.SeeAlso) > 0 {
		b.WriteString(".SH \"SEE ALSO\"\n")
		for i, s := range p.SeeAlso {
			name, sec, _ := strings.Cut(strings.TrimSuffix(s, ")"), "(")
			sep := ","
			if i == len(p.SeeAlso)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, ".BR %s (%s)%s\n", escape(name), sec, sep)
		}
	}
	return []byte(b.String()), nil
}

func trimHelpFlag(args []string) []string {
	if n := len(args); n > 0 && (args[n-1] == "-h" || args[n-1] == "--help") {
		return args[:n-1]
	}
	return args
}

// escape makes text safe in roff: backslashes doubled as \e, minus signs as \- (flags stay
// copy-pasteable).
func escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	return strings.ReplaceAll(s, "-", `\-`)
}

// line is one preformatted line; a leading dot or apostrophe would be a roff request, so it gets \&.
func line(l string) string {
	l = strings.ReplaceAll(l, "\t", "        ")
	e := escape(l)
	if strings.HasPrefix(e, ".") || strings.HasPrefix(e, "'") {
		e = `\&` + e
	}
	if strings.TrimSpace(e) == "" {
		return ".sp\n"
	}
	return e + "\n"
}

// Gzip compresses b like `gzip -9n`: best compression, no file name, no time stamp.
func Gzip(b []byte) ([]byte, error) {
	var out bytes.Buffer
	w, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
