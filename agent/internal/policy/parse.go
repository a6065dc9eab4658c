package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	keyguardv1 "github.com/keyguard/keyguard/proto/keyguard/v1"
	"io"
	"path"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds the policy file; real policies are a few kilobytes.
const MaxFileSize = 1 << 20

var (
	nameRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	unitRE     = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]+\.(service|scope|slice|socket|mount|swap)$`)
	digitsRE   = regexp.MustCompile(`^[-+]?[0-9_]+$`)
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

// Parse parses and validates a policy from data; name is used in error messages (normally the file
// path). It touches no filesystem: whether executables exist is checked by Load. Every problem found
// is returned, joined with errors.Join; each is an *Error naming file, line, column and key.
func Parse(name string, data []byte) (*Policy, error) {
	p, errs := parse(name, data)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

type parser struct {
	file string
	errs []error
	pos  map[string]Pos
}

func (ps *parser) errorf(n *yaml.Node, key, format string, args ...any) {
	e := &Error{File: ps.file, Key: key, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	ps.errs = append(ps.errs, e)
}

func (ps *parser) mark(n *yaml.Node, key string) {
	ps.pos[key] = Pos{n.Line, n.Column}
}

// parse returns the policy built from everything that was valid, and the errors; the policy is nil
// only when the file could not be read as YAML at all. Load uses the partial policy to check
// executables too, so one run reports every problem.
func parse(name string, data []byte) (*Policy, []error) {
	ps := &parser{file: name, pos: map[string]Pos{}}
	root, errs := ps.document(data)
	if root == nil {
		return nil, errs
	}
	p := &Policy{Source: name, SHA256: sha256.Sum256(data), pos: ps.pos}
	f, ok := ps.fields(root, "", "version", "rules", "bpf_loaders", "sysctl_writers", "kernel_memory_readers", "side_doors", "modules",
		"key_managers", "raw_disk_readers", "package_managers", "routine_readers")
	if !ok {
		return nil, ps.errs
	}
	ps.version(root, f)
	ps.accessorLists(p, f)
	ps.modes(p, f)
	rv, ok := f["rules"]
	if !ok {
		ps.errorf(root, "", "missing \"rules:\"; list at least one rule (see the policy reference in the keyguard README)")
		return p, ps.errs
	}
	ps.rules(p, rv.val)
	return p, ps.errs
}

// document reads data as one YAML document and returns its root node, or nil and the errors when
// the file is too big, empty, not YAML, or more than one document.
func (ps *parser) document(data []byte) (*yaml.Node, []error) {
	fileErr := func(msg string) []error {
		return []error{&Error{File: ps.file, Msg: msg}}
	}
	if len(data) > MaxFileSize {
		return nil, fileErr(fmt.Sprintf("file is %d bytes, more than the %d a policy may have; is this the right file?", len(data), MaxFileSize))
	}
	const emptyMsg = "file is empty; a policy needs \"version: 1\" and a \"rules:\" list (see the policy reference in the keyguard README)"
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fileErr(emptyMsg)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fileErr(emptyMsg)
		}
		return nil, []error{ps.syntaxError(err)}
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, []error{ps.syntaxError(err)}
	default:
		ps.errorf(&extra, "", "a second YAML document starts here (after \"---\"); a policy file holds one document: put all rules under one \"rules:\" list")
		return nil, ps.errs
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, fileErr(emptyMsg)
		}
		root = root.Content[0]
	}
	root = deref(root)
	if isNull(root) {
		return nil, fileErr(emptyMsg)
	}
	return root, nil
}

// version checks the top-level "version: 1".
func (ps *parser) version(root *yaml.Node, f map[string]field) {
	if v, ok := f["version"]; !ok {
		ps.errorf(root, "", "missing \"version: 1\" at the top of the file")
	} else if n := v.val; n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Value != "1" {
		got := describe(n)
		if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
			got = n.Value
		}
		ps.errorf(n, "version", "unsupported version %s; this keyguard reads version 1 (write \"version: 1\")", got)
	}
}

// accessorLists reads the top-level lists of programs allowed a guarded access (bpf_loaders,
// sysctl_writers and the others) into p.
func (ps *parser) accessorLists(p *Policy, f map[string]field) {
	if v, ok := f["bpf_loaders"]; ok {
		p.BPFLoaders = ps.accessors(v.val, "bpf_loaders")
	}
	if v, ok := f["sysctl_writers"]; ok {
		p.SysctlWriters = ps.accessors(v.val, "sysctl_writers")
	}
	if v, ok := f["kernel_memory_readers"]; ok {
		p.KernelMemoryReaders = ps.accessors(v.val, "kernel_memory_readers")
	}
	if v, ok := f["key_managers"]; ok {
		p.KeyManagers = ps.accessors(v.val, "key_managers")
	}
	if v, ok := f["raw_disk_readers"]; ok {
		p.RawDiskReaders = ps.accessors(v.val, "raw_disk_readers")
	}
	if v, ok := f["package_managers"]; ok {
		p.PackageManagers = ps.accessors(v.val, "package_managers")
	}
	p.RoutineReaders = DefaultRoutineReaders
	if _, ok := f["routine_readers"]; ok {
		p.RoutineReaders = append([]string{}, ps.list(f, "", "routine_readers", ps.checkExecutable)...)
	}
}

// modes reads the top-level side_doors and modules modes into p.
func (ps *parser) modes(p *Policy, f map[string]field) {
	if v, ok := f["side_doors"]; ok {
		if s, ok := ps.scalar(v.val, "side_doors"); ok {
			switch s {
			case "enforce":
				p.SideDoors = Enforce
			case "audit":
				p.SideDoors = Audit
			default:
				ps.errorf(v.val, "side_doors", "%q is not a mode; use enforce (refuse and report) or audit (report only)", s)
			}
		}
	}
	if v, ok := f["modules"]; ok {
		if s, ok := ps.scalar(v.val, "modules"); ok {
			switch s {
			case "deny":
				p.Modules = ModulesDeny
			case "audit":
				p.Modules = ModulesAudit
			case "allow":
				p.Modules = ModulesAllow
			default:
				ps.errorf(v.val, "modules", "%q is not a module mode; use deny (refuse and report), audit (report) or allow", s)
			}
		}
	}
}

// rules reads the "rules:" list n into p.Rules.
func (ps *parser) rules(p *Policy, n *yaml.Node) {
	rules := deref(n)
	switch {
	case isNull(rules) || (rules.Kind == yaml.SequenceNode && len(rules.Content) == 0):
		ps.errorf(rules, "rules", "empty; list at least one rule")
	case rules.Kind != yaml.SequenceNode:
		ps.errorf(rules, "rules", "must be a list of rules (each item starting with \"- name: ...\"), got %s", describe(rules))
	default:
		byName := map[string]string{}
		byID := map[uint32]string{SysctlWriterRule: "the sysctl_writers list", KernelMemoryRule: "the kernel_memory_readers list",
			KeyManagerRule: "the key_managers list", RawDiskRule: "the raw_disk_readers list", PackageMgrRule: "the package_managers list"}
		for i, rn := range rules.Content {
			// Invalid rules are kept too (Parse drops the whole policy on any error) so that Load
			// can still check their executables and report every problem in one run.
			p.Rules = append(p.Rules, ps.rule(rn, i, byName, byID))
		}
	}
}

func (ps *parser) syntaxError(err error) error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: ps.file, Line: line, Msg: "YAML syntax error: " + m[2], Err: err}
	}
	return &Error{File: ps.file, Msg: "YAML syntax error: " + strings.TrimPrefix(msg, "yaml: "), Err: err}
}

type field struct{ key, val *yaml.Node }

// fields checks that n is a mapping whose keys are all among known and none repeats. Unknown and
// repeated keys are errors (the first occurrence is kept). ok is false when n is not a mapping.
func (ps *parser) fields(n *yaml.Node, key string, known ...string) (map[string]field, bool) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		what := "the top level"
		if key != "" {
			what = "this"
		}
		ps.errorf(n, key, "%s must be a mapping (key: value lines) with keys %s, got %s", what, strings.Join(known, ", "), describe(n))
		return nil, false
	}
	out := map[string]field{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			ps.errorf(k, key, "keys must be plain words, got %s", describe(k))
			continue
		}
		sub := joinKey(key, k.Value)
		if !contains(known, k.Value) {
			msg := fmt.Sprintf("unknown key %q", k.Value)
			if s := suggest(k.Value, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else {
				msg += fmt.Sprintf(" (valid keys here: %s)", strings.Join(known, ", "))
			}
			ps.errorf(k, sub, "%s", msg)
			continue
		}
		if prev, dup := out[k.Value]; dup {
			ps.errorf(k, sub, "key repeated (first at line %d); remove one", prev.key.Line)
			continue
		}
		out[k.Value] = field{k, v}
		ps.mark(deref(v), sub)
	}
	return out, true
}

func (ps *parser) rule(rn *yaml.Node, i int, byName map[string]string, byID map[uint32]string) Rule {
	key := fmt.Sprintf("rules[%d]", i)
	rn = deref(rn)
	ps.mark(rn, key)
	r := Rule{index: i, Mode: Enforce, Dumps: DumpBlock}
	f, ok := ps.fields(rn, key, "name", "mode", "dumps", "severity", "match", "allow", "public_keys", "openers", "strict", "digests")
	if !ok {
		return r
	}
	if v, ok := f["name"]; !ok {
		ps.errorf(rn, key, "missing \"name\"; every rule needs a unique name such as \"token-signer\"")
	} else if s, ok := ps.scalar(v.val, key+".name"); ok {
		k := key + ".name"
		switch {
		case !nameRE.MatchString(s):
			ps.errorf(v.val, k, "%q is not a valid rule name: use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit", s)
		case byName[s] != "":
			ps.errorf(v.val, k, "duplicate rule name %q (also %s); rule names must be unique", s, byName[s])
		default:
			id := RuleID(s)
			if other, clash := byID[id]; clash {
				ps.errorf(v.val, k, "rule name %q has the same rule id (%#08x) as %s; rename one of them", s, id, other)
			} else {
				r.Name, r.ID = s, id
				byName[s] = fmt.Sprintf("%s at line %d", key, v.val.Line)
				byID[id] = fmt.Sprintf("%s %q", key, s)
			}
		}
	}
	if v, ok := f["mode"]; ok {
		if s, ok := ps.scalar(v.val, key+".mode"); ok {
			switch s {
			case "enforce":
				r.Mode = Enforce
			case "audit":
				r.Mode = Audit
			default:
				ps.errorf(v.val, key+".mode", "%q is not a mode; use enforce (deny and report) or audit (allow and report)", s)
			}
		}
	}
	if v, ok := f["dumps"]; ok {
		if s, ok := ps.scalar(v.val, key+".dumps"); ok {
			switch s {
			case "block":
				r.Dumps = DumpBlock
			case "redact":
				r.Dumps = DumpRedact
			case "allow":
				r.Dumps = DumpAllow
			default:
				ps.errorf(v.val, key+".dumps", "%q is not a dump mode; use block, redact or allow", s)
			}
		}
	}
	if v, ok := f["severity"]; ok {
		if s, ok := ps.scalar(v.val, key+".severity"); ok {
			if sv, ok := keyguardv1.ParseSeverity(s); ok {
				r.Severity = sv
			} else {
				ps.errorf(v.val, key+".severity", "%q is not a severity; use info, low, medium, high or critical", s)
			}
		}
	}
	if v, ok := f["match"]; !ok {
		ps.errorf(rn, key, "missing \"match\"; a rule selects processes by at least one of executables, cgroups or key_files")
	} else if mk := key + ".match"; isNull(deref(v.val)) {
		ps.errorf(v.val, mk, "empty; list at least one of executables, cgroups or key_files")
	} else if mf, ok := ps.fields(v.val, mk, "executables", "cgroups", "key_files"); ok {
		before := len(ps.errs)
		r.Executables = ps.list(mf, mk, "executables", ps.checkExecutable)
		r.Cgroups = ps.list(mf, mk, "cgroups", ps.checkCgroup)
		r.KeyFiles = ps.list(mf, mk, "key_files", ps.checkGlob)
		if len(ps.errs) == before && len(r.Executables)+len(r.Cgroups)+len(r.KeyFiles) == 0 {
			ps.errorf(v.val, mk, "no selector; list at least one of executables, cgroups or key_files")
		}
	}
	if v, ok := f["allow"]; ok {
		r.Allow = ps.accessors(v.val, key+".allow")
	}
	ps.openers(&r, rn, f, key)
	ps.strict(&r, rn, f, key)
	r.PublicKeys = ps.list(f, key, "public_keys", ps.checkGlob)
	return r
}

// strict reads a rule's `strict` switch and its approved `digests` ("sha256:" and 64 hex digits each).
// A strict rule admits to its key files only processes whose executable, one of the rule's, matched an
// approved digest when it was executed: it needs executables, key files and digests, and no openers
// (whose executables are not hashed).
func (ps *parser) strict(r *Rule, rn *yaml.Node, f map[string]field, key string) {
	if v, ok := f["strict"]; ok {
		n := deref(v.val)
		switch {
		case n.Kind == yaml.ScalarNode && n.Tag == "!!bool":
			r.Strict = n.Value == "true"
		default:
			ps.errorf(n, key+".strict", "%s: write true or false", describe(n))
		}
	}
	for _, s := range ps.list(f, key, "digests", ps.checkDigest) {
		b, _ := hex.DecodeString(strings.TrimPrefix(s, "sha256:"))
		r.Digests = append(r.Digests, [32]byte(b))
	}
	switch {
	case !r.Strict && len(r.Digests) > 0:
		ps.errorf(f["digests"].val, key+".digests", "digests are checked only in a strict rule: add \"strict: true\" or remove digests")
	case !r.Strict:
	case len(r.Digests) == 0:
		ps.errorf(f["strict"].val, key+".strict", "a strict rule needs approved digests: list each executable's SHA-256 as \"- sha256:HEX\" under digests (sha256sum FILE)")
	case len(r.Executables) == 0 || len(r.KeyFiles) == 0:
		ps.errorf(f["strict"].val, key+".strict", "strict guards key files for the rule's executables: the rule needs both executables and key_files")
	case r.AnyOpener || len(r.Openers) > 0:
		ps.errorf(f["strict"].val, key+".strict", "a strict rule admits only its own verified executables to its key files: remove openers (or strict)")
	}
}

func (ps *parser) checkDigest(n *yaml.Node, key, s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	if _, err := hex.DecodeString(h); !ok || err != nil || len(h) != 64 {
		ps.errorf(n, key, "%q is not a digest; write \"sha256:\" and the 64 hex digits sha256sum prints for the executable", s)
		return false
	}
	return true
}

// list reads f[name] as a list of strings, each checked by check. A missing or null list is empty.
// Repeated entries are errors.
func (ps *parser) list(f map[string]field, key, name string, check func(n *yaml.Node, key, s string) bool) []string {
	v, ok := f[name]
	if !ok {
		return nil
	}
	key = joinKey(key, name)
	n := deref(v.val)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		hint := ""
		if n.Kind == yaml.ScalarNode {
			hint = fmt.Sprintf("; write it as a list item: \"- %s\" on the next line", n.Value)
		}
		ps.errorf(n, key, "must be a list, got %s%s", describe(n), hint)
		return nil
	}
	var out []string
	seen := map[string]int{}
	for i, item := range n.Content {
		ik := fmt.Sprintf("%s[%d]", key, i)
		item = deref(item)
		ps.mark(item, ik)
		s, ok := ps.scalar(item, ik)
		if !ok || !check(item, ik, s) {
			continue
		}
		if line, dup := seen[s]; dup {
			ps.errorf(item, ik, "%q is listed twice (also at line %d); remove one", s, line)
			continue
		}
		seen[s] = item.Line
		out = append(out, s)
	}
	return out
}

// openers reads a rule's `openers`: "any" or a list of accessors. A rule whose key files have no
// holder by executable or cgroup must say who opens them.
func (ps *parser) openers(r *Rule, rn *yaml.Node, f map[string]field, key string) {
	v, ok := f["openers"]
	if !ok {
		if len(r.KeyFiles) > 0 && len(r.Executables)+len(r.Cgroups) == 0 {
			ps.errorf(rn, key, "key_files with no executables or cgroups: say who may open them with \"openers\" "+
				"(a list of \"- executable: PATH\" with \"uid: N\"), or \"openers: any\" to let any process open them and "+
				"become protected (posture reports it: the opener can still print the key)")
		}
		return
	}
	if n := deref(v.val); n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		if n.Value != "any" {
			ps.errorf(n, key+".openers", "%q: write a list of accessors or \"any\"", n.Value)
			return
		}
		r.AnyOpener = true
	} else {
		r.Openers = ps.accessors(v.val, key+".openers")
	}
	if len(r.KeyFiles) == 0 {
		ps.errorf(v.val, key+".openers", "the rule has no key_files; openers say who may open them")
	}
}

func (ps *parser) accessors(n *yaml.Node, key string) []Accessor {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		ps.errorf(n, key, "must be a list of accessors (\"- executable: /usr/bin/gdb\" with \"uid: 0\"), got %s", describe(n))
		return nil
	}
	var out []Accessor
	seen := map[Accessor]int{}
	for i, item := range n.Content {
		ik := fmt.Sprintf("%s[%d]", key, i)
		item = deref(item)
		ps.mark(item, ik)
		f, ok := ps.fields(item, ik, "executable", "uid")
		if !ok {
			continue
		}
		var a Accessor
		good := true
		if v, ok := f["executable"]; !ok {
			ps.errorf(item, ik, "missing \"executable\" (the absolute path of the program allowed to read this rule's processes)")
			good = false
		} else if s, ok := ps.scalar(v.val, ik+".executable"); !ok || !ps.checkExecutable(deref(v.val), ik+".executable", s) {
			good = false
		} else {
			a.Executable = s
		}
		if v, ok := f["uid"]; !ok {
			ps.errorf(item, ik, "missing \"uid\" (a number, or \"any\")")
			good = false
		} else if u, anyUID, ok := ps.uid(deref(v.val), ik+".uid"); ok {
			a.UID, a.AnyUID = u, anyUID
		} else {
			good = false
		}
		if !good {
			continue
		}
		if line, dup := seen[a]; dup {
			ps.errorf(item, ik, "same executable and uid as the accessor at line %d; remove one", line)
			continue
		}
		seen[a] = item.Line
		out = append(out, a)
	}
	return out
}

func (ps *parser) uid(n *yaml.Node, key string) (uint32, bool, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && n.Value == "any" {
		return AnyUID, true, true
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!float" && digitsRE.MatchString(n.Value) {
		ps.errorf(n, key, "uid %s out of range; use 0 to %d, or \"any\"", n.Value, MaxUID)
		return 0, false, false
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		var v int64
		if err := n.Decode(&v); err == nil && v >= 0 && v <= int64(MaxUID) {
			return uint32(v), false, true
		}
		ps.errorf(n, key, "uid %s out of range; use 0 to %d, or \"any\"", n.Value, MaxUID)
		return 0, false, false
	}
	ps.errorf(n, key, "must be a numeric uid (0 to %d) or \"any\", got %s", MaxUID, describe(n))
	return 0, false, false
}

// scalar returns n's text if n is a non-null scalar.
func (ps *parser) scalar(n *yaml.Node, key string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || isNull(n) {
		ps.errorf(n, key, "must be a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (ps *parser) checkAbs(n *yaml.Node, key, s string) bool {
	switch {
	case s == "":
		ps.errorf(n, key, "empty path")
	case strings.IndexByte(s, 0) >= 0:
		ps.errorf(n, key, "path contains a NUL byte")
	case len(s) >= 4096:
		ps.errorf(n, key, "path is longer than PATH_MAX (4096)")
	case !strings.HasPrefix(s, "/"):
		ps.errorf(n, key, "%q is a relative path; write the absolute path (starting with /)", s)
	default:
		return true
	}
	return false
}

func (ps *parser) checkExecutable(n *yaml.Node, key, s string) bool {
	if !ps.checkAbs(n, key, s) {
		return false
	}
	switch {
	case s == "/":
		ps.errorf(n, key, "\"/\" is a directory, not an executable file")
	case strings.ContainsAny(s, "*?["):
		ps.errorf(n, key, "%q: executables are exact paths, not globs; list each executable", s)
	case path.Clean(s) != s:
		ps.errorf(n, key, "%q is not a clean path; write %q", s, path.Clean(s))
	default:
		return true
	}
	return false
}

func (ps *parser) checkCgroup(n *yaml.Node, key, s string) bool {
	switch {
	case s == "":
		ps.errorf(n, key, "empty cgroup; write a systemd unit name (\"signer.service\") or an absolute cgroup v2 path (\"/system.slice/signer.service\")")
	case strings.HasPrefix(s, "/sys/fs/cgroup"):
		ps.errorf(n, key, "%q: write the cgroup path relative to the cgroup2 mount, e.g. %q", s, "/"+strings.TrimLeft(strings.TrimPrefix(strings.TrimPrefix(s, "/sys/fs/cgroup"), "/unified"), "/"))
	case strings.HasPrefix(s, "/"):
		switch {
		case s == "/":
			ps.errorf(n, key, "\"/\" is the root cgroup, which holds every process; name a unit or a cgroup below it")
		case strings.ContainsAny(s, "*?[\x00"):
			ps.errorf(n, key, "%q: cgroup paths are exact paths, not globs", s)
		case path.Clean(s) != s:
			ps.errorf(n, key, "%q is not a clean path; write %q", s, path.Clean(s))
		default:
			return true
		}
	case strings.Contains(s, "/"):
		ps.errorf(n, key, "%q: cgroup paths are absolute (\"/%s\"); a bare name is a systemd unit", s, s)
	case strings.HasSuffix(s, "@.service") || strings.HasSuffix(s, "@.socket"):
		ps.errorf(n, key, "%q is a template unit, which has no cgroup; name an instance such as %q", s, strings.Replace(s, "@.", "@instance.", 1))
	case !unitRE.MatchString(s) || len(s) > 255:
		ps.errorf(n, key, "%q is neither an absolute cgroup path nor a systemd unit name (such as \"signer.service\"; units with cgroups end in .service, .scope, .slice, .socket, .mount or .swap)", s)
	default:
		return true
	}
	return false
}

func (ps *parser) checkGlob(n *yaml.Node, key, s string) bool {
	if !ps.checkAbs(n, key, s) {
		return false
	}
	if err := validGlob(s); err != nil {
		ps.errorf(n, key, "%q: %v", s, err)
		return false
	}
	return true
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func describe(n *yaml.Node) string {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.DocumentNode:
		return "a document"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "an empty value"
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return strconv.Quote(n.Value)
	}
	return "an alias"
}

func joinKey(key, name string) string {
	if key == "" {
		return name
	}
	return key + "." + name
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// suggest returns the known key closest to s when it is a likely typo (edit distance ≤ 2).
func suggest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
