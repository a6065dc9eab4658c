// Package dumphandler is keyguard's core_pattern pipe handler. The kernel starts it for every core
// dump once the agent has installed it; it decides from keyguard's pinned state (loader.View) whether the crashing
// process is protected, passes unprotected dumps on unchanged (byte for byte) to the pattern keyguard
// replaced, and redacts protected ones in bounded memory, verifies the result with a second,
// independent detector pass and only then passes it on. Anything it cannot make safe it discards, and
// every protected dump is reported as an event.
package dumphandler

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyguard/keyguard/agent/internal/control"
	"github.com/keyguard/keyguard/agent/internal/corepattern"
	"github.com/keyguard/keyguard/agent/internal/detect"
	"github.com/keyguard/keyguard/agent/internal/events"
	"github.com/keyguard/keyguard/agent/internal/loader"
	"github.com/keyguard/keyguard/agent/internal/policy"
	"github.com/keyguard/keyguard/agent/internal/procfs"
	"github.com/keyguard/keyguard/agent/internal/pubkeys"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"golang.org/x/sys/unix"
)

// Redactor turns a protected process's core dump into one without its secrets. It must read in at
// its own pace and may fail; on failure everything written to out is discarded.
type Redactor interface {
	Redact(ctx context.Context, in io.Reader, out io.Writer, det *detect.Detector, keepStacks bool) (redacted map[string]uint64, err error)
	// Verify is the second pass over the finished output; it returns how many key findings remain.
	Verify(ctx context.Context, in io.Reader, det *detect.Detector) (findings int, err error)
}

// Handler handles one dump.
type Handler struct {
	RunDir   string // where the agent keeps corepattern.State (corepattern.RunDir)
	Redactor Redactor
	Stdin    *os.File
	Kmsg     io.Writer // where problems are logged (the kernel log); nil discards
}

// Run handles the dump described by args (corepattern.HandlerArgs, in order).
func (h *Handler) Run(ctx context.Context, args []string) error {
	if len(args) != len(corepattern.HandlerArgs) {
		return fmt.Errorf("dump-handler wants %d arguments (%s), got %d: it is started by the kernel through core_pattern",
			len(corepattern.HandlerArgs), strings.Join(corepattern.HandlerArgs, " "), len(args))
	}
	v := corepattern.Values{GlobalPID: args[0], TID: args[1], GlobalTID: args[2], PID: args[3], UID: args[4], GID: args[5],
		DumpMode: args[6], Signal: args[7], Time: args[8], Hostname: args[9], CoreLimit: args[10], Comm: args[11]}
	pid, err := strconv.Atoi(v.GlobalPID)
	if err != nil {
		return fmt.Errorf("bad pid %q", v.GlobalPID)
	}
	v.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))

	st, stErr := corepattern.Load(h.RunDir)
	prot, rule, mode, perr := protection(st.PinPath, pid)
	sig, _ := strconv.Atoi(v.Signal)
	report := func(action keyguardv1.CoreDumpAction, reason, dest string, redacted map[string]uint64, verdict string) {
		h.report(st, rule, events.CoreDump(&keyguardv1.CoreDump{
			Process: &keyguardv1.Process{Pid: uint32(pid), Comm: v.Comm, ExePath: v.Exe},
			Action:  action, Signal: int32(sig), Reason: reason, Destination: dest,
			Redacted: redactedBytes(redacted), VerifierVerdict: verdict,
		}))
	}
	if perr != nil {
		// Unsure whether it is protected: do not let it out.
		h.logf("pid %d: cannot tell whether it is protected (%v): dump discarded", pid, perr)
		report(discarded, "keyguard's maps are unreadable: "+perr.Error(), "", nil, "")
		return drain(h.Stdin)
	}
	if stErr != nil {
		if prot {
			report(discarded, "the core_pattern keyguard replaced is unknown ("+stErr.Error()+")", "", nil, "")
		}
		h.logf("pid %d: no saved core_pattern (%v): dump discarded", pid, stErr)
		return drain(h.Stdin)
	}
	v.PidFD = strconv.Itoa(corepattern.PidFDNumber)
	next, err := corepattern.Expand(st.Previous, v)
	next = viaPipe(next, v, socketReceivers)
	if err != nil {
		h.logf("pid %d: previous core_pattern %q: %v: dump discarded", pid, st.Previous, err)
		if prot {
			report(discarded, "the previous core_pattern is unusable: "+err.Error(), "", nil, "")
		}
		return drain(h.Stdin)
	}
	if !prot || mode == loader.DumpAllow {
		// Byte for byte: the next handler reads the kernel's pipe itself.
		return passOn(ctx, next, h.Stdin, cwd, v)
	}
	if mode != loader.DumpRedact {
		report(discarded, "the rule does not allow this dump to be written", "", nil, "")
		return drain(h.Stdin)
	}
	if h.Redactor == nil {
		report(discarded, "this keyguard build has no core redactor, so a protected dump cannot be made safe", "", nil, "")
		return drain(h.Stdin)
	}

	return h.redact(ctx, st, rule, next, cwd, v, report)
}

