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
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

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
	det *detect.Detector
	log *slog.Logger
}

// New returns a Scanner. log receives one debug line per file; nil discards.
func New(det *detect.Detector, log *slog.Logger) *Scanner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Scanner{det: det, log: log}
}

// Run scans every path (files, and directories recursively in lexical order; symbolic links
// inside directories and non-regular files are skipped, a named path that is neither file nor
// directory is an error). Findings go to found and per-file errors to failed as they happen;
// scanning continues after a file error. Run returns ctx's error if it was cancelled, or the
// error found or failed returned.
func (s *Scanner) Run(ctx context.Context, paths []string, found func(Finding) error, failed func(*FileError)) (Summary, error) {
	var sum Summary
	fail := func(path string, err error) {
		sum.Errors++
		failed(&FileError{Path: path, Err: err, Message: err.Error()})
	}
	for _, root := range paths {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		fi, err := os.Stat(root)
		if err != nil {
			fail(root, err)
			continue
		}
		if !fi.IsDir() {
			if !fi.Mode().IsRegular() {
				fail(root, fmt.Errorf("not a regular file or directory (%s)", fi.Mode().Type()))
				continue
			}
			if err := s.file(ctx, root, &sum, found, fail); err != nil {
				return sum, err
			}
			continue
		}
		err = filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				fail(path, err)
				if de != nil && de.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !de.Type().IsRegular() {
				return nil // directories are walked; links, devices, sockets, FIFOs are skipped
			}
			return s.file(ctx, path, &sum, found, fail)
		})
		if err != nil {
			return sum, err
		}
	}
	return sum, nil
}

// file scans one file. It returns an error only to stop the whole run.
func (s *Scanner) file(ctx context.Context, path string, sum *Summary, found func(Finding) error, fail func(string, error)) error {
	f, err := os.Open(path)
	if err != nil {
		fail(path, err)
		return nil
	}
	defer f.Close()
	sum.Files++
	r, comp, closeFn, err := Decompress(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		fail(path, err)
		return nil
	}
	defer closeFn()
	var stopErr error
	cr := &countingReader{r: r}
	err = s.det.Scan(ctx, cr, func(fd detect.Finding) error {
		sum.Findings++
		if err := found(Finding{Path: path, Compression: comp, Finding: fd}); err != nil {
			stopErr = err
			return err
		}
		return nil
	})
	sum.Bytes += cr.n
	s.log.Debug("scanned", "path", path, "compression", comp, "bytes", cr.n)
	switch {
	case stopErr != nil:
		return stopErr
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		if comp != "" {
			err = fmt.Errorf("%s stream: %w (findings before this point were reported)", comp, err)
		}
		fail(path, err)
	}
	return nil
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
