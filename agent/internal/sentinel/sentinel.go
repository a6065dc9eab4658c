package sentinel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/scan"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
)

// Config configures a Sentinel.
type Config struct {
	// Dirs are the directories watched, with their subdirectories.
	Dirs []string
	// Detector finds key material (built with fingerprints, see detect.Options.Fingerprints).
	Detector *detect.Detector
	// KeyFingerprints maps a finding's Key to its public key's "SHA256:…" fingerprint for events.
	KeyFingerprints map[string]string
	// Submit hands an event to the export pipeline; false means it was not accepted (queue full):
	// the sentinel waits and submits it again.
	Submit func(*keyguardv1.Event) bool
	// StateFile records the files scanned, so a restart does not scan them again; "" keeps the
	// state in memory only.
	StateFile string
	// QuarantineDir, if set, receives files with findings (moved, mode 0600; created 0700). It must
	// not be under a watched directory.
	QuarantineDir string
	// Rescan is the period of the directory walk; 0 means 1 minute.
	Rescan time.Duration
	// Settle is how long a file found by the walk must be unmodified to be taken as complete;
	// 0 means 5 seconds.
	Settle time.Duration
	// MaxPending bounds the files waiting to be scanned; 0 means 1024.
	MaxPending int
	// NoInotify disables inotify (the walk alone finds files), for filesystems without it.
	NoInotify bool
	// MaxEventsPerFile bounds the events of one file; 0 means 64 (the count of all is in each).
	MaxEventsPerFile int
	Log              *slog.Logger
}

// Stats counts what a Sentinel did.
type Stats struct {
	Scanned     uint64 // files scanned
	Findings    uint64 // findings reported
	Quarantined uint64 // files moved to the quarantine directory
	Deferred    uint64 // files left for the next rescan because MaxPending files were waiting
	Errors      uint64 // files that could not be scanned or moved
}

// Sentinel watches directories and reports key material found in files there.
type Sentinel struct {
	cfg   Config
	log   *slog.Logger
	st    *state
	stats struct{ scanned, findings, quarantined, deferred, errors atomic.Uint64 }

	// keys is the detector and key fingerprints in use (Config's, until SetKeys replaces them).
	keys atomic.Pointer[keySet]

	mu      sync.Mutex
	pending []string
	queued  map[string]bool
	wake    chan struct{}
}

// New checks cfg and loads the state file.
func New(cfg Config) (*Sentinel, error) {
	if len(cfg.Dirs) == 0 || cfg.Detector == nil || cfg.Submit == nil {
		return nil, errors.New("sentinel: give at least one directory to watch, a detector and an event sink")
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = time.Minute
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 5 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1024
	}
	if cfg.MaxEventsPerFile <= 0 {
		cfg.MaxEventsPerFile = 64
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	for i, d := range cfg.Dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		cfg.Dirs[i] = abs
		if q := cfg.QuarantineDir; q != "" {
			if qa, _ := filepath.Abs(q); qa == abs || strings.HasPrefix(qa, abs+string(filepath.Separator)) {
				return nil, fmt.Errorf("sentinel: quarantine directory %s is inside the watched directory %s: choose one outside it", q, d)
			}
		}
	}
	if cfg.QuarantineDir != "" {
		if err := os.MkdirAll(cfg.QuarantineDir, 0o700); err != nil {
			return nil, fmt.Errorf("sentinel: create quarantine directory: %w", err)
		}
	}
	st, err := loadState(cfg.StateFile)
	if err != nil {
		return nil, err
	}
	s := &Sentinel{cfg: cfg, log: cfg.Log, st: st, queued: map[string]bool{}, wake: make(chan struct{}, 1)}
	s.keys.Store(&keySet{det: cfg.Detector, fps: cfg.KeyFingerprints})
	return s, nil
}

type keySet struct {
	det *detect.Detector
	fps map[string]string
}

