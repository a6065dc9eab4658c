// Package console is the line protocol between the testvm guest /init and the host harness.
//
// Everything the guest reports travels over the VM's serial console, mixed with whatever the tests
// and the kernel print there. A protocol record is one line that contains Marker followed by a kind
// and space-separated fields; text before the marker on the same line (a test's last line without a
// newline) belongs to whatever was printing before. Records:
//
//	##KEYGUARD## init uptime=<s> release=<uname -r>
//	##KEYGUARD## begin <suite>
//	##KEYGUARD## end <suite> exit=<code> seconds=<s> timeout=<0|1>
//	##KEYGUARD## file <name> <base64 chunk>
//	##KEYGUARD## file-end <name> size=<bytes> sha256=<hex> enc=gzip
//	##KEYGUARD## note <free text>
//	##KEYGUARD## result <pass|fail> suites=<n> failed=<n> seconds=<s>
//
// File names are slash-separated relative paths, URL-path-escaped so they contain no spaces. File
// chunks carry the gzip stream of the file (the serial line moves ~300 KB/s under TCG); size and
// sha256 are those of the uncompressed content.
package console

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
)

// Marker starts every protocol record.
const Marker = "##KEYGUARD## "

// Record kinds.
const (
	KindInit    = "init"
	KindBegin   = "begin"
	KindEnd     = "end"
	KindFile    = "file"
	KindFileEnd = "file-end"
	KindNote    = "note"
	KindResult  = "result"
)

// chunkBytes is the raw size of one file chunk: 1024 base64 characters per line.
const chunkBytes = 768

// Writer writes records for the guest. It is safe for concurrent use.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a Writer that writes records to w (the console).
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// record writes one record. After a test's partial last line the record shares that line; ParseLine
// splits it off.
func (w *Writer) record(kind string, fields ...string) error {
	var b strings.Builder
	b.WriteString(Marker)
	b.WriteString(kind)
	for _, f := range fields {
		b.WriteByte(' ')
		b.WriteString(f)
	}
	b.WriteByte('\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := io.WriteString(w.w, b.String())
	return err
}

// Init reports that /init runs, with the guest's uptime and kernel release.
func (w *Writer) Init(uptime float64, release string) error {
	return w.record(KindInit, "uptime="+formatSeconds(uptime), "release="+url.PathEscape(release))
}

// Begin marks the start of a suite's output.
func (w *Writer) Begin(suite string) error { return w.record(KindBegin, suite) }

// End marks the end of a suite's output.
func (w *Writer) End(suite string, exit int, seconds float64, timedOut bool) error {
	return w.record(KindEnd, suite, "exit="+strconv.Itoa(exit), "seconds="+formatSeconds(seconds), "timeout="+boolField(timedOut))
}

// Note reports a free-text message from the guest harness.
func (w *Writer) Note(format string, args ...any) error {
	msg := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	return w.record(KindNote, msg)
}

// Result reports the guest's final verdict. The host treats a run without it as failed.
func (w *Writer) Result(pass bool, suites, failed int, seconds float64) error {
	verdict := "fail"
	if pass {
		verdict = "pass"
	}
	return w.record(KindResult, verdict, "suites="+strconv.Itoa(suites), "failed="+strconv.Itoa(failed), "seconds="+formatSeconds(seconds))
}

// File sends data as the file name (a slash-separated relative path) to the host.
func (w *Writer) File(name string, data []byte) error {
	if err := checkName(name); err != nil {
		return err
	}
	esc := escapeName(name)
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	packed := z.Bytes()
	for off := 0; off < len(packed); off += chunkBytes {
		end := min(off+chunkBytes, len(packed))
		if err := w.record(KindFile, esc, base64.StdEncoding.EncodeToString(packed[off:end])); err != nil {
			return err
		}
	}
	sum := sha256.Sum256(data)
	return w.record(KindFileEnd, esc, "size="+strconv.Itoa(len(data)), "sha256="+hex.EncodeToString(sum[:]), "enc=gzip")
}

// Record is one parsed protocol record.
type Record struct {
	Kind string
	// Args are the positional fields (suite or file name, verdict, base64 chunk).
	Args []string
	// Fields are the key=value fields.
	Fields map[string]string
}

// Seconds returns the named field as seconds, or 0.
func (r Record) Seconds(key string) float64 {
	f, _ := strconv.ParseFloat(r.Fields[key], 64)
	return f
}

// Int returns the named field as an int, or -1 when it is missing or malformed.
func (r Record) Int(key string) int {
	n, err := strconv.Atoi(r.Fields[key])
	if err != nil {
		return -1
	}
	return n
}

// Arg returns positional field i, or "".
func (r Record) Arg(i int) string {
	if i < len(r.Args) {
		return r.Args[i]
	}
	return ""
}

// ParseLine splits a console line into the text before a record and the record itself. ok is false
// when the line holds no record (then before is the whole line).
func ParseLine(line string) (before string, rec Record, ok bool) {
	i := strings.Index(line, Marker)
	if i < 0 {
		return line, Record{}, false
	}
	before = line[:i]
	parts := strings.Fields(line[i+len(Marker):])
	if len(parts) == 0 {
		return line, Record{}, false
	}
	rec = Record{Kind: parts[0], Fields: map[string]string{}}
	if rec.Kind == KindNote {
		rec.Args = []string{strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line[i+len(Marker):]), KindNote))}
		return before, rec, true
	}
	for _, p := range parts[1:] {
		// Base64 chunks may contain '=' padding: only the file-end/init/end/result kinds carry key=value.
		if k, v, found := strings.Cut(p, "="); found && rec.Kind != KindFile && k != "" {
			rec.Fields[k] = v
			continue
		}
		rec.Args = append(rec.Args, p)
	}
	return before, rec, true
}

