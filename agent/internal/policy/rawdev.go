package policy

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// RawDisk is what holds a key file's bytes below its filesystem: block devices (kernel dev_t
// encoding) and loop image files. Opening any of them reads the key without opening the key file, so
// the kernel refuses them to everyone but raw_disk_readers.
type RawDisk struct {
	Devs   map[uint32]uint32 // block device → rule id
	Images map[FileID]uint32 // loop image file → rule id
}

// rawDisks finds, under sysfs (normally /sys), the block devices and loop images below each key
// file's filesystem: the filesystem's device, the whole disk of a partition, the lower devices of dm
// and md devices (slaves/), and the backing file of a loop device, followed down to its own device.
// A device or image below key files of two rules goes to the rule listed first.
func rawDisks(sysfs string, p *Policy, keys map[uint32]FileSet, st *statter) RawDisk {
	out := RawDisk{Devs: map[uint32]uint32{}, Images: map[FileID]uint32{}}
	for _, rl := range p.Rules {
		for _, id := range sortedFileIDs(keys[rl.ID]) {
			out.walk(sysfs, id.Dev, rl.ID, st, 0)
		}
	}
	return out
}

func (r RawDisk) walk(sysfs string, dev uint64, rule uint32, st *statter, depth int) {
	if depth > 8 || dev == 0 {
		return
	}
	d := uint32(dev)
	if _, seen := r.Devs[d]; seen {
		return
	}
	node := filepath.Join(sysfs, "dev", "block", strconv.FormatUint(dev>>20, 10)+":"+strconv.FormatUint(dev&(1<<20-1), 10))
	real, err := filepath.EvalSymlinks(node)
	if err != nil {
		return // not a block device (tmpfs, proc, a network filesystem)
	}
	r.Devs[d] = rule
	if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
		if p, ok := readDev(filepath.Join(filepath.Dir(real), "dev")); ok {
			r.walk(sysfs, p, rule, st, depth+1)
		}
	}
	if b, err := os.ReadFile(filepath.Join(real, "loop", "backing_file")); err == nil {
		img := strings.TrimSpace(string(b))
		if fi, err := st.stat(img); err == nil {
			if _, taken := r.Images[fi.ID]; !taken {
				r.Images[fi.ID] = rule
			}
			r.walk(sysfs, fi.ID.Dev, rule, st, depth+1)
		}
	}
	slaves, _ := os.ReadDir(filepath.Join(real, "slaves"))
	for _, s := range slaves {
		if p, ok := readDev(filepath.Join(real, "slaves", s.Name(), "dev")); ok {
			r.walk(sysfs, p, rule, st, depth+1)
		}
	}
}

// readDev reads a sysfs "MAJ:MIN" file as a kernel dev_t.
func readDev(file string) (uint64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	ma, mi, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return 0, false
	}
	x, err1 := strconv.ParseUint(ma, 10, 32)
	y, err2 := strconv.ParseUint(mi, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return MkKernelDev(uint32(x), uint32(y)), true
}
