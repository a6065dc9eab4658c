// Package scan runs the key detector over files and directory trees — crash dumps,
// /var/lib/systemd/coredump, a debugging share — decompressing zstd, lz4, xz and gzip files
// (systemd-coredump stores cores compressed) on the fly. Offsets in a compressed file's findings
// are offsets in its decompressed stream.
package scan

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// Finding is one detector finding in one file.
type Finding struct {
	Path string `json:"path"`
	// Compression is "zstd", "lz4", "xz" or "gzip" when the file was decompressed: Offset is then
	// an offset in the decompressed stream. Empty for plain files.
	Compression string `json:"compression,omitempty"`
	detect.Finding
}

// FileError is a file or directory that could not be scanned (completely).
type FileError struct {
	Path string `json:"path"`
	Err  error  `json:"-"`
	// Message is Err's text (for JSON).
	Message string `json:"error"`
}

func (e *FileError) Error() string { return e.Path + ": " + e.Message }
func (e *FileError) Unwrap() error { return e.Err }

// Summary counts what a Run did.
type Summary struct {
	Files    int   `json:"files"`
	Bytes    int64 `json:"bytes"` // bytes scanned (decompressed)
	Findings int   `json:"findings"`
	Errors   int   `json:"errors"`
}

// Scanner scans paths with one detector.
type Scanner struct {
	det      *detect.Detector
	log      *slog.Logger
	workers  int
	splitMin int64 // plain files this large are scanned in parts (one per worker)
}

// New returns a Scanner that scans up to workers files at once (0 means GOMAXPROCS). log receives
// one debug line per file; nil discards.
func New(det *detect.Detector, log *slog.Logger, workers int) *Scanner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &Scanner{det: det, log: log, workers: workers, splitMin: splitMin}
}

// job is one file to scan (or a path that failed before scanning), and its results.
type job struct {
	path     string
	pre      error // error found while walking: report it, do not scan
	findings []Finding
	errs     []error
	bytes    int64
	scanned  bool
	done     chan struct{}
}

// Run scans every path (files, and directories recursively in lexical order; symbolic links
// inside directories and non-regular files are skipped, a named path that is neither file nor
// directory is an error). Files are scanned concurrently; findings go to found and per-file errors
// to failed in path order, each file's findings in offset order. Scanning continues after a file
// error. Run returns ctx's error if it was cancelled, or the error found returned.
func (s *Scanner) Run(ctx context.Context, paths []string, found func(Finding) error, failed func(*FileError)) (Summary, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan *job)
	ordered := make(chan *job, 4*s.workers)
	// Walker: one job per file, in order.
	go walk(ctx, paths, jobs, ordered)
	for range s.workers {
		go func() {
			for j := range jobs {
				s.file(ctx, j)
				close(j.done)
			}
		}()
	}
	return collect(ctx, cancel, ordered, found, failed)
}

// walk makes one job per file under paths, in order, and sends it with sendJob; it closes jobs and
// ordered when done, or when ctx is cancelled.
func walk(ctx context.Context, paths []string, jobs, ordered chan<- *job) {
	defer close(ordered)
	defer close(jobs)
	send := func(j *job) bool { return sendJob(ctx, j, jobs, ordered) }
	for _, root := range paths {
		fi, err := os.Stat(root)
		switch {
		case err != nil:
			if !send(&job{path: root, pre: err}) {
				return
			}
			continue
		case !fi.IsDir() && !fi.Mode().IsRegular():
			if !send(&job{path: root, pre: fmt.Errorf("not a regular file or directory (%s)", fi.Mode().Type())}) {
				return
			}
			continue
		case !fi.IsDir():
			if !send(&job{path: root}) {
				return
			}
			continue
		}
		err = filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				if !send(&job{path: path, pre: err}) {
					return ctx.Err()
				}
				if de != nil && de.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if !de.Type().IsRegular() {
				return nil // directories are walked; links, devices, sockets, FIFOs are skipped
			}
			if !send(&job{path: path}) {
				return ctx.Err()
			}
			return nil
		})
		if err != nil {
			return
		}
	}
}

// sendJob queues j for reporting (ordered) and, unless it failed before scanning, for the workers
// (jobs). It returns false if ctx was cancelled first.
func sendJob(ctx context.Context, j *job, jobs, ordered chan<- *job) bool {
	j.done = make(chan struct{})
	select {
	case ordered <- j:
	case <-ctx.Done():
		return false
	}
	if j.pre != nil {
		close(j.done)
		return true
	}
	select {
	case jobs <- j:
		return true
	case <-ctx.Done():
		close(j.done)
		return false
	}
}

// collect waits for each job in order and reports its findings to found and its errors to failed,
// counting them. When found returns an error it cancels the scan and returns that error; else it
// returns ctx's error.
func collect(ctx context.Context, cancel context.CancelFunc, ordered <-chan *job, found func(Finding) error, failed func(*FileError)) (Summary, error) {
	var sum Summary
	var stop error
	for j := range ordered {
		<-j.done
		if stop != nil {
			continue
		}
		if j.scanned {
			sum.Files++
			sum.Bytes += j.bytes
		}
		for _, f := range j.findings {
			sum.Findings++
			if err := found(f); err != nil {
				stop = err
				cancel()
				break
			}
		}
		errs := j.errs
		if j.pre != nil {
			errs = append(errs, j.pre)
		}
		for _, err := range errs {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				continue
			}
			sum.Errors++
			failed(&FileError{Path: j.path, Err: err, Message: err.Error()})
		}
	}
	if stop != nil {
		return sum, stop
	}
	return sum, ctx.Err()
}