// SetKeys replaces the detector and key fingerprints (a newer fingerprint file fetched from the
// collector, say) for every file scanned from now on; a scan under way finishes with the old ones.
func (s *Sentinel) SetKeys(det *detect.Detector, keyFingerprints map[string]string) {
	s.keys.Store(&keySet{det: det, fps: keyFingerprints})
}

// Stats returns the counters.
func (s *Sentinel) Stats() Stats {
	return Stats{Scanned: s.stats.scanned.Load(), Findings: s.stats.findings.Load(), Quarantined: s.stats.quarantined.Load(),
		Deferred: s.stats.deferred.Load(), Errors: s.stats.errors.Load()}
}

// Run watches until ctx is done. It walks the directories at once (what arrived while the agent
// was down), then on inotify events and every Rescan.
func (s *Sentinel) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rescan := make(chan struct{}, 1)
	var w *watcher
	if !s.cfg.NoInotify {
		var err error
		if w, err = newWatcher(s.log); err != nil {
			return err
		}
		defer w.close()
		go w.run(ctx, s.enqueue, func() { trigger(rescan) })
	}
	done := make(chan struct{})
	go func() { defer close(done); s.worker(ctx) }()
	t := time.NewTicker(s.cfg.Rescan)
	defer t.Stop()
	for {
		s.walk(ctx, w)
		select {
		case <-ctx.Done():
			cancel()
			<-done
			return nil
		case <-t.C:
		case <-rescan:
		}
	}
}

func trigger(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// skipName reports temporary names writers rename when done.
func skipName(name string) bool {
	return strings.HasPrefix(name, ".#") || strings.HasSuffix(name, ".tmp") || strings.HasSuffix(name, ".part") || strings.HasPrefix(name, ".sentinel-state-")
}

// enqueue adds a complete file to the queue, unless MaxPending files already wait (then the next
// rescan finds it again).
func (s *Sentinel) enqueue(path string) {
	if skipName(filepath.Base(path)) || path == s.cfg.StateFile {
		return
	}
	s.mu.Lock()
	switch {
	case s.queued[path]:
	case len(s.pending) >= s.cfg.MaxPending:
		s.stats.deferred.Add(1)
	default:
		s.queued[path] = true
		s.pending = append(s.pending, path)
	}
	s.mu.Unlock()
	trigger(s.wake)
}

// walk visits every file under the watched directories, adds inotify watches for directories, and
// queues files not yet scanned that have settled.
func (s *Sentinel) walk(ctx context.Context, w *watcher) {
	now := time.Now()
	for _, root := range s.cfg.Dirs {
		filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				s.log.Warn("sentinel: cannot read", "path", path, "err", err)
				return nil
			}
			if de.IsDir() {
				if w != nil {
					w.add(path)
				}
				return nil
			}
			if !de.Type().IsRegular() || skipName(de.Name()) || path == s.cfg.StateFile {
				return nil
			}
			fi, err := de.Info()
			if err != nil {
				return nil
			}
			id := idOf(fi)
			s.mu.Lock()
			r := s.st.Files[id.key()]
			if r != nil {
				r.Seen = now
			}
			s.mu.Unlock()
			if r == nil && now.Sub(fi.ModTime()) >= s.cfg.Settle {
				s.enqueue(path)
			}
			return nil
		})
	}
}

func idOf(fi fs.FileInfo) fileID {
	id := fileID{Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.Dev, id.Ino = uint64(st.Dev), st.Ino
	}
	return id
}

