package store

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
)

// PostgreSQL's binary COPY, encoded here rather than by the driver's CopyFrom: that one boxes the 21
// values of each row in interfaces and plans each value's encoding through its type map, which cost
// about a tenth of the collector's CPU time per event. The format: a signature, flags and header
// extension length; per row the number of fields and each field as its length and bytes (integers big
// endian, text and bytea as they are); -1 at the end.

// copyColumns are the columns copyRows writes, in the order appendCopyRow encodes them.
var copyColumns = append([]string{"id"}, insertColumnNames...)

// copySQL is the COPY statement of copyRows.
var copySQL = `COPY events (` + strings.Join(copyColumns, ", ") + `) FROM STDIN (FORMAT binary)`

var copyHeader = append([]byte("PGCOPY\n\xff\r\n\x00"), 0, 0, 0, 0, 0, 0, 0, 0)

// copyRows writes the rows with PostgreSQL's binary COPY on conn, inside the transaction open on it:
// one round trip for the batch, and the server inserts the heap rows in bulk.
func (s *Store) copyRows(ctx context.Context, conn *sql.Conn, host string, rows []row) error {
	for _, r := range rows {
		if !fitsInt16(int64(r.ix.kind)) || !fitsInt16(int64(r.ix.decision)) || !fitsInt16(int64(r.ix.severity)) {
			return fmt.Errorf("event seq %d: kind %d, decision %d or severity %d out of range for its column", r.it.ev.GetSeq(), r.ix.kind, r.ix.decision, r.ix.severity)
		}
	}
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("PostgreSQL driver connection is %T, not pgx's", dc)
		}
		cr := &copyReader{rows: rows, host: host, collector: s.collector}
		if len(rows) > 0 {
			cr.receive = rows[0].receiveNanosec // link gives every row of a batch the same
		}
		tag, err := c.Conn().PgConn().CopyFrom(ctx, cr, copySQL)
		if err == nil && tag.RowsAffected() != int64(len(rows)) {
			err = fmt.Errorf("COPY stored %d rows of %d", tag.RowsAffected(), len(rows))
		}
		return err
	})
}

func fitsInt16(v int64) bool { return v >= math.MinInt16 && v <= math.MaxInt16 }

// copyReader is the COPY data of rows, encoded a row at a time as the driver reads it.
type copyReader struct {
	rows            []row
	host, collector string
	receive         int64
	next            int    // the next row to encode
	buf             []byte // encoded, from off not yet read
	off             int
	started, ended  bool
}

func (r *copyReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if r.off == len(r.buf) && !r.fill() {
			break
		}
		c := copy(p[n:], r.buf[r.off:])
		r.off += c
		n += c
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// fill encodes what comes next into buf: the header, a row, or the end.
func (r *copyReader) fill() bool {
	r.buf, r.off = r.buf[:0], 0
	switch {
	case !r.started:
		r.started = true
		r.buf = append(r.buf, copyHeader...)
	case r.next < len(r.rows):
		r.buf = appendCopyRow(r.buf, r, &r.rows[r.next])
		r.next++
	case !r.ended:
		r.ended = true
		r.buf = binary.BigEndian.AppendUint16(r.buf, 0xffff)
	default:
		return false
	}
	return true
}

// appendCopyRow appends row r's fields (copyColumns) in COPY's binary format.
func appendCopyRow(b []byte, cr *copyReader, r *row) []byte {
	p, t := r.ix.proc, r.ix.target
	b = binary.BigEndian.AppendUint16(b, uint16(len(copyColumns)))
	b = copyInt8(b, r.id)
	b = copyText(b, cr.host)
	b = copyInt8(b, int64(r.it.ev.GetSeq()))
	b = copyInt8(b, int64(r.pos))
	b = copyInt8(b, r.ix.timeNanos)
	b = copyInt8(b, cr.receive)
	b = copyInt2(b, int16(r.ix.kind))
	b = copyInt2(b, int16(r.ix.decision))
	b = copyText(b, r.ix.rule)
	b = copyInt8(b, pid(p))
	b = copyText(b, comm(p))
	b = copyText(b, exe(p))
	b = copyInt8(b, pid(t))
	b = copyText(b, comm(t))
	b = copyText(b, exe(t))
	b = copyBytes(b, r.it.payload)
	b = copyBytes(b, r.it.digest)
	b = copyBytes(b, r.prev)
	b = copyBytes(b, r.hash)
	b = copyText(b, cr.collector)
	return copyInt2(b, int16(r.ix.severity))
}

func copyInt8(b []byte, v int64) []byte {
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

func copyInt2(b []byte, v int16) []byte {
	b = binary.BigEndian.AppendUint32(b, 2)
	return binary.BigEndian.AppendUint16(b, uint16(v))
}

func copyText(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func copyBytes(b []byte, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}
