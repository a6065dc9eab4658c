package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WatchOptions configure a Watcher. The zero value works (with no cgroup root: cgroup selectors stay
// pending).
type WatchOptions struct {
	// CgroupRoot is the cgroup2 mount (see CgroupRoot).
	CgroupRoot string
	// Debounce is the quiet time after the last relevant change before re-resolving (default 1ms):
	// an upgrade that renames many files costs one resolution, not one per file.
	Debounce time.Duration
	// MaxDelay bounds how long a stream of changes can postpone re-resolving (default 20ms).
	MaxDelay time.Duration
	// Rescan re-resolves everything at this interval as a safety net for changes inotify cannot see
	// (files in other mount namespaces, a full inotify queue already triggers a rescan). Default 1
	// minute; negative disables it.
	Rescan time.Duration
	// Logger receives watch problems and changed warnings; nil discards them.
	Logger *slog.Logger
}

// Watcher keeps a policy's resolution current. It watches, with inotify, exactly the directory
// entries the resolution depends on: each directory on the way to an executable or key file and
// through every symlink, every directory a glob lists, and the cgroup directories a selector names or
// searches. When one changes — a key file matching a glob appears or is replaced by a new inode, an
// executable is replaced by a package upgrade, a unit's cgroup is created or re-created with a new id
// — the watcher re-resolves and, if the result differs, calls back.
//
// Use: w, err := NewWatcher(p, opts); apply w.Resolved(); go w.Run(ctx, apply).
type Watcher struct {
	p    *Policy
	opts WatchOptions
	log  *slog.Logger

	fd      int      // inotify instance, nonblocking; never passed through f.Fd() (that would make it blocking)
	f       *os.File // the same fd, for reads through the runtime poller
	watches map[int32]*dirWatch
	cur     atomic.Pointer[Resolved]
	warned  []string
	closed  bool
}

type dirWatch struct {
	dirs  []string
	all   bool            // any entry of the directory matters (listed by a glob or cgroup search)
	names map[string]bool // else only these entries
}

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// NewWatcher resolves p, sets up the watches the result depends on, and returns the watcher. Watches
// are in place before the first resolution is read, so no change after NewWatcher returns is missed.
func NewWatcher(p *Policy, opts WatchOptions) (*Watcher, error) {
	if opts.Debounce <= 0 {
		opts.Debounce = time.Millisecond
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = 20 * time.Millisecond
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = opts.Debounce
	}
	if opts.Rescan == 0 {
		opts.Rescan = time.Minute
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("policy watcher: inotify_init1: %w (raise fs.inotify.max_user_instances if it is EMFILE)", err)
	}
	w := &Watcher{p: p, opts: opts, log: log, fd: fd, f: os.NewFile(uintptr(fd), "inotify"), watches: map[int32]*dirWatch{}}
	w.cur.Store(w.resolve())
	w.logWarnings(w.cur.Load())
	return w, nil
}

// Resolved returns the current resolution (the last one passed to Run's callback, or the first). It
// may be called from any goroutine; the result must not be modified.
func (w *Watcher) Resolved() *Resolved { return w.cur.Load() }

// Close releases the inotify instance. Run calls it on return.
func (w *Watcher) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.f.Close()
}

type rawEvent struct {
	wd   int32
	mask uint32
	name string
}

// Run watches until ctx is done, calling fn (from Run's goroutine) with each resolution that differs
// from the previous one. fn should return quickly: changes that arrive meanwhile wait. Run returns nil
// when ctx is cancelled and an error if inotify fails.
func (w *Watcher) Run(ctx context.Context, fn func(*Resolved)) error {
	defer w.Close()
	done := make(chan struct{})
	defer close(done)
	evc := make(chan []rawEvent, 16)
	errc := make(chan error, 1)
	go w.read(evc, errc, done)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var tick <-chan time.Time
	if w.opts.Rescan > 0 {
		t := time.NewTicker(w.opts.Rescan)
		defer t.Stop()
		tick = t.C
	}
	armed := false
	var first time.Time
	update := func() {
		res := w.resolve()
		w.logWarnings(res)
		if !res.Equal(w.cur.Load()) {
			w.cur.Store(res)
			fn(res)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("policy watcher: read inotify events: %w", err)
		case evs := <-evc:
			if !slices.ContainsFunc(evs, w.relevant) {
				continue
			}
			now := time.Now()
			if !armed {
				armed, first = true, now
				timer.Reset(w.opts.Debounce)
			} else if left := first.Add(w.opts.MaxDelay).Sub(now); left > 0 {
				timer.Reset(min(w.opts.Debounce, left))
			}
		case <-timer.C:
			armed = false
			update()
		case <-tick:
			update()
		}
	}
}

