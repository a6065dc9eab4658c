package policy

import (
	"os"
	"path"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics; it returns either a policy that satisfies the documented invariants
// or only *Errors that name the file.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("testdata/example.yaml"); err == nil {
		f.Add(data)
	}
	for _, tc := range parseCases {
		f.Add([]byte(tc.yaml))
	}
	f.Add([]byte(head + "  - &a {name: a, match: {executables: [/bin/sh]}}\n  - *a\n"))
	f.Add([]byte(head + "  - name: a\n    match: {key_files: [\"/a/**/**/b/*.pem\"], cgroups: [a@b.service]}\n    allow: [{executable: /x, uid: 0x10}]\n"))
	f.Add([]byte("version: 1\nrules: !!map {a: b}\n"))
	f.Add([]byte("{version: 1, rules: [{name: a, match: {executables: [\"/\\u0000\"]}}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		if err != nil {
			if p != nil {
				t.Fatal("policy and error both returned")
			}
			for _, e := range policyErrors(t, err) {
				if e.File != "f.yaml" || e.Msg == "" || e.Line < 0 || e.Col < 0 {
					t.Fatalf("malformed error %#v", e)
				}
			}
			return
		}
		if len(p.Rules) == 0 {
			t.Fatal("valid policy without rules")
		}
		ids := map[uint32]bool{}
		for _, r := range p.Rules {
			if r.ID == 0 || r.ID != RuleID(r.Name) || ids[r.ID] || !nameRE.MatchString(r.Name) {
				t.Fatalf("bad rule identity %q %#x", r.Name, r.ID)
			}
			ids[r.ID] = true
			if len(r.Executables)+len(r.Cgroups)+len(r.KeyFiles) == 0 {
				t.Fatalf("rule %q has no selector", r.Name)
			}
			for _, s := range r.Executables {
				if s == "/" || path.Clean(s) != s || !path.IsAbs(s) || strings.ContainsAny(s, "*?[\x00") {
					t.Fatalf("rule %q: invalid executable %q accepted", r.Name, s)
				}
			}
			for _, s := range append(append([]string{}, r.KeyFiles...), r.PublicKeys...) {
				if validGlob(s) != nil {
					t.Fatalf("rule %q: invalid glob %q accepted", r.Name, s)
				}
			}
			for _, a := range r.Allow {
				if a.AnyUID != (a.UID == AnyUID) || !strings.HasPrefix(a.Executable, "/") {
					t.Fatalf("rule %q: bad accessor %+v", r.Name, a)
				}
			}
			if r.Mode > Audit || r.Dumps > DumpAllow {
				t.Fatalf("rule %q: bad mode %d/%d", r.Name, r.Mode, r.Dumps)
			}
		}
	})
}
