package loader

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	kgbpf "github.com/keyguard/keyguard/bpf"

	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/agent/internal/procfs"
)

func attachLSM(p *ebpf.Program) (link.Link, error) {
	return link.AttachLSM(link.LSMOptions{Program: p})
}

// attach attaches an LSM program to its hook, or a tracing program (tp_btf, fentry) to its target.
func attach(p *ebpf.Program) (link.Link, error) {
	if p.Type() == ebpf.LSM {
		return attachLSM(p)
	}
	return link.AttachTracing(link.TracingOptions{Program: p})
}

// Names of the generated BPF types the agent works with.
type (
	FileID      = kgbpf.KeyguardKgFileId
	Rule        = kgbpf.KeyguardKgRule
	Mark        = kgbpf.KeyguardKgMark
	AccessorKey = kgbpf.KeyguardKgAccessorKey
	Event       = kgbpf.KeyguardKgEvent
	Proc        = kgbpf.KeyguardKgProc
	Settings    = kgbpf.KeyguardKgSettings
	Install     = kgbpf.KeyguardKgInstall
	DigestKey   = kgbpf.KeyguardKgDigestKey
	ExeCheck    = kgbpf.KeyguardKgExeCheck
)

// DigestAgent is the digests map's id for keyguard's own trusted executables.
const DigestAgent = uint32(0xfffffff5) // KG_DIGEST_AGENT

// StrictDigests is the digests map content for a strict rule: its switch (the all-zero digest) and
// each approved SHA-256.
func StrictDigests(rule uint32, sums [][32]byte) map[DigestKey]uint8 {
	out := map[DigestKey]uint8{{RuleId: rule}: 1}
	for _, s := range sums {
		out[DigestKey{RuleId: rule, Sha256: s}] = 1
	}
	return out
}

// AnyUID in an AccessorKey matches every uid.
const AnyUID = ^uint32(0)

// RuleSet is the desired content of the rule maps, derived from the policy.
type RuleSet struct {
	Rules   map[uint32]Rule
	Exes    map[FileID]uint32
	Keys    map[FileID]uint32
	Cgroups map[uint64]uint32
	Allow   map[AccessorKey]bool
	// Openers may open a rule's key files besides its own processes (policy `openers`).
	Openers map[AccessorKey]bool
	// RawDevs are block devices (kernel dev_t) holding a key file's filesystem → rule id.
	RawDevs map[uint32]uint32
	// Digests are the strict rules' approved executable digests, with each strict rule's switch (an
	// all-zero digest): see StrictDigests.
	Digests map[DigestKey]uint8
	// Settings are the host-wide side-door settings.
	Settings Settings
}

// Apply makes the rule maps equal to rs: adds and updates entries, then deletes the rest. Entries are
// added before stale ones are deleted, so a rule that stays never has a gap.
//
// Executables and key files of a rule that stays are never deleted here: a file that no longer matches
// its path (root renamed its folder, or moved it away) is still the same inode and stays guarded. The
// kernel forgets an inode itself when it is freed with no links left (inode_free_security).
func (g *Guard) Apply(rs RuleSet) error {
	keep := func(_ FileID, rule uint32) bool {
		_, ok := rs.Rules[rule]
		return ok || rule == policy.RawDiskRule
	}
	// The fast path's filter first: an entry whose slot is not set yet would be skipped.
	if err := g.allowFast(rs); err != nil {
		return err
	}
	return errors.Join(
		syncMap(g.Maps.Rules, rs.Rules),
		syncMapKeep(g.Maps.ExeRules, rs.Exes, keep),
		syncMapKeep(g.Maps.KeyRules, rs.Keys, keep),
		syncMap(g.Maps.CgroupRules, rs.Cgroups),
		syncMap(g.Maps.Allow, boolToU8(rs.Allow)),
		syncMap(g.Maps.Openers, boolToU8(rs.Openers)),
		syncMap(g.Maps.RawDevs, rs.RawDevs),
		syncMapKeep(g.Maps.Digests, rs.Digests, func(k DigestKey, _ uint8) bool { return k.RuleId == DigestAgent }),
		g.Maps.Settings.Put(uint32(0), rs.Settings),
	)
}

// Installed returns what was approved at install time; ok is false on a fresh install (no operator key
// recorded yet).
func (g *Guard) Installed() (in Install, ok bool, err error) {
	if err := g.Maps.Install.Lookup(uint32(0), &in); err != nil {
		return in, false, fmt.Errorf("read the install record: %w", err)
	}
	return in, in.OperatorKey != [32]uint8{}, nil
}

// SetInstalled records the operator key and the approved configuration digest.
func (g *Guard) SetInstalled(in Install) error {
	if err := g.Maps.Install.Put(uint32(0), in); err != nil {
		return fmt.Errorf("write the install record: %w", err)
	}
	return nil
}

// UseToken records a token's nonce as used. It fails if the nonce was used before.
func (g *Guard) UseToken(nonce string, expires time.Time) error {
	k := kgbpf.KeyguardKgTokenId{NonceSha256: sha256.Sum256([]byte(nonce))}
	if err := g.Maps.UsedTokens.Update(k, uint64(expires.Unix()), ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return errors.New("this token was already used; ask for a new one")
		}
		return fmt.Errorf("record the token as used: %w", err)
	}
	return nil
}

