package policy

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// policyErrors returns the *Errors inside err (a single one or an errors.Join of them), failing the
// test if anything else is in there.
func policyErrors(t *testing.T, err error) []*Error {
	t.Helper()
	if err == nil {
		return nil
	}
	list := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	}
	var out []*Error
	for _, e := range list {
		var pe *Error
		if !errors.As(e, &pe) {
			t.Fatalf("error %q is not a *policy.Error", e)
		}
		out = append(out, pe)
	}
	return out
}

// want is one expected error: the exact "file:line:col: key: " prefix and a piece of the message.
type want struct {
	prefix string
	msg    string
}

func checkErrors(t *testing.T, err error, wants []want) {
	t.Helper()
	got := policyErrors(t, err)
	if len(got) != len(wants) {
		t.Fatalf("got %d errors, want %d:\n%v", len(got), len(wants), err)
	}
	for i, w := range wants {
		s := got[i].Error()
		if !strings.HasPrefix(s, w.prefix) || !strings.Contains(s[len(w.prefix):], w.msg) {
			t.Errorf("error %d = %q\nwant prefix %q and message containing %q", i, s, w.prefix, w.msg)
		}
	}
}

// rule0 is a valid rule body; cases replace pieces of it.
const head = "version: 1\nrules:\n"

