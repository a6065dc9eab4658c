package events

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// JSONLines writes events as one JSON object per line. It is the agent's local record, written
// whether or not a collector is configured. Writes are buffered and flushed at least every FlushEvery
// and on Close; an fsync follows each flush when the output is a file.
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
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open event log: %w", err)
		}
		out = f
	}
	j := &JSONLines{w: bufio.NewWriterSize(out, 64<<10), f: f, stop: make(chan struct{}), done: make(chan struct{})}
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

// Write appends one event.
func (j *JSONLines) Write(ev Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
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
