package sentinel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watcher is an inotify instance watching directories for complete files.
type watcher struct {
	f   *os.File
	fd  int
	log *slog.Logger
	mu  sync.Mutex
	wds map[int]string
	dir map[string]bool
}

const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_DELETE_SELF

func newWatcher(log *slog.Logger) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("sentinel: inotify: %w (use the rescan alone with NoInotify)", err)
	}
	return &watcher{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, log: log, wds: map[int]string{}, dir: map[string]bool{}}, nil
}

// add watches dir (once).
func (w *watcher) add(dir string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dir[dir] {
		return
	}
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		w.log.Warn("sentinel: cannot watch directory; the rescan still covers it", "dir", dir, "err", err)
		return
	}
	w.wds[wd] = dir
	w.dir[dir] = true
}

func (w *watcher) close() { w.f.Close() }

// run reads events until ctx is done: complete files go to file, new directories and queue
// overflows to rescan.
func (w *watcher) run(ctx context.Context, file func(string), rescan func()) {
	go func() { <-ctx.Done(); w.f.Close() }()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			name := string(nameBytes[:clen(nameBytes)])
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				rescan()
				continue
			}
			w.mu.Lock()
			dir, ok := w.wds[int(ev.Wd)]
			if ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF) != 0 {
				delete(w.wds, int(ev.Wd))
				delete(w.dir, dir)
			}
			w.mu.Unlock()
			if !ok || name == "" {
				continue
			}
			path := filepath.Join(dir, name)
			switch {
			case ev.Mask&unix.IN_ISDIR != 0 && ev.Mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
				w.add(path)
				rescan() // files may have landed in it before the watch
			case ev.Mask&unix.IN_ISDIR == 0 && ev.Mask&(unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO) != 0:
				file(path)
			}
		}
	}
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}
