package policy

import (
	"slices"
	"testing"
)

// routine_readers: absent gives the defaults, a list replaces them, an empty list has none; paths are
// checked like executables.
func TestRoutineReaders(t *testing.T) {
	const rule = "rules:\n  - name: s\n    match: {executables: [/usr/bin/signer]}\n"
	for _, tc := range []struct {
		name, yaml string
		want       []string
		err        string
	}{
		{"absent", "version: 1\n" + rule, DefaultRoutineReaders, ""},
		{"replaced", "version: 1\nroutine_readers: [/usr/bin/ps]\n" + rule, []string{"/usr/bin/ps"}, ""},
		{"none", "version: 1\nroutine_readers: []\n" + rule, []string{}, ""},
		{"relative", "version: 1\nroutine_readers: [ps]\n" + rule, nil, "relative path"},
		{"glob", "version: 1\nroutine_readers: [/usr/bin/p*]\n" + rule, nil, "not globs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tc.yaml))
			if tc.err != "" {
				checkErrors(t, err, []want{{"p.yaml:2:", tc.err}})
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(p.RoutineReaders, tc.want) {
				t.Errorf("routine readers %q, want %q", p.RoutineReaders, tc.want)
			}
		})
	}
}