var parseCases = []struct {
	name string
	yaml string
	want []want
}{
	{"empty file", "", []want{{"p.yaml: ", "file is empty"}}},
	{"only whitespace", "  \n\n", []want{{"p.yaml: ", "file is empty"}}},
	{"only comments", "# nothing here\n", []want{{"p.yaml: ", "file is empty"}}},
	{"null document", "~\n", []want{{"p.yaml: ", "file is empty"}}},
	{"syntax error", "version: 1\nrules:\n  - name: a\n   mode: audit\n", []want{{"p.yaml:2: ", "YAML syntax error: did not find expected '-' indicator"}}},
	{"tab indentation", "version: 1\nrules:\n\t- name: a\n", []want{{"p.yaml:3: ", "YAML syntax error: "}}},
	{"two documents", "version: 1\n---\nversion: 1\n", []want{{"p.yaml:2:1: ", "second YAML document starts here"}}},
	{"top level list", "- version: 1\n", []want{{"p.yaml:1:1: ", "top level must be a mapping"}}},
	{"unknown top key", head + "  - name: a\n    match: {executables: [/bin/sh]}\nrule: x\n", []want{{"p.yaml:5:1: rule: ", `unknown key "rule" (did you mean "rules"?)`}}},
	{"missing version", "rules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:1:1: ", `missing "version: 1"`}}},
	{"version 2", "version: 2\nrules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:1:10: version: ", "unsupported version 2"}}},
	{"version string", "version: \"1\"\nrules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:1:10: version: ", `unsupported version "1"`}}},
	{"missing rules", "version: 1\n", []want{{"p.yaml:1:1: ", `missing "rules:"`}}},
	{"bad side_doors", "version: 1\nside_doors: off\nrules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:2:13: side_doors: ", `"off" is not a mode`}}},
	{"bad modules", "version: 1\nmodules: enforce\nrules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:2:10: modules: ", `"enforce" is not a module mode`}}},
	{"sysctl writer relative", "version: 1\nsysctl_writers: [{executable: sysctl, uid: 0}]\nrules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:2:31: sysctl_writers[0].executable: ", "absolute"}}},
	{"empty rules", "version: 1\nrules: []\n", []want{{"p.yaml:2:8: rules: ", "empty; list at least one rule"}}},
	{"null rules", "version: 1\nrules:\n", []want{{"p.yaml:2:7: rules: ", "empty; list at least one rule"}}},
	{"rules mapping", "version: 1\nrules:\n  name: a\n", []want{{"p.yaml:3:3: rules: ", "must be a list of rules"}}},
	{"rule is a string", head + "  - token-signer\n", []want{{"p.yaml:3:5: rules[0]: ", "must be a mapping"}}},
	{"missing name", head + "  - mode: audit\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:3:5: rules[0]: ", `missing "name"`}}},
	{"bad name", head + "  - name: Token_Signer\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:3:11: rules[0].name: ", `"Token_Signer" is not a valid rule name`}}},
	{"name too long", head + "  - name: " + strings.Repeat("a", 64) + "\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:3:11: rules[0].name: ", "is not a valid rule name"}}},
	{"name is a list", head + "  - name: [a]\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:3:11: rules[0].name: ", "must be a string, got a list"}}},
	{"duplicate names", head + "  - name: a\n    match: {executables: [/bin/sh]}\n  - name: a\n    match: {executables: [/bin/ls]}\n",
		[]want{{"p.yaml:5:11: rules[1].name: ", `duplicate rule name "a" (also rules[0] at line 3)`}}},
	{"duplicate key", head + "  - name: a\n    name: b\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:4:5: rules[0].name: ", "key repeated (first at line 3)"}}},
	{"bad mode", head + "  - name: a\n    mode: enforcing\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:4:11: rules[0].mode: ", `"enforcing" is not a mode; use enforce`}}},
	{"mode list", head + "  - name: a\n    mode: [audit]\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:4:11: rules[0].mode: ", "must be a string, got a list"}}},
	{"bad dumps", head + "  - name: a\n    dumps: strip\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:4:12: rules[0].dumps: ", `"strip" is not a dump mode; use block, redact or allow`}}},
	{"key files without holders or openers", head + "  - name: a\n    match: {key_files: [/k/*.pem]}\n", []want{{"p.yaml:3:5: rules[0]: ", `key_files with no executables or cgroups: say who may open them with "openers"`}}},
	{"openers not any", head + "  - name: a\n    match: {key_files: [/k/*.pem]}\n    openers: everyone\n", []want{{"p.yaml:5:14: rules[0].openers: ", `"everyone": write a list of accessors or "any"`}}},
	{"openers without key files", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    openers: any\n", []want{{"p.yaml:5:14: rules[0].openers: ", "the rule has no key_files"}}},
	{"key manager without uid", "version: 1\nkey_managers: [{executable: /bin/cp}]\nrules:\n  - name: a\n    match: {executables: [/bin/sh]}\n", []want{{"p.yaml:2:16: key_managers[0]: ", `missing "uid"`}}},
	{"missing match", head + "  - name: a\n", []want{{"p.yaml:3:5: rules[0]: ", `missing "match"`}}},
	{"strict without digests", head + "  - name: a\n    match: {executables: [/bin/s], key_files: [/k/a]}\n    strict: true\n", []want{{"p.yaml:5:13: rules[0].strict: ", `a strict rule needs approved digests`}}},
	{"digests without strict", head + "  - name: a\n    match: {executables: [/bin/s], key_files: [/k/a]}\n    digests: [sha256:abababababababababababababababababababababababababababababababab]\n", []want{{"p.yaml:5:14: rules[0].digests: ", `digests are checked only in a strict rule`}}},
	{"bad digest", head + "  - name: a\n    match: {executables: [/bin/s], key_files: [/k/a]}\n    strict: true\n    digests: [md5:abc, sha256:abc]\n", []want{
		{"p.yaml:6:15: rules[0].digests[0]: ", `"md5:abc" is not a digest; write "sha256:" and the 64 hex digits`},
		{"p.yaml:6:24: rules[0].digests[1]: ", `"sha256:abc" is not a digest`},
		{"p.yaml:5:13: rules[0].strict: ", `a strict rule needs approved digests`}}},
	{"strict not a bool", head + "  - name: a\n    match: {executables: [/bin/s], key_files: [/k/a]}\n    strict: yes please\n    digests: [sha256:abababababababababababababababababababababababababababababababab]\n", []want{
		{"p.yaml:5:13: rules[0].strict: ", `"yes please": write true or false`},
		{"p.yaml:6:14: rules[0].digests: ", `digests are checked only in a strict rule`}}},
	{"strict without key files", head + "  - name: a\n    match: {executables: [/bin/s]}\n    strict: true\n    digests: [sha256:abababababababababababababababababababababababababababababababab]\n", []want{{"p.yaml:5:13: rules[0].strict: ", `needs both executables and key_files`}}},
	{"strict with openers", head + "  - name: a\n    match: {executables: [/bin/s], key_files: [/k/a]}\n    openers: any\n    strict: true\n    digests: [sha256:abababababababababababababababababababababababababababababababab]\n", []want{{"p.yaml:6:13: rules[0].strict: ", `remove openers (or strict)`}}},
	{"null match", head + "  - name: a\n    match:\n", []want{{"p.yaml:4:11: rules[0].match: ", "empty; list at least one of"}}},
	{"no selector", head + "  - name: a\n    match:\n      executables: []\n      cgroups:\n", []want{{"p.yaml:5:7: rules[0].match: ", "no selector"}}},
	{"unknown match key", head + "  - name: a\n    match:\n      key_file: [/k]\n", []want{
		{"p.yaml:5:7: rules[0].match.key_file: ", `unknown key "key_file" (did you mean "key_files"?)`},
		{"p.yaml:5:7: rules[0].match: ", "no selector"}}},
	{"unknown key no suggestion", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    priority: 3\n", []want{{"p.yaml:5:5: rules[0].priority: ", `unknown key "priority" (valid keys here: name, mode, dumps, severity, match, allow, public_keys, openers, strict, digests)`}}},
	{"executables scalar", head + "  - name: a\n    match:\n      executables: /bin/sh\n", []want{{"p.yaml:5:20: rules[0].match.executables: ", `must be a list, got "/bin/sh"; write it as a list item: "- /bin/sh"`}}},
	{"relative executable", head + "  - name: a\n    match:\n      executables:\n        - /bin/sh\n        - bin/signer\n",
		[]want{{"p.yaml:7:11: rules[0].match.executables[1]: ", `"bin/signer" is a relative path`}}},
	{"executable glob", head + "  - name: a\n    match:\n      executables: [/usr/bin/sign*]\n", []want{{"p.yaml:5:21: rules[0].match.executables[0]: ", "exact paths, not globs"}}},
	{"executable unclean", head + "  - name: a\n    match:\n      executables: [/usr/bin/../bin/x/]\n", []want{{"p.yaml:5:21: rules[0].match.executables[0]: ", `is not a clean path; write "/usr/bin/x"`}}},
	{"executable number", head + "  - name: a\n    match:\n      executables: [42]\n", []want{{"p.yaml:5:21: rules[0].match.executables[0]: ", `"42" is a relative path`}}},
	{"executable null item", head + "  - name: a\n    match:\n      executables: [~]\n", []want{{"p.yaml:5:21: rules[0].match.executables[0]: ", "must be a string, got an empty value"}}},
	{"executable listed twice", head + "  - name: a\n    match:\n      executables:\n        - /bin/sh\n        - /bin/sh\n", []want{{"p.yaml:7:11: rules[0].match.executables[1]: ", `"/bin/sh" is listed twice (also at line 6)`}}},
	{"cgroup root", head + "  - name: a\n    match: {cgroups: [/]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", "root cgroup"}}},
	{"cgroup relative path", head + "  - name: a\n    match: {cgroups: [system.slice/x.service]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", `cgroup paths are absolute ("/system.slice/x.service")`}}},
	{"cgroup sysfs path", head + "  - name: a\n    match: {cgroups: [/sys/fs/cgroup/system.slice/x.service]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", `relative to the cgroup2 mount, e.g. "/system.slice/x.service"`}}},
	{"cgroup unit without type", head + "  - name: a\n    match: {cgroups: [signer]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", "neither an absolute cgroup path nor a systemd unit name"}}},
	{"cgroup template", head + "  - name: a\n    match: {cgroups: [getty@.service]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", `template unit, which has no cgroup; name an instance such as "getty@instance.service"`}}},
	{"cgroup glob", head + "  - name: a\n    match: {cgroups: [/system.slice/*.service]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", "not globs"}}},
	{"cgroup unclean", head + "  - name: a\n    match: {cgroups: [/system.slice/]}\n", []want{{"p.yaml:4:23: rules[0].match.cgroups[0]: ", `write "/system.slice"`}}},
	{"key glob bad class", head + "  - name: a\n    match:\n      key_files: [\"/etc/k/[a-.pem\"]\n", []want{{"p.yaml:5:19: rules[0].match.key_files[0]: ", `bad glob element "[a-.pem"`}}},
	{"key glob partial doublestar", head + "  - name: a\n    match:\n      key_files: [/etc/**.pem]\n", []want{{"p.yaml:5:19: rules[0].match.key_files[0]: ", `"**" must be a whole path element`}}},
	{"key glob trailing slash", head + "  - name: a\n    match:\n      key_files: [/etc/keys/]\n", []want{{"p.yaml:5:19: rules[0].match.key_files[0]: ", `ends with "/"`}}},
	{"key glob empty element", head + "  - name: a\n    match:\n      key_files: [/etc//k.pem]\n", []want{{"p.yaml:5:19: rules[0].match.key_files[0]: ", `empty path element`}}},
	{"key glob dotdot", head + "  - name: a\n    match:\n      key_files: [/etc/../k.pem]\n", []want{{"p.yaml:5:19: rules[0].match.key_files[0]: ", `".." element`}}},
	{"key glob relative", head + "  - name: a\n    match:\n      key_files: [\"*.pem\"]\n", []want{{"p.yaml:5:19: rules[0].match.key_files[0]: ", "relative path"}}},
	{"allow not a list", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow: /usr/bin/gdb\n", []want{{"p.yaml:5:12: rules[0].allow: ", "must be a list of accessors"}}},
	{"allow missing uid", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - executable: /usr/bin/gdb\n", []want{{"p.yaml:6:9: rules[0].allow[0]: ", `missing "uid"`}}},
	{"allow missing executable", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - uid: 0\n", []want{{"p.yaml:6:9: rules[0].allow[0]: ", `missing "executable"`}}},
	{"allow relative executable", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: gdb, uid: 0}\n", []want{{"p.yaml:6:22: rules[0].allow[0].executable: ", `"gdb" is a relative path`}}},
	{"uid too big", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, uid: 4294967295}\n", []want{{"p.yaml:6:41: rules[0].allow[0].uid: ", "uid 4294967295 out of range; use 0 to 4294967294"}}},
	{"uid huge", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, uid: 99999999999999999999999}\n", []want{{"p.yaml:6:41: rules[0].allow[0].uid: ", "out of range"}}},
	{"uid negative", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, uid: -1}\n", []want{{"p.yaml:6:41: rules[0].allow[0].uid: ", "uid -1 out of range"}}},
	{"uid name", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, uid: root}\n", []want{{"p.yaml:6:41: rules[0].allow[0].uid: ", `must be a numeric uid (0 to 4294967294) or "any", got "root"`}}},
	{"uid float", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, uid: 1.5}\n", []want{{"p.yaml:6:41: rules[0].allow[0].uid: ", "got the number 1.5"}}},
	{"allow duplicate", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, uid: any}\n      - {executable: /usr/bin/gdb, uid: any}\n", []want{{"p.yaml:7:9: rules[0].allow[1]: ", "same executable and uid as the accessor at line 6"}}},
	{"allow unknown key", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    allow:\n      - {executable: /usr/bin/gdb, user: 0}\n", []want{
		{"p.yaml:6:36: rules[0].allow[0].user: ", `unknown key "user"`},
		{"p.yaml:6:9: rules[0].allow[0]: ", `missing "uid"`}}},
	{"public key bad glob", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    public_keys: [\"/etc/pub/[\"]\n", []want{{"p.yaml:5:19: rules[0].public_keys[0]: ", "bad glob element"}}},
	{"public keys scalar", head + "  - name: a\n    match: {executables: [/bin/sh]}\n    public_keys: /etc/pub/a.pem\n", []want{{"p.yaml:5:18: rules[0].public_keys: ", "must be a list"}}},
	{"errors in several rules", head +
		"  - name: a\n    mode: on\n    match: {executables: [x]}\n" +
		"  - name: b\n    match: {cgroups: [c]}\n    allow: [{executable: /g, uid: -5}]\n",
		[]want{
			{"p.yaml:4:11: rules[0].mode: ", `"on" is not a mode`},
			{"p.yaml:5:27: rules[0].match.executables[0]: ", "relative path"},
			{"p.yaml:7:23: rules[1].match.cgroups[0]: ", "neither an absolute cgroup path"},
			{"p.yaml:8:35: rules[1].allow[0].uid: ", "out of range"},
		}},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted the policy: %+v", p)
			}
			if p != nil {
				t.Errorf("Parse returned a policy along with errors")
			}
			checkErrors(t, err, tc.want)
		})
	}
}

