package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// LogVersion is the version of the local event log's format. Version 2: the first line is the header
// {"keyguard_event_log":2}; every other line is one keyguard.v1.Event in protojson with proto field
// names (the same JSON as `keyguard events -json` prints for an event). Version 1 (before the header
// existed) was a hand-made JSON shape.
const LogVersion = 2

// logHeader is the first line of a version-2 log. It is not an Event (protojson rejects the key).
var logHeader = []byte(fmt.Sprintf("{\"keyguard_event_log\":%d}\n", LogVersion))

var logJSON = protojson.MarshalOptions{UseProtoNames: true}

// JSONLines writes events as one protojson keyguard.v1.Event per line, after a header line that names
// the format (LogVersion). It is the agent's local record, written whether or not a collector is
// configured. Writes are buffered and flushed at least every FlushEvery and on Close; an fsync follows
// each flush when the output is a file.
type JSONLines struct {
	mu   sync.Mutex
	w    *bufio.Writer
	f    *os.File
	err  error
	stop chan struct{}
	done chan struct{}
}

// OpenJSONLines appends to path ("-" is standard output).
func OpenJSONLines(path string, flushEvery time.Duration) (*JSONLines, error) {
	var out io.Writer = os.Stdout
	var f *os.File
	if path != "-" {
		var err error
		f, err = openLog(path)
		if err != nil {
			return nil, err
		}
		out = f
	}
	j := &JSONLines{w: bufio.NewWriterSize(out, 64<<10), f: f, stop: make(chan struct{}), done: make(chan struct{})}
	if f == nil {
		_, _ = j.w.Write(logHeader)
	}
	if flushEvery <= 0 {
		flushEvery = 200 * time.Millisecond
	}
	go func() {
		defer close(j.done)
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				j.Flush()
			case <-j.stop:
				return
			}
		}
	}()
	return j, nil
}

// openLog opens path for appending. A new or empty file gets the header; a file in another format (a
// version-1 log of an older agent) is moved aside to path.v1-UNIXTIME first, so no file mixes formats.
func openLog(path string) (*os.File, error) {
	if first, err := firstLine(path); err == nil && len(first) > 0 && !bytes.Equal(first, logHeader) {
		aside := fmt.Sprintf("%s.v1-%d", path, time.Now().Unix())
		if err := os.Rename(path, aside); err != nil {
			return nil, fmt.Errorf("move the old-format event log aside: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open event log: %w", err)
	}
	if st, err := f.Stat(); err == nil && st.Size() == 0 {
		if _, err := f.Write(logHeader); err != nil {
			f.Close()
			return nil, fmt.Errorf("write event log header: %w", err)
		}
	}
	return f, nil
}

// firstLine returns a file's first line with its newline (at most 4 KiB of it).
func firstLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := bufio.NewReaderSize(f, 4096).ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	return b, nil
}

// ReadLog reads an event log written by JSONLines and calls fn for every event, in order. It fails on
// a log without the version-2 header and on a line that is not an event.
func ReadLog(r io.Reader, fn func(*keyguardv1.Event) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	first, err := br.ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read event log: %w", err)
	}
	var h struct {
		Version int `json:"keyguard_event_log"`
	}
	if len(first) == 0 {
		return nil
	}
	if json.Unmarshal(first, &h) != nil || h.Version != LogVersion {
		return fmt.Errorf("not a version-%d keyguard event log (first line %.60q)", LogVersion, first)
	}
	for n := 2; ; n++ {
		line, err := br.ReadBytes('\n')
		// A second header can follow when two writers (agent and dump handler) created the file at once.
		if len(bytes.TrimSpace(line)) > 0 && !bytes.Equal(line, logHeader) {
			ev := &keyguardv1.Event{}
			if uerr := protojson.Unmarshal(line, ev); uerr != nil {
				return fmt.Errorf("event log line %d: %w", n, uerr)
			}
			if ferr := fn(ev); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read event log: %w", err)
		}
	}
}

// Write appends one event.
func (j *JSONLines) Write(ev *keyguardv1.Event) error {
	raw, err := logJSON.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	// protojson varies its whitespace on purpose; the log is compact so that lines can be grepped.
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	b := buf.Bytes()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return j.err
	}
	b = append(b, '\n')
	if _, err := j.w.Write(b); err != nil {
		j.err = fmt.Errorf("write event log: %w", err)
	}
	return j.err
}

// Flush writes buffered events out (and fsyncs a file).
func (j *JSONLines) Flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.w.Buffered() == 0 {
		return j.err
	}
	if err := j.w.Flush(); err != nil && j.err == nil {
		j.err = fmt.Errorf("write event log: %w", err)
	}
	if j.f != nil {
		if err := j.f.Sync(); err != nil && j.err == nil {
			j.err = fmt.Errorf("sync event log: %w", err)
		}
	}
	return j.err
}

// Close flushes and closes the output.
func (j *JSONLines) Close() error {
	close(j.stop)
	<-j.done
	err := j.Flush()
	if j.f != nil {
		if cerr := j.f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