// reportFunc reports what was done with the dump of the process being handled.
type reportFunc func(action keyguardv1.CoreDumpAction, reason, dest string, redacted map[string]uint64, verdict string)

// redact redacts a protected dump from h.Stdin into a temporary file, verifies the result with a
// second detector pass and only then hands it on to next; a dump it cannot make safe is discarded.
// Every outcome is reported.
func (h *Handler) redact(ctx context.Context, st corepattern.State, rule uint32, next corepattern.Parsed, cwd string, v corepattern.Values, report reportFunc) error {
	tmpDir := st.SpoolDir
	if tmpDir == "" {
		tmpDir = h.RunDir
	}
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		report(discarded, "no room to redact: "+err.Error(), "", nil, "")
		return drain(h.Stdin)
	}
	tmp, err := os.CreateTemp(tmpDir, "core-redacting-*")
	if err != nil {
		report(discarded, "no room to redact: "+err.Error(), "", nil, "")
		return drain(h.Stdin)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	det, err := detector(st.PolicyPath, rule)
	if err != nil {
		report(discarded, "cannot build the key detector: "+err.Error(), "", nil, "")
		return drain(h.Stdin)
	}
	redacted, err := h.Redactor.Redact(ctx, h.Stdin, tmp, det, st.KeepStacks)
	if err != nil {
		report(discarded, "the dump could not be redacted: "+err.Error(), "", nil, "")
		return drain(h.Stdin)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	n, err := h.Redactor.Verify(ctx, tmp, det)
	if err != nil || n > 0 {
		verdict := fmt.Sprintf("FAILED: %d key findings remain after redaction", n)
		if err != nil {
			verdict = "FAILED: " + err.Error()
		}
		report(discarded, "the verifier found key material after redaction", "", redacted, verdict)
		return nil
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	dest := st.Previous
	if !next.Pipe {
		dest = resolvePath(next.Path, cwd)
	}
	if err := passOn(ctx, next, tmp, cwd, v); err != nil {
		report(discarded, "handing the redacted dump on failed: "+err.Error(), dest, redacted, "clean")
		return err
	}
	report(keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_REDACTED, "", dest, redacted, "clean: no key material found in the output")
	return nil
}

// FingerprintsFile is the name of the fingerprint file (keyguard fingerprint -o) the dump handler
// reads beside the policy file, if it exists.
const FingerprintsFile = "fingerprints.json"

// detector finds key material in every known encoding, plus the raw private numbers of the public keys
// the rule names (public_keys in the policy). Keys fingerprinted in FingerprintsFile beside the
// policy are found by fingerprint instead (no public-key arithmetic per window: memory speed).
func detector(policyPath string, ruleID uint32) (*detect.Detector, error) {
	var keys []pubkeys.Key
	var set *detect.FingerprintSet
	if policyPath != "" {
		fp := filepath.Join(filepath.Dir(policyPath), FingerprintsFile)
		if _, err := os.Stat(fp); err == nil {
			if set, err = detect.LoadFingerprints(fp); err != nil {
				return nil, fmt.Errorf("%s: %w (rewrite it with keyguard fingerprint, or remove it)", fp, err)
			}
		}
		pol, err := policy.Load(policyPath)
		if err != nil {
			return nil, err
		}
		if paths := policy.Resolve(pol, "").PublicKeys[ruleID]; len(paths) > 0 {
			if keys, err = pubkeys.Load(paths...); err != nil {
				return nil, err
			}
		}
	}
	if set != nil {
		fk, err := set.PublicKeys()
		if err != nil {
			return nil, err
		}
		keys = slices.DeleteFunc(keys, func(k pubkeys.Key) bool { return pubkeys.Match(fk, k.Public) != "" })
	}
	return detect.New(detect.Options{Keys: keys, Fingerprints: set})
}

// protection reads the crashing process's protection from keyguard's pinned state (loader.View).
func protection(pinPath string, pid int) (prot bool, rule uint32, dumps uint32, err error) {
	v, err := loader.OpenView(pinPath)
	if err != nil {
		return false, 0, 0, err
	}
	defer v.Close()
	m, ok, err := v.MarkOf(pid)
	if err != nil {
		return false, 0, 0, err
	}
	id := m.RuleId
	if !ok {
		if id, err = cgroupRule(v, pid); err != nil {
			return false, 0, 0, err
		}
	}
	if id == 0 {
		return false, 0, 0, nil
	}
	r, ok, err := v.Rule(id)
	if err != nil {
		return false, 0, 0, err
	}
	if !ok {
		// A rule no longer in the policy: the kernel treats it as block, so do we.
		return true, id, loader.DumpBlock, nil
	}
	return true, id, r.Dumps, nil
}

// cgroupRule looks the process's cgroup and its ancestors up in the cgroup rules, as the kernel does.
func cgroupRule(v *loader.View, pid int) (uint32, error) {
	root, err := policy.CgroupRoot()
	if err != nil {
		return 0, err
	}
	for p := (procfs.FS{}).Cgroup(pid); p != "" && p != "/"; p = filepath.Dir(p) {
		cg, err := policy.CgroupID(filepath.Join(root, p))
		if err != nil {
			continue
		}
		if id, ok, err := v.CgroupRule(cg); err != nil {
			return 0, err
		} else if ok {
			return id, nil
		}
	}
	return 0, nil
}

func resolvePath(p, cwd string) string {
	if filepath.IsAbs(p) || cwd == "" {
		return p
	}
	return filepath.Join(cwd, p)
}

// passOn gives the dump to what the previous core_pattern named.
func passOn(ctx context.Context, next corepattern.Parsed, in *os.File, cwd string, v corepattern.Values) error {
	if next.Socket {
		// The kernel would connect from the crashing process, whose credentials the receiver reads
		// from the connection; the handler cannot stand in for it.
		return fmt.Errorf("the previous core_pattern is the %s %s, which keyguard's handler cannot hand dumps on to: the dump is not written", next.Kind(), next.Path)
	}
	if next.Pipe {
		cmd := exec.CommandContext(ctx, next.Argv[0], next.Argv[1:]...)
		cmd.Stdin = in
		cmd.Dir = "/"
		// %F: like the kernel, give the helper a pidfd of the crashing process at fd 3.
		if pid, err := strconv.Atoi(v.GlobalPID); err == nil {
			if fd, err := unix.PidfdOpen(pid, 0); err == nil {
				pidfd := os.NewFile(uintptr(fd), "pidfd")
				defer pidfd.Close()
				cmd.ExtraFiles = []*os.File{pidfd} // fd 3 == corepattern.PidFDNumber
			}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", next.Argv[0], err, out)
		}
		return nil
	}
	path := resolvePath(next.Path, cwd)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create core file: %w", err)
	}
	uid, _ := strconv.Atoi(v.UID)
	gid, _ := strconv.Atoi(v.GID)
	_ = f.Chown(uid, gid) // the kernel would have created it as the dumping process
	if _, err := io.Copy(f, in); err != nil {
		f.Close()
		return fmt.Errorf("write core file: %w", err)
	}
	return f.Close()
}

func drain(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func (h *Handler) logf(format string, a ...any) {
	if h.Kmsg != nil {
		fmt.Fprintf(h.Kmsg, "keyguard-dump-handler: "+format+"\n", a...)
	}
}

const discarded = keyguardv1.CoreDumpAction_CORE_DUMP_ACTION_DISCARDED

// redactedBytes lists the bytes redacted per kind of memory, by kind.
func redactedBytes(m map[string]uint64) []*keyguardv1.RedactedBytes {
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var out []*keyguardv1.RedactedBytes
	for _, k := range kinds {
		out = append(out, &keyguardv1.RedactedBytes{Kind: k, Bytes: m[k]})
	}
	return out
}

// report hands the event to the agent (which names the rule, logs and exports it); if the agent is not
// reachable it is appended to the agent's event log so it is not lost, with the rule's id for a name.
func (h *Handler) report(st corepattern.State, rule uint32, ev *keyguardv1.Event) {
	if st.ControlSocket != "" {
		req := control.Request{Op: "report-dump", Dump: &control.Event{Event: ev}, DumpRuleID: rule}
		if _, err := control.Call(st.ControlSocket, req); err == nil {
			return
		}
	}
	if rule != 0 {
		ev.GetCoreDump().Rule = fmt.Sprintf("rule-%08x", rule)
	}
	if st.EventLog != "" && st.EventLog != "-" {
		j, err := events.OpenJSONLines(st.EventLog, time.Hour)
		if err == nil {
			_ = j.Write(ev)
			_ = j.Close()
			return
		}
	}
	h.logf("could not report a core-dump event: %v", ev.GetCoreDump())
}