// file scans one file into j.
func (s *Scanner) file(ctx context.Context, j *job) {
	if ctx.Err() != nil {
		return
	}
	f, err := os.Open(j.path)
	if err != nil {
		j.errs = append(j.errs, err)
		return
	}
	defer f.Close()
	j.scanned = true
	split := s.splitMin
	if s.det.Arithmetic() {
		split = min(split, arithSplitMin)
	}
	if fi, err := f.Stat(); err == nil && s.workers > 1 && fi.Size() >= split && plain(f) {
		s.fileParts(ctx, j, f, fi.Size())
		return
	}
	r, comp, closeFn, err := Decompress(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		j.errs = append(j.errs, err)
		return
	}
	defer closeFn()
	cr := &countingReader{r: r}
	err = s.det.Scan(ctx, cr, func(fd detect.Finding) error {
		j.findings = append(j.findings, Finding{Path: j.path, Compression: comp, Finding: fd})
		return nil
	})
	j.bytes = cr.n
	s.log.Debug("scanned", "path", j.path, "compression", comp, "bytes", cr.n, "findings", len(j.findings))
	if err != nil && ctx.Err() == nil {
		if comp != "" {
			err = fmt.Errorf("%s stream: %w (findings before this point were reported)", comp, err)
		}
		j.errs = append(j.errs, err)
	}
}

// splitMin is the size from which a plain (uncompressed) file is scanned in parts, one per worker.
const splitMin = 64 << 20

// arithSplitMin is splitMin for a detector doing public-key arithmetic (detect.Arithmetic): at
// about a megabyte a second per core, a part's MaxMatch of overlap is cheap next to the cores it
// brings in.
const arithSplitMin = 1 << 20

// plain reports whether f starts with none of the compression magic numbers.
func plain(f *os.File) bool {
	head := make([]byte, 6)
	n, _ := f.ReadAt(head, 0)
	for _, m := range [][]byte{magicZstd, magicLZ4, magicXZ, magicGzip} {
		if bytes.HasPrefix(head[:n], m) {
			return false
		}
	}
	return true
}

// fileParts scans a plain file in s.workers parts concurrently. Part i covers the findings that
// start in [start_i, end_i) and reads MaxMatch bytes past end_i, so a match up to MaxMatch long is
// found by the part it starts in; parts start at multiples of 4096, keeping the alignment grid.
// A key learned from a PEM/DER/JWK copy (detect's learned secrets) is searched for only in the
// rest of the part where it was learned.
func (s *Scanner) fileParts(ctx context.Context, j *job, f *os.File, size int64) {
	parts := int64(s.workers)
	step := (size/parts + 4095) &^ 4095
	type result struct {
		findings []Finding
		err      error
	}
	res := make([]result, parts)
	var wg sync.WaitGroup
	for i := range parts {
		start := i * step
		if start >= size {
			break
		}
		end := min(size, start+step)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := io.NewSectionReader(f, start, min(size, end+detect.MaxMatch)-start)
			res[i].err = s.det.Scan(ctx, bufio.NewReaderSize(r, 256<<10), func(fd detect.Finding) error {
				fd.Offset += start
				if fd.Offset < end {
					res[i].findings = append(res[i].findings, Finding{Path: j.path, Finding: fd})
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for _, r := range res {
		j.findings = append(j.findings, r.findings...)
		if r.err != nil && ctx.Err() == nil {
			j.errs = append(j.errs, r.err)
		}
	}
	j.bytes = size
	s.log.Debug("scanned", "path", j.path, "parts", parts, "bytes", size, "findings", len(j.findings))
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

var (
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicLZ4  = []byte{0x04, 0x22, 0x4d, 0x18}
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicGzip = []byte{0x1f, 0x8b}
)

// Decompress returns a reader of br's decompressed content if it starts with a zstd, lz4 frame,
// xz or gzip magic number, and the compression's name; otherwise br itself and "". The returned
// close function releases decoder resources.
func Decompress(br *bufio.Reader) (io.Reader, string, func(), error) {
	head, _ := br.Peek(6)
	nop := func() {}
	switch {
	case bytes.HasPrefix(head, magicZstd):
		// The window limit bounds memory: zstd frames written by systemd use far smaller windows.
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(256<<20), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, "", nop, fmt.Errorf("zstd: %w", err)
		}
		return d, "zstd", d.Close, nil
	case bytes.HasPrefix(head, magicLZ4):
		return lz4.NewReader(br), "lz4", nop, nil
	case bytes.HasPrefix(head, magicXZ):
		d, err := xz.NewReader(br)
		if err != nil {
			return nil, "", nop, fmt.Errorf("xz: %w", err)
		}
		return d, "xz", nop, nil
	case bytes.HasPrefix(head, magicGzip):
		d, err := gzip.NewReader(br)
		if err != nil {
			return nil, "", nop, fmt.Errorf("gzip: %w", err)
		}
		return d, "gzip", func() { d.Close() }, nil
	}
	return br, "", nop, nil
}
