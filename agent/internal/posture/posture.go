// Package posture checks the host settings and the protected processes' own settings that decide
// whether a key can leave a process by a path keyguard's BPF programs do not cover: kernel sysctls,
// lockdown, swap, hibernation, kdump, a process's core-dump limits and tracer, and key-file
// permissions. Every check returns a Finding with the value found, a severity (the proto's
// keyguard.v1 Severity names) and what to change.
package posture

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Severity ranks a finding; the values are keyguard.v1 Severity without the prefix.
type Severity string

// Severities, weakest first.
const (
	Info     Severity = "info"     // as it should be, or only context
	Low      Severity = "low"      // a weaker setting; keyguard still covers the path
	Medium   Severity = "medium"   // a path keyguard does not cover, open to root or a local user
	High     Severity = "high"     // key material can reach disk or another reader outside keyguard
	Critical Severity = "critical" // key material is being (or will be) exposed
)

var ranks = map[Severity]int{Info: 1, Low: 2, Medium: 3, High: 4, Critical: 5}

// Rank orders severities (0 for an unknown one).
func (s Severity) Rank() int { return ranks[s] }

// Finding is one checked item.
type Finding struct {
	// Name says what was checked: a sysctl name, "lockdown", "swap:/dev/dm-1", "process.1234.rlimit_core",
	// "key_file:/etc/signer/key.pem", ...
	Name string `json:"name"`
	// Value is the value found, as the kernel or the file shows it (decoded where that helps).
	Value    string   `json:"value"`
	Severity Severity `json:"severity"`
	// Remediation is what to change (a command or setting); for Info findings it may only explain.
	Remediation string `json:"remediation,omitempty"`
}

// Checker reads the host below its roots. The zero value reads the real host.
type Checker struct {
	// ProcRoot, SysRoot and EtcRoot replace /proc, /sys and /etc (tests build fake trees). Paths the
	// host reports inside those files (swap files, dump folders, key files) are used as they are.
	ProcRoot, SysRoot, EtcRoot string
	// HandlerPattern is keyguard's core_pattern when a rule redacts dumps, "" when none does.
	HandlerPattern string
	// KernelMemoryGuarded: keyguard refuses /proc/kcore, /dev/mem, /dev/kmem and /dev/port while it
	// runs (policy side_doors: enforce). ModulesGuarded: it refuses module and kexec loads
	// (modules: deny). Both false when no agent runs (keyguard-agent probe).
	KernelMemoryGuarded, ModulesGuarded bool
	// ExecDigest is how the running kernel lets keyguard hash executables at exec (loader variant:
	// "bpf_ima_file_hash" or "none"); "" when unknown (no agent). FSVerityKfunc: the kernel also has
	// bpf_get_fsverity_digest. StrictRules names the policy's strict rules.
	ExecDigest    string
	FSVerityKfunc bool
	StrictRules   []string
}

// Target is a protected process to check.
type Target struct {
	PID  int
	Rule string
	// Dumps is the rule's dump setting: block, redact or allow.
	Dumps string
}

// KeyFile is a policy key file to check.
type KeyFile struct {
	Path string
	Rule string
	// ServiceUIDs are the users the key may belong to besides root: the users of the rule's protected
	// processes. Empty: none runs, so the service user is unknown.
	ServiceUIDs []uint32
	// AnyOpener: the rule says `openers: any`, so any process may open the key file (and becomes
	// protected by that open, but can still print what it read).
	AnyOpener bool
}

// Input is what Check looks at besides the host.
type Input struct {
	Processes []Target
	KeyFiles  []KeyFile
}

// Check runs every check: the host, then each process, then each key file.
func (c Checker) Check(in Input) []Finding {
	out := c.Host()
	for _, t := range in.Processes {
		out = append(out, c.Process(t)...)
	}
	out = append(out, c.KeyFiles(in.KeyFiles)...)
	return out
}

// Host checks the kernel settings, swap, hibernation and kdump.
func (c Checker) Host() []Finding {
	var out []Finding
	out = append(out, c.ptraceScope(), c.lockdown(), c.perfParanoid(), c.unprivilegedBPF(), c.suidDumpable())
	out = append(out, c.corePattern()...)
	out = append(out, c.kexecLoad(), c.modulesDisabled())
	swaps := c.swaps()
	out = append(out, c.swapFindings(swaps)...)
	out = append(out, c.hibernation(swaps), c.kdump())
	if c.ExecDigest != "" {
		out = append(out, c.execDigest())
	}
	return out
}

func (c Checker) proc(p ...string) string {
	return filepath.Join(append([]string{orDefault(c.ProcRoot, "/proc")}, p...)...)
}

func (c Checker) sys(p ...string) string {
	return filepath.Join(append([]string{orDefault(c.SysRoot, "/sys")}, p...)...)
}