func boolToU8(m map[AccessorKey]bool) map[AccessorKey]uint8 {
	out := make(map[AccessorKey]uint8, len(m))
	for k, v := range m {
		if v {
			out[k] = 1
		}
	}
	return out
}

func syncMap[K comparable, V any](m *ebpf.Map, want map[K]V) error {
	return syncMapKeep(m, want, func(K, V) bool { return false })
}

// syncMapKeep is syncMap that leaves stale entries for which keep is true.
func syncMapKeep[K comparable, V any](m *ebpf.Map, want map[K]V, keep func(K, V) bool) error {
	for k, v := range want {
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update BPF map %s: %w", m.String(), err)
		}
	}
	var stale []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok && !keep(k, v) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate BPF map %s: %w", m.String(), err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from BPF map %s: %w", m.String(), err)
		}
	}
	return nil
}

// RegisterAgent tells the programs which process is the agent: it may read protected processes' /proc
// entries (to name executables in events). The agent is identified by tgid and executable together.
func (g *Guard) RegisterAgent(pid int, pinPath string) error {
	exe, err := StatFileID(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("identify the agent's executable: %w", err)
	}
	fs, err := StatFileID(pinPath)
	if err != nil {
		return err
	}
	a := kgbpf.KeyguardKgAgent{Tgid: uint32(pid), ExeDev: exe.Dev, ExeIno: exe.Ino, BpffsDev: fs.Dev}
	return g.Maps.Agent.Update(uint32(0), a, ebpf.UpdateAny)
}

type ownKey = kgbpf.KeyguardKgOwnKey

// RegisterOwn lists keyguard's own maps, programs, links, bpffs folders and trusted executables
// (this agent's, plus any given) for the programs that refuse everyone else access to them.
func (g *Guard) RegisterOwn(pinPath string, exes ...FileID) error {
	want := map[ownKey]uint8{}
	add := func(kind kgbpf.KeyguardKgOwnKind, dev uint32, id uint64) {
		want[ownKey{Kind: uint32(kind), Dev: dev, Id: id}] = 1
	}
	for _, m := range g.mapList() {
		info, err := m.Info()
		if err != nil {
			return fmt.Errorf("map info: %w", err)
		}
		if id, ok := info.ID(); ok {
			add(kgbpf.KeyguardKgOwnKindKG_OWN_MAP, 0, uint64(id))
		}
	}
	for _, l := range g.links {
		info, err := l.Info()
		if err != nil {
			return fmt.Errorf("link info: %w", err)
		}
		add(kgbpf.KeyguardKgOwnKindKG_OWN_LINK, 0, uint64(info.ID))
		add(kgbpf.KeyguardKgOwnKindKG_OWN_PROG, 0, uint64(info.Program))
	}
	for _, d := range []string{pinPath, filepath.Join(pinPath, "links"), filepath.Join(pinPath, "links", g.Build)} {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		add(kgbpf.KeyguardKgOwnKindKG_OWN_DIR, 0, st.Ino)
	}
	self, err := StatFileID("/proc/self/exe")
	if err != nil {
		return err
	}
	trusted := map[FileID]bool{}
	for _, e := range append(exes, self) {
		add(kgbpf.KeyguardKgOwnKindKG_OWN_EXE, uint32(e.Dev), e.Ino)
		trusted[e] = true
	}
	if err := setFast(g.Maps.Fastpath, fileSlots(trusted)); err != nil {
		return err
	}
	if err := g.trustSelfDigest(); err != nil {
		return err
	}
	return syncMap(g.Maps.Own, want)
}

// trustSelfDigest records this agent's executable digest as keyguard's (the only agent digest: older
// ones go) and marks this process as having matched it, since it may have started before the programs
// hashed executables at exec. Without the digest variant there is nothing to record.
func (g *Guard) trustSelfDigest() error {
	if g.Variants.Digest != DigestIMA {
		return nil
	}
	sum, err := FileSHA256("/proc/self/exe")
	if err != nil {
		return err
	}
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open self: %w", err)
	}
	defer unix.Close(fd)
	if err := g.Maps.ExeChecks.Update(uint32(fd), ExeCheck{Agent: 1, HashRet: 4}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record the agent's own digest check: %w", err)
	}
	want := map[DigestKey]uint8{{RuleId: DigestAgent}: 1, {RuleId: DigestAgent, Sha256: sum}: 1}
	return syncMapKeep(g.Maps.Digests, want, func(k DigestKey, _ uint8) bool { return k.RuleId != DigestAgent })
}