func TestParseTooBig(t *testing.T) {
	data := []byte(head + "# " + strings.Repeat("x", MaxFileSize) + "\n")
	_, err := Parse("p.yaml", data)
	checkErrors(t, err, []want{{"p.yaml: ", "more than the 1048576 a policy may have"}})
}

// TestRuleIDCollision finds two valid names with the same FNV-1a hash and checks that a policy using
// both is refused.
func TestRuleIDCollision(t *testing.T) {
	seen := map[uint32]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		n := fmt.Sprintf("r%d", i)
		if prev, ok := seen[RuleID(n)]; ok {
			a, b = prev, n
		}
		seen[RuleID(n)] = n
	}
	y := fmt.Sprintf(head+"  - name: %s\n    match: {executables: [/bin/sh]}\n  - name: %s\n    match: {executables: [/bin/ls]}\n", a, b)
	_, err := Parse("p.yaml", []byte(y))
	checkErrors(t, err, []want{{"p.yaml:5:11: rules[1].name: ", fmt.Sprintf("rule name %q has the same rule id (%#08x) as rules[0] %q; rename one of them", b, RuleID(a), a)}})
}

func TestRuleIDStable(t *testing.T) {
	// FNV-1a 32 of "token-signer"; the kernel maps and stored events use this number, so it must not
	// change between releases.
	if got := RuleID("token-signer"); got != 0xf4de8ebb {
		t.Errorf("RuleID(token-signer) = %#x, want 0xf4de8ebb", got)
	}
	if RuleID("") == 0 {
		t.Error("RuleID returned 0")
	}
}

