package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

// On-disk format.
//
// A segment file starts with the 8-byte segmentMagic and is followed by records:
//
//	u32 body length   (little endian)
//	u32 CRC-32C of the body
//	body:
//	  u64 sequence number
//	  i64 append time, Unix nanoseconds
//	  u8  priority
//	  u8  kind
//	  ... payload (body length - bodyHeaderSize bytes)
//
// A sealed segment ends with a footer: u32 sealMarker, u32 CRC-32C of the rest, u64 last sequence
// number, u64 record count. Every segment but the newest must be sealed; one that is not was
// damaged after it was written, and the records between its end and the next segment are lost.
//
// A record is valid only if its length is sane, the whole body is present, the checksum matches and
// its sequence number is greater than the previous record's. The first invalid record ends the
// segment: after a crash that is the torn tail, and Open truncates it.
const (
	segmentMagic    = "KGSPOOL1"
	frameHeaderSize = 8
	bodyHeaderSize  = 18
	// RecordOverhead is the number of bytes a record takes on disk beyond its payload.
	RecordOverhead = frameHeaderSize + bodyHeaderSize
	sealMarker     = 0xFFFFFFFF
	footerSize     = frameHeaderSize + 16
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one spooled event as the Reader returns it.
type Record struct {
	Seq      uint64
	Time     time.Time // when it was appended
	Kind     uint8
	Priority Priority
	// Payload is only valid until the Reader's next call; copy it to keep it.
	Payload []byte
}

// appendRecord encodes a record onto dst.
func appendRecord(dst []byte, seq uint64, t int64, prio Priority, kind uint8, payload []byte) []byte {
	bodyLen := bodyHeaderSize + len(payload)
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(bodyLen))
	dst = binary.LittleEndian.AppendUint32(dst, 0) // checksum, filled below
	body := len(dst)
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(t))
	dst = append(dst, byte(prio), kind)
	dst = append(dst, payload...)
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[body:], castagnoli))
	return dst
}

// errTorn marks the end of the valid records of a segment: a short, oversized or corrupt record.
var errTorn = errors.New("torn or corrupt record")

// recordReader reads records sequentially from a segment.
type recordReader struct {
	r       io.Reader
	maxBody int
	buf     []byte
	off     int64  // file offset of the next record
	prevSeq uint64 // sequence number of the previous record (0 = none)
	count   int64  // records read
	sealed  bool   // the footer was read
	midway  bool   // started inside the segment: the footer's totals cannot be checked
}

func appendFooter(dst []byte, last uint64, count int64) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, sealMarker)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, last)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(count))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[start+8:], castagnoli))
	return dst
}

// next reads one record. It returns io.EOF at a clean end and an error wrapping errTorn when the
// bytes at off are not a valid record (the caller decides whether that is a torn tail or damage).
// The returned record's payload aliases an internal buffer.
func (rr *recordReader) next() (Record, int64, error) {
	var hdr [frameHeaderSize]byte
	n, err := io.ReadFull(rr.r, hdr[:])
	if err == io.EOF {
		return Record{}, 0, io.EOF
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("%w: short header (%d bytes) at offset %d", errTorn, n, rr.off)
	}
	bodyLen := int(binary.LittleEndian.Uint32(hdr[0:]))
	sum := binary.LittleEndian.Uint32(hdr[4:])
	if uint32(bodyLen) == sealMarker {
		var f [16]byte
		if n, err := io.ReadFull(rr.r, f[:]); err != nil {
			return Record{}, 0, fmt.Errorf("%w: short footer (%d bytes) at offset %d", errTorn, n, rr.off)
		}
		last, count := binary.LittleEndian.Uint64(f[0:]), int64(binary.LittleEndian.Uint64(f[8:]))
		if crc32.Checksum(f[:], castagnoli) != sum || !rr.midway && (last != rr.prevSeq || count != rr.count) {
			return Record{}, 0, fmt.Errorf("%w: bad footer at offset %d", errTorn, rr.off)
		}
		rr.off += footerSize
		rr.sealed = true
		return Record{}, 0, io.EOF
	}
	if bodyLen < bodyHeaderSize || bodyLen > rr.maxBody {
		return Record{}, 0, fmt.Errorf("%w: body length %d at offset %d", errTorn, bodyLen, rr.off)
	}
	if cap(rr.buf) < bodyLen {
		rr.buf = make([]byte, bodyLen)
	}
	body := rr.buf[:bodyLen]
	if n, err := io.ReadFull(rr.r, body); err != nil {
		return Record{}, 0, fmt.Errorf("%w: short body (%d of %d bytes) at offset %d", errTorn, n, bodyLen, rr.off)
	}
	if crc32.Checksum(body, castagnoli) != sum {
		return Record{}, 0, fmt.Errorf("%w: checksum mismatch at offset %d", errTorn, rr.off)
	}
	rec := Record{
		Seq:      binary.LittleEndian.Uint64(body[0:]),
		Time:     time.Unix(0, int64(binary.LittleEndian.Uint64(body[8:]))),
		Priority: Priority(body[16]),
		Kind:     body[17],
		Payload:  body[bodyHeaderSize:],
	}
	if rec.Seq == 0 || rec.Seq <= rr.prevSeq {
		return Record{}, 0, fmt.Errorf("%w: sequence %d after %d at offset %d", errTorn, rec.Seq, rr.prevSeq, rr.off)
	}
	size := int64(frameHeaderSize + bodyLen)
	rr.off += size
	rr.prevSeq = rec.Seq
	rr.count++
	return rec, size, nil
}