// TrustExe adds an executable (an upgraded keyguard-agent seen being installed) to the trusted set, so
// the next agent may take over the pinned state: its inode, and the SHA-256 of its content (sum, read
// by the caller from the same file), which the kernel checks again when it is executed.
func (g *Guard) TrustExe(e FileID, sum [32]byte) error {
	if err := setFast(g.Maps.Fastpath, fileSlots(map[FileID]bool{e: true})); err != nil {
		return err
	}
	if g.Variants.Digest == DigestIMA {
		if err := g.Maps.Digests.Update(DigestKey{RuleId: DigestAgent, Sha256: sum}, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("record the upgraded agent's digest: %w", err)
		}
	}
	return g.Maps.Own.Update(ownKey{Kind: uint32(kgbpf.KeyguardKgOwnKindKG_OWN_EXE), Dev: uint32(e.Dev), Id: e.Ino}, uint8(1), ebpf.UpdateAny)
}

// FileSHA256 is the SHA-256 of a file's whole content: what the kernel's IMA hash of an executable is.
func FileSHA256(path string) ([32]byte, error) {
	var sum [32]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("hash %s: %w", path, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func (g *Guard) mapList() []*ebpf.Map {
	m := &g.Maps
	return []*ebpf.Map{m.Events, m.Lost, m.Counters, m.Marks, m.LateMarks, m.Rules, m.ExeRules, m.KeyRules,
		m.CgroupRules, m.Allow, m.Breakglass, m.Agent, m.Handler, m.HandlerPipes, m.Own, m.Settings, m.Install, m.UsedTokens,
		m.Openers, m.RawDevs, m.Inflight, m.Agg, m.AggEpoch, m.AggStats, m.AggSync, m.AggZero, m.ProcObj, m.Fastpath,
		m.Digests, m.ExeChecks}
}

// SetHandler names keyguard's core-dump handler executable: only pipes the kernel creates for it may
// receive a protected process's dump.
func (g *Guard) SetHandler(path string) error {
	id, err := StatFileID(path)
	if err != nil {
		return fmt.Errorf("identify the dump handler: %w", err)
	}
	return g.Maps.Handler.Update(uint32(0), kgbpf.KeyguardKgHandler{Dev: id.Dev, Ino: id.Ino}, ebpf.UpdateAny)
}

// Mark protects a running process (found by the procfs scan). It sets the task-storage mark through a
// pidfd and a late mark, so /proc files opened before now stop reading too.
func (g *Guard) Mark(pid int, ruleID uint32, reason uint32) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	var cur Mark
	if err := g.Maps.Marks.Lookup(uint32(fd), &cur); err == nil && cur.RuleId != 0 {
		return nil // already protected, by the kernel or an earlier agent
	}
	if err := g.Maps.Marks.Update(uint32(fd), Mark{RuleId: ruleID, Reason: reason}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("mark pid %d: %w", pid, err)
	}
	ticks, err := procfs.FS{}.StartTicks(pid)
	if err != nil {
		return err
	}
	late := kgbpf.KeyguardKgLateMark{StartTicks: ticks, RuleId: ruleID, Reason: reason}
	if err := g.Maps.LateMarks.Update(uint32(pid), late, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("late-mark pid %d: %w", pid, err)
	}
	return nil
}

// MarkOf returns the protection mark of a running process, if any.
func (g *Guard) MarkOf(pid int) (Mark, bool, error) { return markOf(g.Maps.Marks, pid) }

// Grant gives an accessor a break-glass exception until the given time.
func (g *Guard) Grant(k AccessorKey, until time.Time, id uint64) error {
	bt, err := BootTime(until)
	if err != nil {
		return err
	}
	return g.Maps.Breakglass.Update(k, kgbpf.KeyguardKgGrant{ExpiresBootNs: bt, GrantId: id}, ebpf.UpdateAny)
}

// Revoke removes a break-glass exception.
func (g *Guard) Revoke(k AccessorKey) error {
	err := g.Maps.Breakglass.Delete(k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// Lost sums the per-CPU count of events the kernel could not put in the ring buffer.
func (g *Guard) Lost() (uint64, error) {
	var per []uint64
	if err := g.Maps.Lost.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read lost-event counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Counters sums the per-CPU decision counters, by kgbpf counter index.
func (g *Guard) Counters() ([]uint64, error) {
	out := make([]uint64, kgbpf.KeyguardKgCounterKG_CNT_MAX)
	for i := range out {
		var per []uint64
		if err := g.Maps.Counters.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// StatFileID names a file the way the kernel does (sb->s_dev and inode), following symlinks. It uses
// the policy's resolver, which takes the superblock device from mountinfo where stat's st_dev differs
// (btrfs subvolumes, some overlayfs set-ups), so the agent and the programs agree.
func StatFileID(path string) (FileID, error) {
	fi, err := policy.Stat(path)
	if err != nil {
		return FileID{}, err
	}
	return FileID{Dev: fi.ID.Dev, Ino: fi.ID.Ino}, nil
}

// BootTime converts a wall-clock time to CLOCK_BOOTTIME nanoseconds, the clock the programs use.
func BootTime(t time.Time) (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_BOOTTIME: %w", err)
	}
	now := time.Now()
	d := t.Sub(now)
	bt := ts.Nano() + d.Nanoseconds()
	if bt < 0 {
		return 0, nil
	}
	return uint64(bt), nil
}

// WallTime converts CLOCK_BOOTTIME nanoseconds from an event to wall-clock time.
func WallTime(bootNs uint64) time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(time.Duration(int64(bootNs) - ts.Nano()))
}
