package posture

import (
	"fmt"
	"strconv"
	"strings"
)

// makedumpfile's dump-level bits: pages it leaves out of the dump.
const (
	dlZero         = 1
	dlCache        = 2
	dlCachePrivate = 4
	dlUser         = 8 // user process data: every process's anonymous memory, keys included
	dlFree         = 16
)

// kdumpConfig is what the kdump service will run when the crash kernel boots.
type kdumpConfig struct {
	Source    string // file read ("" when none: defaults)
	Collector string // MAKEDUMP_ARGS or kdump.conf core_collector
	// Levels are the -d values (several when comma separated); none: makedumpfile's default 0 or a
	// collector that copies everything.
	Levels []int
	Target string // "local /var/crash", "ssh user@host", "nfs host:/path"
	Local  string // local folder for the dump ("" for remote)
}

// userPages reports whether the dump keeps user process data.
func (k kdumpConfig) userPages() bool {
	if len(k.Levels) == 0 {
		return true
	}
	for _, l := range k.Levels {
		if l&dlUser == 0 {
			return true
		}
	}
	return false
}

func (c Checker) readKdumpConfig() kdumpConfig {
	// Debian/Ubuntu kdump-tools.
	if s, ok := read(c.etc("default", "kdump-tools")); ok {
		v := shellVars(s)
		k := kdumpConfig{Source: c.etc("default", "kdump-tools"), Collector: "makedumpfile " + orDefault(v["MAKEDUMP_ARGS"], "-c -d 31")}
		k.Levels = dumpLevels(k.Collector)
		switch {
		case v["SSH"] != "":
			k.Target = "ssh " + v["SSH"]
		case v["NFS"] != "":
			k.Target = "nfs " + v["NFS"]
		default:
			k.Local = orDefault(v["KDUMP_COREDIR"], "/var/crash")
			k.Target = "local " + k.Local
		}
		return k
	}
	// Fedora/RHEL kexec-tools.
	if s, ok := read(c.etc("kdump.conf")); ok {
		k := kdumpConfig{Source: c.etc("kdump.conf"), Collector: "makedumpfile -l --message-level 7 -d 31", Local: "/var/crash"}
		remote := ""
		for _, line := range strings.Split(s, "\n") {
			key, val, _ := strings.Cut(strings.TrimSpace(line), " ")
			val = strings.TrimSpace(val)
			switch key {
			case "core_collector":
				k.Collector = val
			case "path":
				k.Local = val
			case "ssh", "nfs":
				remote = key + " " + val
			}
		}
		if strings.HasPrefix(k.Collector, "makedumpfile") {
			k.Levels = dumpLevels(k.Collector)
		}
		if remote != "" {
			k.Target, k.Local = remote, ""
		} else {
			k.Target = "local " + k.Local
		}
		return k
	}
	return kdumpConfig{Collector: "unknown (no /etc/default/kdump-tools or /etc/kdump.conf)"}
}

// dumpLevels returns makedumpfile's -d values in args.
func dumpLevels(args string) []int {
	fs := strings.Fields(args)
	var val string
	for i, f := range fs {
		switch {
		case f == "-d" && i+1 < len(fs):
			val = fs[i+1]
		case strings.HasPrefix(f, "-d") && len(f) > 2 && f[2] >= '0' && f[2] <= '9':
			val = f[2:]
		}
	}
	var out []int
	for _, p := range strings.Split(val, ",") {
		if n, err := strconv.Atoi(p); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// shellVars reads simple NAME=value / NAME="value" assignments (what kdump-tools' file holds).
func shellVars(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(k, " \t") {
			continue
		}
		v = strings.TrimSpace(v)
		if i := strings.Index(v, " #"); i >= 0 && !strings.HasPrefix(v, `"`) {
			v = v[:i]
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') {
			if j := strings.LastIndexByte(v, v[0]); j > 0 {
				v = v[1:j]
			}
		}
		out[k] = v
	}
	return out
}

func (c Checker) kdump() Finding {
	f := Finding{Name: "kdump", Severity: Info}
	loadedS, _ := read(c.sys("kernel", "kexec_crash_loaded"))
	loaded := loadedS == "1"
	crash, reserved := c.cmdlineParam("crashkernel")
	if size, ok := read(c.sys("kernel", "kexec_crash_size")); ok && size != "0" {
		reserved = true
	}
	if !loaded && !reserved {
		f.Value = "no crash kernel loaded (kexec_crash_loaded " + loadedS + "), no crashkernel= reserved"
		f.Remediation = "no crash dumps of memory are taken"
		return f
	}
	k := c.readKdumpConfig()
	var parts []string
	if loaded {
		parts = append(parts, "crash kernel loaded")
	} else {
		parts = append(parts, "crash kernel not loaded")
	}
	if crash != "" {
		parts = append(parts, "crashkernel="+crash)
	}
	parts = append(parts, "collector: "+k.Collector)
	if len(k.Levels) > 0 {
		parts = append(parts, fmt.Sprintf("dump level %v", k.Levels))
	}
	user := k.userPages()
	if user {
		parts = append(parts, "user pages dumped")
	} else {
		parts = append(parts, "user pages excluded")
	}
	if k.Target != "" {
		t := "target " + k.Target
		if k.Local != "" {
			_, enc := c.fileEncryption(k.Local)
			t += " (" + enc.How + ")"
		}
		parts = append(parts, t)
	}
	f.Value = strings.Join(parts, "; ")
	fix := `set MAKEDUMP_ARGS="-c -d 31" in /etc/default/kdump-tools (or core_collector makedumpfile -l -d 31 in /etc/kdump.conf; bit 8 leaves out user process data) and reload (kdump-config reload / systemctl restart kdump), or disable kdump (systemctl disable --now kdump-tools, remove crashkernel= from the kernel command line)`
	switch {
	case loaded && user:
		f.Severity, f.Remediation = Critical, "a kernel crash dumps every process's memory, keys included, to "+k.Target+": "+fix
	case user:
		f.Severity, f.Remediation = Medium, "memory is reserved for a crash kernel whose dump would hold every process's memory once the kdump service loads it: "+fix
	case loaded:
		f.Severity, f.Remediation = Low, "crash dumps leave out user pages; kernel memory (socket and pipe buffers, which can hold key bytes in transit) is still dumped to "+k.Target
	default:
		f.Remediation = "crash kernel reserved but not loaded; its configuration leaves out user pages"
	}
	return f
}
