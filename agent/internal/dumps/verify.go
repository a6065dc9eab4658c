package dumps

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

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
	if file, ok := r.(*os.File); ok {
		if done, err := verifySparse(ctx, file, buf, f, zero); done {
			if errors.Is(err, errEnough) {
				return found, nil
			}
			if err == nil {
				err = f.close()
				if errors.Is(err, errEnough) {
					err = nil
				}
			}
			return found, err
		}
	}
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

// verifySparse verifies a regular file from its current offset (0) with SEEK_DATA/SEEK_HOLE: holes
// (what a sparse redacted core is mostly made of) are fed as the zero runs they read as, without
// reading them. It returns done=false, having read nothing, when the file cannot seek data.
func verifySparse(ctx context.Context, file *os.File, buf []byte, f *feeder, zero func(int64) error) (bool, error) {
	fi, err := file.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return false, nil
	}
	size := fi.Size()
	if pos, err := file.Seek(0, io.SeekCurrent); err != nil || pos != 0 {
		return false, nil
	}
	fd := int(file.Fd())
	if _, err := unix.Seek(fd, 0, unix.SEEK_DATA); err != nil && !errors.Is(err, unix.ENXIO) {
		return false, nil // no SEEK_DATA here: read everything
	}
	var off int64
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // a hole to the end
		} else if err != nil {
			return true, fmt.Errorf("verify: seek data at offset %d: %w", off, err)
		}
		if data > off {
			if err := zero(data - off); err != nil {
				return true, err
			}
			off = data
		}
		if off >= size {
			break
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			return true, fmt.Errorf("verify: seek hole at offset %d: %w", off, err)
		}
		for off < hole {
			if err := ctx.Err(); err != nil {
				return true, err
			}
			n, err := file.ReadAt(buf[:min(int64(len(buf)), hole-off)], off)
			if n > 0 {
				if serr := splitZeroPages(buf[:n], off, f.data, zero); serr != nil {
					return true, serr
				}
				off += int64(n)
			}
			if err != nil && !(errors.Is(err, io.EOF) && off >= hole) {
				return true, fmt.Errorf("verify: read at offset %d: %w", off, err)
			}
		}
	}
	_, err = file.Seek(size, io.SeekStart) // consumed, as a reader read to EOF
	return true, err
}