func TestParseExample(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("example.yaml", data)
	if err != nil {
		t.Fatalf("example does not parse: %v", err)
	}
	if len(p.Rules) != 2 {
		t.Fatalf("got %d rules, want 2", len(p.Rules))
	}
	r := p.Rules[0]
	wantRule := Rule{
		Name: "token-signer", ID: RuleID("token-signer"), Mode: Enforce, Dumps: DumpRedact,
		Executables: []string{"/usr/local/bin/signer"},
		Cgroups:     []string{"signer.service", "/system.slice/signer-helper.service"},
		KeyFiles:    []string{"/etc/signer/keys/*.pem", "/var/lib/signer/**/*.key"},
		Allow:       []Accessor{{Executable: "/usr/bin/gdb", UID: 0}},
		PublicKeys:  []string{"/etc/signer/pub/*.pem"},
	}
	if fmt.Sprintf("%+v", r) != fmt.Sprintf("%+v", wantRule) {
		t.Errorf("rule 0 =\n%+v\nwant\n%+v", r, wantRule)
	}
	r = p.Rules[1]
	if r.Name != "ci-release-signing" || r.Mode != Audit || r.Dumps != DumpBlock || len(r.KeyFiles) != 1 {
		t.Errorf("rule 1 = %+v", r)
	}
	if got := p.Where("rules[0].match.executables[0]"); got != "example.yaml:17:11: rules[0].match.executables[0]" {
		t.Errorf("Where = %q", got)
	}
}

