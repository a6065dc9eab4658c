package sentinel

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// fileID identifies one version of a file: a changed file (size or mtime) is a new version.
type fileID struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
}

func (id fileID) key() string { return fmt.Sprintf("%d:%d:%d:%d", id.Dev, id.Ino, id.Size, id.MTime) }

// record is one scanned file in the state file.
type record struct {
	Path       string    `json:"path"`
	Scanned    time.Time `json:"scanned"`
	Findings   int       `json:"findings"`
	Quarantine string    `json:"quarantine,omitempty"`
	Seen       time.Time `json:"seen"` // last rescan that saw the file (for pruning)
}

// state is the set of scanned files, persisted as JSON.
type state struct {
	path  string
	Files map[string]*record `json:"files"`
}

// maxRecords bounds the state file; the records seen longest ago are pruned first.
const maxRecords = 100000

func loadState(path string) (*state, error) {
	st := &state{path: path, Files: map[string]*record{}}
	if path == "" {
		return st, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sentinel: read state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("sentinel: state file %s is corrupt (%w): remove it to rescan everything", path, err)
	}
	if st.Files == nil {
		st.Files = map[string]*record{}
	}
	return st, nil
}

// save writes the state atomically (temporary file, fsync, rename).
func (st *state) save() error {
	if st.path == "" {
		return nil
	}
	if len(st.Files) > maxRecords {
		st.prune(time.Now().Add(-24 * time.Hour))
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(st.path), ".sentinel-state-*")
	if err != nil {
		return fmt.Errorf("sentinel: write state: %w", err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), st.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("sentinel: write state %s: %w", st.path, err)
	}
	return nil
}

// prune drops records of files not seen since before.
func (st *state) prune(before time.Time) {
	for k, r := range st.Files {
		if r.Seen.Before(before) {
			delete(st.Files, k)
		}
	}
}