func (w *Watcher) read(evc chan<- []rawEvent, errc chan<- error, done <-chan struct{}) {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			errc <- err
			return
		}
		var evs []rawEvent
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := ""
			if ev.Len > 0 && off+unix.SizeofInotifyEvent+int(ev.Len) <= n {
				b := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				if i := slices.Index(b, 0); i >= 0 {
					b = b[:i]
				}
				name = string(b)
			}
			evs = append(evs, rawEvent{wd: ev.Wd, mask: ev.Mask, name: name})
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		select {
		case evc <- evs:
		case <-done:
			return
		}
	}
}

// relevant says whether an event can change the resolution.
func (w *Watcher) relevant(ev rawEvent) bool {
	if ev.mask&unix.IN_Q_OVERFLOW != 0 {
		w.log.Warn("policy watcher: inotify queue overflowed; re-resolving everything")
		return true
	}
	dw, ok := w.watches[ev.wd]
	if !ok {
		return false // a watch removed by us; its IN_IGNORED is expected
	}
	if ev.mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0 {
		if ev.mask&unix.IN_IGNORED != 0 {
			delete(w.watches, ev.wd)
		}
		return true
	}
	if ev.name == "" {
		return false // attribute change of the directory itself
	}
	return dw.all || dw.names[ev.name]
}

// resolve resolves the policy while recording what it depends on, then makes the watches match. If a
// directory was newly watched, something may have changed between reading it and watching it, so it
// resolves again (a few rounds at most; a directory that keeps appearing and vanishing is left to
// the next event or rescan).
func (w *Watcher) resolve() *Resolved {
	var res *Resolved
	for round := 0; round < 4; round++ {
		want := map[string]*dirWatch{}
		get := func(dir string) *dirWatch {
			d := want[dir]
			if d == nil {
				d = &dirWatch{dirs: []string{dir}, names: map[string]bool{}}
				want[dir] = d
			}
			return d
		}
		wk := &walker{
			lookup: func(dir, name string) { get(dir).names[name] = true },
			list:   func(dir string) { get(dir).all = true },
		}
		res = resolve(w.p, w.opts.CgroupRoot, wk)
		if !w.sync(want) {
			break
		}
	}
	return res
}

// sync makes the inotify watches equal to want and reports whether a directory that was not watched
// before is watched now (or could not be watched because it just vanished).
func (w *Watcher) sync(want map[string]*dirWatch) bool {
	changed := false
	next := map[int32]*dirWatch{}
	for dir, d := range want {
		wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
				changed = true // vanished between resolving and watching
				continue
			}
			w.log.Warn("policy watcher: cannot watch directory; changes in it are seen only by the periodic rescan",
				"dir", dir, "err", err, "hint", "raise fs.inotify.max_user_watches if the error is ENOSPC")
			continue
		}
		w32 := int32(wd)
		if n, ok := next[w32]; ok { // the same directory under two paths (bind mount)
			n.dirs = append(n.dirs, dir)
			n.all = n.all || d.all
			for name := range d.names {
				n.names[name] = true
			}
			continue
		}
		if _, had := w.watches[w32]; !had {
			changed = true
		}
		next[w32] = d
	}
	for wd := range w.watches {
		if _, keep := next[wd]; !keep {
			unix.InotifyRmWatch(w.fd, uint32(wd))
		}
	}
	w.watches = next
	return changed
}

func (w *Watcher) logWarnings(res *Resolved) {
	if slices.Equal(res.Warnings, w.warned) {
		return
	}
	for _, msg := range res.Warnings {
		if !slices.Contains(w.warned, msg) {
			w.log.Warn("policy: " + msg)
		}
	}
	w.warned = res.Warnings
}
