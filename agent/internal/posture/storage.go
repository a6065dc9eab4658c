package posture

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// swap is one active swap area from /proc/swaps.
type swap struct {
	Path, Type string
	Dev        string // MAJ:MIN of the device holding it ("" when unknown)
	Enc        encryption
}

// encryption says what keeps a block device's data from reaching a disk in clear.
type encryption struct {
	Encrypted bool
	How       string // "dm-crypt dm-0", "zram (RAM only)", "unencrypted sda2", "unknown: why"
}

func (c Checker) swaps() []swap {
	s, ok := read(c.proc("swaps"))
	if !ok {
		return nil
	}
	var out []swap
	for i, line := range strings.Split(s, "\n") {
		fs := strings.Fields(line)
		if i == 0 || len(fs) < 2 {
			continue // header
		}
		sw := swap{Path: unescapeOctal(fs[0]), Type: fs[1]}
		if sw.Type == "partition" {
			sw.Enc = c.deviceByName(sw.Path)
		} else {
			sw.Dev, sw.Enc = c.fileEncryption(sw.Path)
		}
		out = append(out, sw)
	}
	return out
}

func (c Checker) swapFindings(swaps []swap) []Finding {
	if len(swaps) == 0 {
		return []Finding{{Name: "swap", Value: "none", Severity: Info, Remediation: "no active swap: memory is not written to disk"}}
	}
	var out []Finding
	for _, s := range swaps {
		f := Finding{Name: "swap:" + s.Path, Value: s.Type + ", " + s.Enc.How, Severity: Info}
		if s.Enc.Encrypted {
			f.Remediation = "swapped pages stay in RAM or are encrypted on disk"
		} else {
			f.Severity, f.Remediation = High, "pages of any process, keys included, can be written to disk in clear and stay there after power-off: swapoff "+s.Path+" and use encrypted swap (crypttab: swap /dev/... /dev/urandom swap,cipher=aes-xts-plain64,size=256) or zram; key holders should also mlock their keys"
		}
		out = append(out, f)
	}
	return out
}

func (c Checker) hibernation(swaps []swap) Finding {
	f := Finding{Name: "hibernation", Severity: Info}
	state, _ := read(c.sys("power", "state"))
	disk, _ := read(c.sys("power", "disk"))
	resumeDev, _ := read(c.sys("power", "resume"))
	resumeArg, hasResume := c.cmdlineParam("resume")
	_, noHib := c.cmdlineParam("nohibernate")
	parts := []string{"state: " + state, "disk: " + disk}
	if hasResume {
		parts = append(parts, "cmdline resume="+resumeArg)
	}
	if resumeDev != "" && resumeDev != "0:0" && !strings.HasPrefix(resumeDev, "unavailable") {
		parts = append(parts, "resume device "+resumeDev)
	}
	f.Value = strings.Join(parts, "; ")
	fix := "add nohibernate to the kernel command line (GRUB_CMDLINE_LINUX, update-grub), or keep swap and the resume device on dm-crypt"
	available := !noHib && strings.Contains(" "+state+" ", " disk ") && disk != "[disabled]" && !strings.HasPrefix(disk, "unavailable")
	switch {
	case !available:
		f.Value = "unavailable; " + f.Value
		f.Remediation = "the kernel cannot hibernate (no disk state, nohibernate or lockdown): RAM is never written to a hibernation image"
		return f
	case resumeDev != "" && resumeDev != "0:0" && !strings.HasPrefix(resumeDev, "unavailable"):
		enc := c.deviceByNumber(resumeDev)
		f.Value = "available; " + f.Value + " (" + enc.How + ")"
		if enc.Encrypted {
			f.Severity, f.Remediation = Low, "the hibernation image (all RAM, keys included) goes to an encrypted device; "+fix
		} else {
			f.Severity, f.Remediation = High, "the hibernation image (all RAM, keys included) is written in clear to "+resumeDev+": "+fix
		}
		return f
	}
	f.Value = "available; " + f.Value
	clear := 0
	for _, s := range swaps {
		if !s.Enc.Encrypted {
			clear++
		}
	}
	switch {
	case clear > 0:
		f.Severity, f.Remediation = High, "hibernation would write all RAM, keys included, to swap in clear (systemd picks a swap area at hibernate time): "+fix
	case len(swaps) > 0:
		f.Severity, f.Remediation = Low, "the hibernation image would go to encrypted swap; "+fix
	default:
		f.Severity, f.Remediation = Low, "no swap now, so no image can be written; a swap added later is used: "+fix
	}
	return f
}