// Files reassembles files sent with Writer.File. The zero value is ready to use.
type Files struct {
	partial map[string]*bufferedFile
}

type bufferedFile struct {
	data []byte
	bad  error
}

// Complete is a file whose file-end record arrived and whose size and checksum matched.
type Complete struct {
	Name string // slash-separated relative path, already checked by checkName
	Data []byte
}

// Add feeds a file or file-end record. It returns the finished file on a valid file-end record, and
// an error when a chunk is malformed or the size or checksum does not match.
func (f *Files) Add(rec Record) (*Complete, error) {
	if f.partial == nil {
		f.partial = map[string]*bufferedFile{}
	}
	name, err := unescapeName(rec.Arg(0))
	if err != nil {
		return nil, err
	}
	bf := f.partial[name]
	if bf == nil {
		bf = &bufferedFile{}
		f.partial[name] = bf
	}
	switch rec.Kind {
	case KindFile:
		chunk, err := base64.StdEncoding.DecodeString(rec.Arg(1))
		if err != nil && bf.bad == nil {
			bf.bad = fmt.Errorf("file %s: corrupt chunk on the console: %w", name, err)
		}
		bf.data = append(bf.data, chunk...)
		return nil, nil
	case KindFileEnd:
		delete(f.partial, name)
		if bf.bad != nil {
			return nil, bf.bad
		}
		if rec.Fields["enc"] == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(bf.data))
			if err != nil {
				return nil, fmt.Errorf("file %s: corrupt after the console transfer: %w", name, err)
			}
			plain, err := io.ReadAll(zr)
			if err != nil {
				return nil, fmt.Errorf("file %s: corrupt after the console transfer: %w", name, err)
			}
			bf.data = plain
		}
		if size := rec.Int("size"); size != len(bf.data) {
			return nil, fmt.Errorf("file %s: got %d bytes over the console, guest sent %d (lines lost or mangled)", name, len(bf.data), size)
		}
		sum := sha256.Sum256(bf.data)
		if hex.EncodeToString(sum[:]) != rec.Fields["sha256"] {
			return nil, fmt.Errorf("file %s: sha256 mismatch after the console transfer (a line was mangled)", name)
		}
		return &Complete{Name: name, Data: bf.data}, nil
	}
	return nil, fmt.Errorf("console.Files: record kind %q is not a file record", rec.Kind)
}

// Pending returns the names of files whose file-end record never arrived.
func (f *Files) Pending() []string {
	var names []string
	for n := range f.partial {
		names = append(names, n)
	}
	return names
}

// Lines calls fn for every line read from r, with trailing "\r" removed (the guest's tty turns
// "\n" into "\r\n"). It returns the first read error other than io.EOF.
func Lines(r io.Reader, fn func(line string)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			fn(strings.TrimRight(line, "\r\n"))
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func checkName(name string) error {
	if name == "" || path.IsAbs(name) || path.Clean(name) != name || name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("console: file name %q must be a clean relative path", name)
	}
	return nil
}

func escapeName(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		// '=' would read as a key=value field.
		parts[i] = strings.ReplaceAll(url.PathEscape(p), "=", "%3D")
	}
	return strings.Join(parts, "/")
}

func unescapeName(esc string) (string, error) {
	name, err := url.PathUnescape(esc)
	if err != nil {
		return "", fmt.Errorf("console: bad file name %q: %w", esc, err)
	}
	if err := checkName(name); err != nil {
		return "", err
	}
	return name, nil
}

func formatSeconds(s float64) string { return strconv.FormatFloat(s, 'f', 3, 64) }

func boolField(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
