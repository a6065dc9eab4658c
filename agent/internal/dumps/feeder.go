package dumps

import (
	"bytes"
	"sort"

	"github.com/keyguard/keyguard/agent/internal/detect"
)

// zeros is a read-only source of zero bytes (never written).
var zeros [256 << 10]byte

// A feeder passes a file's bytes to a detector stream, shortening long runs of zero bytes.
//
// A core is mostly zero pages once anonymous memory is removed, and the detector runs at about
// 200 MB/s even on zeros, so scanning every zero would make redaction and verification slower
// than the disk. No finding is longer than detect.MaxMatch, so a zero run longer than
// 2·MaxMatch+2·page is fed as its first MaxMatch zeros and its last MaxMatch to MaxMatch+page
// zeros: every MaxMatch-long window that touches a non-zero byte sees exactly the bytes it would
// see in the full file. The dropped middle is a whole number of pages, so stream offsets stay
// congruent to file offsets modulo the page size and the detector's alignment rules (raw secrets
// at 8-byte aligned offsets) apply to file offsets as in a full scan. Findings are mapped back to
// file offsets. (Only detect's learned secrets, searched from the start of the window where a key
// was first seen, depend on where windows fall, which shortening moves.)
//
// Zero runs are recognised as whole page-aligned (by file offset) zero pages in the data, plus
// the zero ranges the redactor writes itself; bytes in partial pages are fed as they are.
type feeder struct {
	st      *detect.Stream
	pending int64     // zero bytes not yet fed
	delta   int64     // file offset minus stream offset for the bytes fed last
	maps    []mapping // where delta changes, by stream offset
	onFind  func(f detect.Finding, start, end int64) error
}

type mapping struct {
	stream int64
	delta  int64
}

const compressMin = 2*detect.MaxMatch + 2*pageSize

func newFeeder(det *detect.Detector, onFind func(f detect.Finding, start, end int64) error) *feeder {
	f := &feeder{onFind: onFind, maps: []mapping{{0, 0}}}
	f.st = det.NewStream(func(fd detect.Finding) error {
		start := f.fileOf(fd.Offset)
		end := start + 1
		if fd.Length > 0 {
			end = f.fileOf(fd.Offset+int64(fd.Length)-1) + 1
		}
		return f.onFind(fd, start, end)
	})
	return f
}

// fileOf maps a stream offset to a file offset.
func (f *feeder) fileOf(s int64) int64 {
	i := sort.Search(len(f.maps), func(i int) bool { return f.maps[i].stream > s }) - 1
	if i < 0 {
		i = 0
	}
	return s + f.maps[i].delta
}

// settled returns the file offset below which no finding can still be reported.
func (f *feeder) settled() int64 { return f.fileOf(f.st.Settled()) }

// prune drops mappings no future finding can need.
func (f *feeder) prune() {
	s := f.st.Settled()
	i := sort.Search(len(f.maps), func(i int) bool { return f.maps[i].stream > s }) - 1
	if i > 0 {
		f.maps = append(f.maps[:0], f.maps[i:]...)
	}
}

// zero adds n zero bytes.
func (f *feeder) zero(n int64) { f.pending += n }

// data adds bytes that are not known to be zero.
func (f *feeder) data(p []byte) error {
	if err := f.resolve(); err != nil {
		return err
	}
	_, err := f.st.Write(p)
	f.prune()
	return err
}

func (f *feeder) writeZeros(n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.st.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// resolve feeds the pending zero run, shortened if it is long.
func (f *feeder) resolve() error {
	z := f.pending
	f.pending = 0
	if z < compressMin {
		return f.writeZeros(z)
	}
	if err := f.writeZeros(detect.MaxMatch); err != nil {
		return err
	}
	skip := (z - 2*detect.MaxMatch) / pageSize * pageSize
	f.delta += skip
	f.maps = append(f.maps, mapping{stream: f.st.Offset(), delta: f.delta})
	return f.writeZeros(z - detect.MaxMatch - skip)
}

// close feeds what is pending and delivers the last findings.
func (f *feeder) close() error {
	if err := f.resolve(); err != nil {
		return err
	}
	return f.st.Close()
}

// splitZeroPages calls data for runs of bytes and zero for runs of whole zero pages (aligned by
// file offset) in p, which starts at file offset off.
func splitZeroPages(p []byte, off int64, data func([]byte) error, zero func(int64) error) error {
	start := 0 // start of the current data run
	i := 0
	if r := int(off % pageSize); r != 0 {
		i = min(len(p), pageSize-r) // the partial first page is data
	}
	for i+pageSize <= len(p) {
		if !bytes.Equal(p[i:i+pageSize], zeros[:pageSize]) {
			i += pageSize
			continue
		}
		j := i + pageSize
		for j+pageSize <= len(p) && bytes.Equal(p[j:j+pageSize], zeros[:pageSize]) {
			j += pageSize
		}
		if i > start {
			if err := data(p[start:i]); err != nil {
				return err
			}
		}
		if err := zero(int64(j - i)); err != nil {
			return err
		}
		start, i = j, j
	}
	if start < len(p) {
		return data(p[start:])
	}
	return nil
}