func TestParseOpenersAndManagers(t *testing.T) {
	y := `version: 1
key_managers: [{executable: /usr/bin/install, uid: 0}]
raw_disk_readers: [{executable: /usr/sbin/blkid, uid: any}]
package_managers: [{executable: /usr/bin/dpkg, uid: 0}]
rules:
  - name: a
    match: {key_files: [/k/a.pem]}
    openers: any
  - name: b
    match: {key_files: [/k/b.pem]}
    openers: [{executable: /usr/bin/signer, uid: 1000}]
  - name: c
    match: {key_files: [/k/c.pem], executables: [/usr/bin/signer]}
`
	p, err := Parse("p.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.KeyManagers) != 1 || len(p.RawDiskReaders) != 1 || !p.RawDiskReaders[0].AnyUID || len(p.PackageManagers) != 1 {
		t.Errorf("lists: %+v %+v %+v", p.KeyManagers, p.RawDiskReaders, p.PackageManagers)
	}
	if a := p.Rules[0]; !a.AnyOpener || a.Openers != nil {
		t.Errorf("rule a: %+v", a)
	}
	if b := p.Rules[1]; b.AnyOpener || len(b.Openers) != 1 || b.Openers[0].UID != 1000 {
		t.Errorf("rule b: %+v", b)
	}
	if c := p.Rules[2]; c.AnyOpener || c.Openers != nil {
		t.Errorf("rule c: %+v", c)
	}
}

