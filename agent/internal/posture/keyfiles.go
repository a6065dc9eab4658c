package posture

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KeyFiles checks each key file that exists (symlinks followed, as the kernel opens it) and, once
// per folder, the folder holding it.
func (c Checker) KeyFiles(keys []KeyFile) []Finding {
	var out []Finding
	folders := map[string]bool{}
	anyRules := map[string]bool{}
	for _, k := range keys {
		f, ok := c.keyFile(k)
		if !ok {
			continue
		}
		out = append(out, f)
		if fs, ok := uncoveredFS(k.Path); ok {
			out = append(out, Finding{Name: "key_fs:" + k.Path, Value: fs, Severity: High,
				Remediation: "rule " + k.Rule + ": the key file is on " + fs + ": the server and other clients read and change it without this kernel's checks; keep key files on a local filesystem"})
		}
		if k.AnyOpener && !anyRules[k.Rule] {
			anyRules[k.Rule] = true
			out = append(out, Finding{Name: "key_openers:" + k.Rule, Value: "any", Severity: Medium,
				Remediation: "rule " + k.Rule + " says openers: any: any process may open its key files and is protected from then on, but it can still print or send what it read; list the rule's executables or cgroups, or its openers"})
		}
		real, err := filepath.EvalSymlinks(k.Path)
		if err != nil {
			continue
		}
		dir := filepath.Dir(real)
		if folders[dir] {
			continue
		}
		folders[dir] = true
		out = append(out, c.keyFolder(dir, k))
	}
	return out
}

func owners(k KeyFile) string {
	if len(k.ServiceUIDs) == 0 {
		return "root"
	}
	var s []string
	for _, u := range k.ServiceUIDs {
		s = append(s, strconv.FormatUint(uint64(u), 10))
	}
	return "root or the service user (" + strings.Join(s, ", ") + ")"
}

func (c Checker) keyFile(k KeyFile) (Finding, bool) {
	var st unix.Stat_t
	if err := unix.Stat(k.Path, &st); err != nil {
		return Finding{}, false
	}
	mode := os.FileMode(st.Mode & 0o7777)
	f := Finding{Name: "key_file:" + k.Path, Severity: Info,
		Value: fmt.Sprintf("owner %d:%d mode %04o", st.Uid, st.Gid, mode)}
	var why, fix []string
	sev := Info
	raise := func(s Severity) {
		if s.Rank() > sev.Rank() {
			sev = s
		}
	}
	if mode&0o044 != 0 {
		raise(High)
		why = append(why, "readable by its group or everyone: the key can be copied without touching the process keyguard protects")
		fix = append(fix, "chmod 0600 "+k.Path)
	}
	if mode&0o022 != 0 {
		raise(High)
		why = append(why, "writable by its group or everyone: the key can be replaced")
		if mode&0o044 == 0 {
			fix = append(fix, "chmod 0600 "+k.Path)
		}
	}
	okOwner := st.Uid == 0 || slices.Contains(k.ServiceUIDs, st.Uid)
	switch {
	case !okOwner && len(k.ServiceUIDs) == 0:
		raise(Low)
		why = append(why, fmt.Sprintf("owned by uid %d, not root, and no process of rule %s runs to tell the service user", st.Uid, k.Rule))
		fix = append(fix, "chown root "+k.Path+" if uid "+strconv.FormatUint(uint64(st.Uid), 10)+" is not the service user")
	case !okOwner:
		raise(Medium)
		why = append(why, fmt.Sprintf("owned by uid %d, neither %s: that user can read it and change its mode", st.Uid, owners(k)))
		fix = append(fix, "chown root "+k.Path+" (or the service user)")
	}
	f.Severity = sev
	if len(why) == 0 {
		f.Remediation = "rule " + k.Rule + ": readable only by its owner (" + owners(k) + ")"
	} else {
		f.Remediation = "rule " + k.Rule + ": " + strings.Join(why, "; ") + ": " + strings.Join(fix, "; ")
	}
	return f, true
}

// keyFolder: whoever can write the folder can replace the key, or put a symlink or hard link where
// the policy's glob matches.
func (c Checker) keyFolder(dir string, k KeyFile) Finding {
	f := Finding{Name: "key_folder:" + dir, Severity: Info}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		f.Value, f.Severity, f.Remediation = "unknown: "+err.Error(), Low, "could not check the folder"
		return f
	}
	mode := os.FileMode(st.Mode & 0o7777)
	f.Value = fmt.Sprintf("owner %d:%d mode %04o", st.Uid, st.Gid, mode)
	okOwner := st.Uid == 0 || slices.Contains(k.ServiceUIDs, st.Uid)
	var why []string
	if mode&0o022 != 0 {
		s := "writable by its group or everyone"
		if mode&os.FileMode(unix.S_ISVTX) != 0 {
			s += " (sticky: others cannot replace the key, but can add files the glob matches)"
		}
		why = append(why, s)
	}
	if !okOwner {
		why = append(why, fmt.Sprintf("owned by uid %d, not %s", st.Uid, owners(k)))
	}
	if len(why) == 0 {
		f.Remediation = "rule " + k.Rule + ": only " + owners(k) + " can change the folder"
		return f
	}
	f.Severity = Medium
	f.Remediation = "rule " + k.Rule + ": the folder is " + strings.Join(why, ", ") + ": whoever can write it can replace the key or plant a file the policy's glob matches: chown root " + dir + " && chmod go-w " + dir
	return f
}

// Filesystems whose files keyguard's inode checks cannot cover: the bytes live on a server (or in a
// userspace daemon) that others reach without this kernel.
var uncoveredFSTypes = map[int64]string{
	0x6969: "nfs", 0x65735546: "fuse", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x01021997: "9p",
	0x00c36400: "ceph", 0x564c: "ncp", 0x47504653: "gpfs", 0x0bd00bd0: "lustre",
}

func uncoveredFS(path string) (string, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", false
	}
	name, ok := uncoveredFSTypes[int64(st.Type)]
	return name, ok
}