// worker scans queued files one at a time.
func (s *Sentinel) worker(ctx context.Context) {
	for {
		s.mu.Lock()
		var path string
		if len(s.pending) > 0 {
			path = s.pending[0]
			s.pending = s.pending[1:]
		}
		s.mu.Unlock()
		if path == "" {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		err := s.scanFile(ctx, path)
		s.mu.Lock()
		delete(s.queued, path)
		s.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			s.stats.errors.Add(1)
			s.log.Warn("sentinel: scan failed; the next rescan tries again", "path", path, "err", err)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// scanFile scans one file, quarantines it if it holds key material, reports the findings and
// records the file as done.
func (s *Sentinel) scanFile(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ELOOP) {
		return nil // gone (renamed away, deleted), or a symbolic link: nothing to scan
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	id := idOf(fi)
	s.mu.Lock()
	done := s.st.Files[id.key()] != nil
	s.mu.Unlock()
	if done {
		return nil
	}
	findings, comp, err := s.detect(ctx, f)
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	s.stats.scanned.Add(1)
	rec := &record{Path: path, Scanned: time.Now(), Seen: time.Now(), Findings: len(findings)}
	if len(findings) > 0 {
		if s.cfg.QuarantineDir != "" {
			dst, err := s.quarantine(path, f)
			if err != nil {
				s.stats.errors.Add(1)
				s.log.Error("sentinel: quarantine failed; the file stays in place", "path", path, "err", err)
			} else {
				rec.Quarantine = dst
				s.stats.quarantined.Add(1)
			}
		}
		if err := s.report(ctx, path, comp, fi, rec.Quarantine, findings); err != nil {
			return err
		}
	}
	s.log.Info("sentinel: scanned", "path", path, "bytes", fi.Size(), "findings", len(findings), "quarantine", rec.Quarantine)
	s.mu.Lock()
	s.st.Files[id.key()] = rec
	err = s.st.save()
	s.mu.Unlock()
	return err
}

// detect runs the detector over f (decompressed if it is zstd, lz4, xz or gzip).
func (s *Sentinel) detect(ctx context.Context, f *os.File) ([]detect.Finding, string, error) {
	r, comp, closeFn, err := scan.Decompress(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		return nil, "", err
	}
	defer closeFn()
	var out []detect.Finding
	err = s.keys.Load().det.Scan(ctx, r, func(fd detect.Finding) error {
		out = append(out, fd)
		return nil
	})
	if err != nil && comp != "" && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%s stream: %w", comp, err)
	}
	return out, comp, err
}

// quarantine moves path into the quarantine directory (copying across filesystems) and makes it
// readable by root only.
func (s *Sentinel) quarantine(path string, f *os.File) (string, error) {
	dst := filepath.Join(s.cfg.QuarantineDir, fmt.Sprintf("%d-%s", time.Now().UnixNano(), filepath.Base(path)))
	if err := f.Chmod(0o600); err != nil {
		return "", err
	}
	err := os.Rename(path, dst)
	if errors.Is(err, unix.EXDEV) {
		if err = copyFile(f, dst); err == nil {
			err = os.Remove(path)
		}
	}
	if err != nil {
		return "", err
	}
	return dst, nil
}

func copyFile(f *os.File, dst string) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(f, 0, 1<<62))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// report submits one event per finding (at most MaxEventsPerFile), waiting while the sink refuses.
func (s *Sentinel) report(ctx context.Context, path, comp string, fi fs.FileInfo, quarantine string, findings []detect.Finding) error {
	for i, fd := range findings {
		if i == s.cfg.MaxEventsPerFile {
			break
		}
		ev := &keyguardv1.Event{Time: timestamppb.Now(), Kind: &keyguardv1.Event_KeyMaterialFound{KeyMaterialFound: &keyguardv1.KeyMaterialFound{
			Path: path, Compression: comp, Offset: uint64(fd.Offset), Length: uint32(fd.Length), Encoding: fd.Kind,
			Key: fd.Key, KeyFingerprint: s.keys.Load().fps[fd.Key], FileSize: uint64(fi.Size()),
			FileMtime: timestamppb.New(fi.ModTime()), QuarantinePath: quarantine, FileFindings: uint32(len(findings)),
		}}}
		for delay := 10 * time.Millisecond; !s.cfg.Submit(ev); delay = min(2*delay, time.Second) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(delay):
			}
		}
		s.stats.findings.Add(1)
	}
	return nil
}
