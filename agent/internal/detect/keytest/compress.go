package keytest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// Compressions are the compressed formats the scanner and the sentinel read.
var Compressions = []string{"zstd", "lz4", "xz", "gzip"}

// Compress returns data compressed as kind (one of Compressions), as systemd-coredump, apport and
// kdump tools write dumps.
func Compress(kind string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	case "lz4":
		w = lz4.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "gzip":
		w = gzip.NewWriter(&buf)
	default:
		return nil, fmt.Errorf("keytest: unknown compression %q", kind)
	}
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