func (c Checker) etc(p ...string) string {
	return filepath.Join(append([]string{orDefault(c.EtcRoot, "/etc")}, p...)...)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// read returns a file's content without trailing white space, or ok=false and "unavailable (why)".
func read(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		why := err.Error()
		var pe *os.PathError
		if errors.As(err, &pe) {
			why = pe.Err.Error()
		}
		return "unavailable (" + why + ")", false
	}
	return string(bytes.TrimRight(b, " \t\n")), true
}

// Diff compares two sets of findings by name: what appeared, what went away, and what changed value or
// severity (the new finding).
func Diff(old, cur []Finding) (appeared, gone, changed []Finding) {
	before := make(map[string]Finding, len(old))
	for _, f := range old {
		before[f.Name] = f
	}
	seen := make(map[string]bool, len(cur))
	for _, f := range cur {
		seen[f.Name] = true
		o, ok := before[f.Name]
		switch {
		case !ok:
			appeared = append(appeared, f)
		case o.Value != f.Value || o.Severity != f.Severity:
			changed = append(changed, f)
		}
	}
	for _, f := range old {
		if !seen[f.Name] {
			gone = append(gone, f)
		}
	}
	return appeared, gone, changed
}

// Worst returns the findings sorted by severity, worst first (stable within a severity).
func Worst(fs []Finding) []Finding {
	out := append([]Finding(nil), fs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Severity.Rank() > out[j].Severity.Rank() })
	return out
}

// cmdlineParam returns the value of key= on the kernel command line (the last one wins, as for the
// kernel), and whether it is there. A bare word (nohibernate) is found with an empty value.
func (c Checker) cmdlineParam(key string) (string, bool) {
	s, _ := read(c.proc("cmdline"))
	val, found := "", false
	for _, w := range strings.Fields(s) {
		if w == "--" {
			break // the rest is for init
		}
		k, v, _ := strings.Cut(w, "=")
		if k == key {
			val, found = v, true
		}
	}
	return val, found
}

// Print writes findings one per line: severity, name = value, then what to change (indented) for
// anything above Info.
func Print(w io.Writer, fs []Finding) {
	for _, f := range fs {
		fmt.Fprintf(w, "  %-8s %s = %s\n", f.Severity, f.Name, f.Value)
		if f.Severity != Info && f.Remediation != "" {
			fmt.Fprintf(w, "           %s\n", f.Remediation)
		}
	}
}

// processPID returns the pid of a per-process finding ("process.PID.item").
func processPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "process.")
	if !ok {
		return 0, false
	}
	pid, _, _ := strings.Cut(rest, ".")
	n, err := strconv.Atoi(pid)
	return n, err == nil
}

// routine: a per-process finding at Info or Low, i.e. a protected process with ordinary settings.
func routine(f Finding) bool {
	_, proc := processPID(f.Name)
	return (proc && f.Severity.Rank() <= Low.Rank()) || f.Name == "processes"
}

// Changes is Diff over what a change event reports: every host and key-file finding, and process
// findings above Low. A protected process that starts or exits with ordinary settings is not a
// posture change; one that becomes traced, or whose dumps would carry keys, is.
func Changes(old, cur []Finding) (appeared, gone, changed []Finding) {
	keep := func(fs []Finding) []Finding {
		var out []Finding
		for _, f := range fs {
			if !routine(f) {
				out = append(out, f)
			}
		}
		return out
	}
	return Diff(keep(old), keep(cur))
}

// Summarize bounds what an event carries on a host with many protected processes: host and key-file
// findings and process findings above Low stay; Info and Low process findings stay for the maxProcs
// lowest pids only; a "processes" finding says how many processes were checked.
func Summarize(fs []Finding, maxProcs int) []Finding {
	pids := map[int]bool{}
	for _, f := range fs {
		if pid, ok := processPID(f.Name); ok {
			pids[pid] = true
		}
	}
	sorted := make([]int, 0, len(pids))
	for pid := range pids {
		sorted = append(sorted, pid)
	}
	sort.Ints(sorted)
	shown := map[int]bool{}
	for i, pid := range sorted {
		shown[pid] = i < maxProcs
	}
	var out []Finding
	for _, f := range fs {
		if pid, ok := processPID(f.Name); ok && !shown[pid] && f.Severity.Rank() <= Low.Rank() {
			continue
		}
		out = append(out, f)
	}
	if len(sorted) > maxProcs {
		out = append(out, Finding{Name: "processes", Value: fmt.Sprintf("%d protected", len(sorted)), Severity: Info,
			Remediation: fmt.Sprintf("info and low findings are shown for the %d lowest pids only (keyguard status lists all)", maxProcs)})
	}
	return out
}
