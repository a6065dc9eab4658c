package dumphandler

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/corepattern"
)

func TestViaPipe(t *testing.T) {
	d := t.TempDir()
	helper := filepath.Join(d, "systemd-coredump")
	if err := os.WriteFile(helper, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	receivers := map[string][]string{"/run/systemd/coredump": {filepath.Join(d, "missing"), helper}}
	v := corepattern.Values{GlobalPID: "1012", UID: "0", GID: "0", Signal: "11", Time: "1700000000", Hostname: "h", DumpMode: "1", PidFD: "3"}
	for _, tc := range []struct {
		pattern string
		want    corepattern.Parsed
	}{
		{"@/run/systemd/coredump", corepattern.Parsed{Pipe: true, Argv: []string{helper, "1012", "0", "0", "11", "1700000000", "9223372036854775808", "h", "1", "3"}}},
		{"@@/run/systemd/coredump", corepattern.Parsed{Pipe: true, Argv: []string{helper, "1012", "0", "0", "11", "1700000000", "9223372036854775808", "h", "1", "3"}}},
		{"@/run/other.sock", corepattern.Parsed{Socket: true, Path: "/run/other.sock"}},
		{"|/bin/false", corepattern.Parsed{Pipe: true, Argv: []string{"/bin/false"}}},
	} {
		next, err := corepattern.Expand(tc.pattern, v)
		if err != nil {
			t.Fatal(err)
		}
		if got := viaPipe(next, v, receivers); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %+v, want %+v", tc.pattern, got, tc.want)
		}
	}
	// No helper installed: the socket stays, and passOn refuses it.
	next, _ := corepattern.Expand("@/run/systemd/coredump", v)
	if got := viaPipe(next, v, map[string][]string{"/run/systemd/coredump": {filepath.Join(d, "missing")}}); !got.Socket {
		t.Errorf("without a helper: %+v", got)
	}
	if err := passOn(t.Context(), next, nil, "/", v); err == nil {
		t.Error("passOn handed a dump to an unknown socket")
	}
}
