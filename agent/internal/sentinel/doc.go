// Package sentinel is keyguard-agent's sentinel mode, for debug and analysis hosts (and for a signing
// host's own dump stores): it watches directories where core dumps and their copies land
// (/var/lib/systemd/coredump, /var/crash, apport, kdump, any path including network mounts), scans
// each file once it is complete with the key detector (fingerprints, formats, optionally public-key
// searches), decompressing zstd, lz4, xz and gzip, and reports every finding as a
// keyguard.v1.KeyMaterialFound event (file, offset, encoding, which key) through the agent's
// export pipeline. Optionally it moves a file with findings into a quarantine directory.
//
// Discovery: inotify on every watched directory and its subdirectories (IN_CLOSE_WRITE and
// IN_MOVED_TO mark a file complete at once; systemd-coredump and apport write a temporary file and
// rename it), plus a periodic rescan that walks the directories. The rescan finds what inotify
// cannot see (files written on another host of a network mount, events lost in an inotify queue
// overflow, files that arrived while the agent was down); it takes a file as complete once it has
// not been modified for Config.Settle. Temporary names (".#…", "*.tmp", "*.part") are skipped.
//
// Once: a file is identified by device, inode, size and modification time. The state file records
// every file scanned; after a restart only new or changed files are scanned. A file is recorded
// only after its findings were accepted by the event sink and it was quarantined, so a crash in
// between scans it again rather than losing a finding.
//
// Bounded memory and backpressure: one file is scanned at a time (the detector's window, about
// 4 MiB, plus the decompressor's: zstd frames up to a 256 MiB window are accepted as in `keyguard
// scan`); at most Config.MaxPending files wait, and files arriving beyond that are left for the
// next rescan (counted in Stats.Deferred). When the sink refuses an event (the export queue is
// full) the scanner waits and retries: scanning slows down to the export's pace.
//
// Keys: Sentinel.SetKeys swaps in a new detector (keyguard-agent sentinel -reload does when the
// fingerprint file is replaced, e.g. by keyguard fetch-fingerprints -every); files scanned from
// then on use it, files already scanned are not scanned again.
//
// Not done: refusing reads of a quarantined file in the kernel (the file is moved instead, to a
// directory only root can read); files removed or rewritten while being scanned are scanned again
// at the next rescan if their identity changed.
package sentinel
