package dumps

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/keyguard/keyguard/agent/internal/detect"
)

// MaxVerifyFindings is how many findings Verify collects before it stops reading.
const MaxVerifyFindings = 1000

// Verify is the independent second pass over a finished core: it runs det over every byte of r
// (long zero runs shortened as described on feeder: every match a full scan reports lies in the
// same bytes it sees, TestVerifyMatchesFullScan) and returns the findings with their file offsets. It knows nothing about ELF, so it does not
// depend on the redactor's parsing. Any finding means the dump must not be passed on. It stops
// after MaxVerifyFindings findings.
func Verify(ctx context.Context, r io.Reader, det *detect.Detector) ([]detect.Finding, error) {
	var found []detect.Finding
	errEnough := errors.New("enough findings")
	f := newFeeder(det, func(fd detect.Finding, start, end int64) error {
		fd.Offset, fd.Length = start, int(end-start)
		found = append(found, fd)
		if len(found) >= MaxVerifyFindings {
			return errEnough
		}
		return nil
	})
	buf := make([]byte, 256<<10)
	var off int64
	zero := func(n int64) error { f.zero(n); return nil }
	for {
		if err := ctx.Err(); err != nil {
			return found, err
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if serr := splitZeroPages(buf[:n], off, f.data, zero); serr != nil {
				if errors.Is(serr, errEnough) {
					return found, nil
				}
				return found, serr
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return found, fmt.Errorf("verify: read at offset %d: %w", off, err)
		}
	}
	if err := f.close(); err != nil && !errors.Is(err, errEnough) {
		return found, err
	}
	return found, nil
}