// deviceByName resolves a device path from /proc/swaps (/dev/dm-1, /dev/sda2, /dev/mapper/x,
// /dev/zram0) through SysRoot/class/block.
func (c Checker) deviceByName(path string) encryption {
	base := filepath.Base(path)
	if strings.HasPrefix(path, "/dev/mapper/") {
		ents, _ := filepath.Glob(c.sys("block", "dm-*", "dm", "name"))
		for _, e := range ents {
			if n, _ := read(e); n == base {
				base = filepath.Base(filepath.Dir(filepath.Dir(e)))
			}
		}
	}
	dir, err := filepath.EvalSymlinks(c.sys("class", "block", base))
	if err != nil {
		return encryption{How: "unknown: " + base + " not in sysfs"}
	}
	return c.blockEncryption(dir, 0)
}

// deviceByNumber resolves MAJ:MIN through SysRoot/dev/block.
func (c Checker) deviceByNumber(majmin string) encryption {
	dir, err := filepath.EvalSymlinks(c.sys("dev", "block", majmin))
	if err != nil {
		return encryption{How: "unknown: block device " + majmin + " not in sysfs"}
	}
	return c.blockEncryption(dir, 0)
}

// fileEncryption finds the block device of the file system holding path (a swap file, a dump folder).
func (c Checker) fileEncryption(path string) (string, encryption) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", encryption{How: fmt.Sprintf("unknown: %v", err)}
	}
	majmin := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	if unix.Major(st.Dev) == 0 {
		// tmpfs, btrfs, overlay, NFS...: no single block device.
		var sfs unix.Statfs_t
		if unix.Statfs(path, &sfs) == nil && sfs.Type == unix.TMPFS_MAGIC {
			return majmin, encryption{Encrypted: true, How: "tmpfs (RAM)"}
		}
		return majmin, encryption{How: "unknown: " + majmin + " is not a block device (btrfs, overlay or network file system)"}
	}
	return majmin, c.deviceByNumber(majmin)
}

// blockEncryption looks at a device's sysfs folder: zram stays in RAM; a dm-crypt device (dm uuid
// CRYPT-...) anywhere below it (LVM on LUKS: slaves) encrypts it; a partition inherits its disk's.
func (c Checker) blockEncryption(dir string, depth int) encryption {
	name := filepath.Base(dir)
	if depth > 8 {
		return encryption{How: "unknown: device stack too deep at " + name}
	}
	if strings.HasPrefix(name, "zram") {
		return encryption{Encrypted: true, How: "zram " + name + " (RAM only)"}
	}
	if uuid, ok := read(filepath.Join(dir, "dm", "uuid")); ok && strings.HasPrefix(uuid, "CRYPT-") {
		return encryption{Encrypted: true, How: "dm-crypt " + name + " (" + uuid + ")"}
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		if e := c.blockEncryption(filepath.Dir(dir), depth+1); e.Encrypted {
			return e
		}
	}
	slaves, _ := os.ReadDir(filepath.Join(dir, "slaves"))
	if len(slaves) > 0 {
		// Every path down must be encrypted (a striped LV on one clear and one encrypted PV is not).
		var hows []string
		for _, s := range slaves {
			d, err := filepath.EvalSymlinks(filepath.Join(dir, "slaves", s.Name()))
			if err != nil {
				return encryption{How: "unknown: " + err.Error()}
			}
			e := c.blockEncryption(d, depth+1)
			if !e.Encrypted {
				return encryption{How: "unencrypted " + name + " on " + e.How}
			}
			hows = append(hows, e.How)
		}
		return encryption{Encrypted: true, How: name + " on " + strings.Join(hows, ", ")}
	}
	return encryption{How: "unencrypted " + name}
}

// unescapeOctal undoes the kernel's \040-style escaping of spaces, tabs, newlines and backslashes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