func TestParseDefaultsAndForms(t *testing.T) {
	y := head + `  - name: a
    match:
      executables: [/bin/sh]
      key_files:
    allow:
      - {executable: /usr/bin/gdb, uid: any}
      - {executable: /usr/bin/gdb, uid: 0x3e8}
  - &b
    name: b.2_x
    mode: audit
    dumps: allow
    match: {cgroups: [user@1000.service, "/kubepods/pod1/x"]}
`
	p, err := Parse("p.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Rules[0]
	if a.Mode != Enforce || a.Dumps != DumpBlock || a.KeyFiles != nil {
		t.Errorf("defaults: %+v", a)
	}
	if len(a.Allow) != 2 || !a.Allow[0].AnyUID || a.Allow[0].UID != AnyUID || a.Allow[1].AnyUID || a.Allow[1].UID != 1000 {
		t.Errorf("allow: %+v", a.Allow)
	}
	b := p.Rules[1]
	if b.Name != "b.2_x" || b.Mode != Audit || b.Dumps != DumpAllow || len(b.Cgroups) != 2 {
		t.Errorf("rule b: %+v", b)
	}
	if p.SideDoors != Enforce || p.Modules != ModulesDeny || p.SysctlWriters != nil || p.KernelMemoryReaders != nil {
		t.Errorf("side-door defaults: %v %v %v %v", p.SideDoors, p.Modules, p.SysctlWriters, p.KernelMemoryReaders)
	}
	p, err = Parse("p.yaml", []byte("version: 1\nside_doors: audit\nmodules: audit\nsysctl_writers: [{executable: /usr/sbin/sysctl, uid: 0}]\n"+
		"kernel_memory_readers: [{executable: /usr/sbin/dmidecode, uid: any}]\n"+y[len(head)-len("rules:\n"):]))
	if err != nil {
		t.Fatal(err)
	}
	if p.SideDoors != Audit || p.Modules != ModulesAudit || len(p.SysctlWriters) != 1 || p.SysctlWriters[0].UID != 0 ||
		len(p.KernelMemoryReaders) != 1 || !p.KernelMemoryReaders[0].AnyUID {
		t.Errorf("side-door settings: %+v", p)
	}
}

func TestErrorUnwrap(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(dir + "/absent.yaml")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) = %v, want an error wrapping ErrNotExist", err)
	}
}

func TestParseStrict(t *testing.T) {
	y := `version: 1
rules:
  - name: a
    match: {executables: [/usr/bin/signer], key_files: [/k/a.pem]}
    strict: true
    digests:
      - sha256:00000000000000000000000000000000000000000000000000000000000000ff
      - sha256:ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB
  - name: b
    match: {executables: [/usr/bin/other]}
    strict: false
`
	p, err := Parse("p.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	a, b := p.Rules[0], p.Rules[1]
	if !a.Strict || len(a.Digests) != 2 || a.Digests[0][31] != 0xff || a.Digests[1][0] != 0xab {
		t.Errorf("rule a: strict %v digests %x", a.Strict, a.Digests)
	}
	if b.Strict || b.Digests != nil {
		t.Errorf("rule b: strict %v digests %x", b.Strict, b.Digests)
	}
}
