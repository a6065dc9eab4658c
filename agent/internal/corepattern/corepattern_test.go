package corepattern

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var vals = Values{PID: "12", GlobalPID: "1012", TID: "13", GlobalTID: "1013", UID: "1000", GID: "100",
	DumpMode: "1", Signal: "11", Time: "1700000000", Hostname: "signer-01", CoreLimit: "18446744073709551615",
	Comm: "my signer", Exe: "/usr/local/bin/signer", CPU: "2", PidFD: "3"}

func TestExpand(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		want    Parsed
	}{
		{"|/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h %d",
			Parsed{Pipe: true, Argv: []string{"/lib/systemd/systemd-coredump", "1012", "1000", "100", "11", "1700000000", "9223372036854775808", "signer-01", "1"}}},
		{"|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E",
			Parsed{Pipe: true, Argv: []string{"/usr/share/apport/apport", "-p12", "-s11", "-c18446744073709551615", "-d1", "-P1012", "-u1000", "-g100", "--", "!usr!local!bin!signer"}}},
		{"core", Parsed{Path: "core"}},
		{"/var/crash/core.%e.%p.%%.%f.%Z", Parsed{Path: "/var/crash/core.my signer.12.%.signer."}},
		// A value with a space stays one argument (the kernel splits before expanding).
		{"|/bin/h %e", Parsed{Pipe: true, Argv: []string{"/bin/h", "my signer"}}},
		// %C and %F (a pidfd at fd 3, pipe helpers only); a file pattern drops %F like the kernel.
		{"|/lib/systemd/systemd-coredump %P %u %g %s %t %c %h %d %F %C", Parsed{Pipe: true, Argv: []string{
			"/lib/systemd/systemd-coredump", "1012", "1000", "100", "11", "1700000000", "18446744073709551615", "signer-01", "1", "3", "2"}}},
		{"/var/crash/core.%F.%C.%p", Parsed{Path: "/var/crash/core..2.12"}},
		// Socket patterns (6.16): the path is literal, specifiers included.
		{"@/run/systemd/coredump", Parsed{Socket: true, Path: "/run/systemd/coredump"}},
		{"@@/run/systemd/coredump", Parsed{Socket: true, SocketRequest: true, Path: "/run/systemd/coredump"}},
		{"@/run/core.%p", Parsed{Socket: true, Path: "/run/core.%p"}},
		{"@/run/a..b", Parsed{Socket: true, Path: "/run/a..b"}},
	} {
		got, err := Expand(tc.pattern, vals)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Expand(%q) = %+v, %v; want %+v", tc.pattern, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "|", "|   ", "@", "@@", "@run/core", "@@run/core", "@/run/core dump",
		"@/run/../tmp/core", "@/" + strings.Repeat("s", 107)} {
		if _, err := Expand(bad, vals); err == nil {
			t.Errorf("Expand(%q) succeeded", bad)
		}
	}
}

func TestInstallRestore(t *testing.T) {
	d := t.TempDir()
	s := Sys{Pattern: filepath.Join(d, "core_pattern"), PipeLimit: filepath.Join(d, "core_pipe_limit")}
	orig := "|/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h %d"
	os.WriteFile(s.Pattern, []byte(orig+"\n"), 0o644)
	os.WriteFile(s.PipeLimit, []byte("0\n"), 0o644)
	state := filepath.Join(d, "state")
	if err := s.Install(state, "/usr/sbin/keyguard-agent", State{PinPath: "/sys/fs/bpf/keyguard"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(s.Pattern)
	if string(got) != Pattern("/usr/sbin/keyguard-agent") {
		t.Fatalf("installed pattern %q", got)
	}
	if l, _ := os.ReadFile(s.PipeLimit); string(l) != "16" {
		t.Fatalf("pipe limit %q, want 16", l)
	}
	// A restarted agent installs again: the original pattern stays the one to restore.
	if err := s.Install(state, "/usr/sbin/keyguard-agent", State{}); err != nil {
		t.Fatal(err)
	}
	st, err := Load(state)
	if err != nil || st.Previous != orig || st.PreviousPipeLimit != "0" {
		t.Fatalf("state %+v, %v", st, err)
	}
	if err := s.Restore(state); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(s.Pattern); string(got) != orig {
		t.Fatalf("restored %q", got)
	}
	if l, _ := os.ReadFile(s.PipeLimit); string(l) != "0" {
		t.Fatalf("restored pipe limit %q", l)
	}
	if err := s.Restore(state); err != nil {
		t.Fatalf("second restore: %v", err)
	}
	// Ours without state: refuse, since what to restore is unknown.
	os.WriteFile(s.Pattern, []byte(Pattern("/x")), 0o644)
	if err := s.Install(state, "/x", State{}); err == nil {
		t.Fatal("install over keyguard's own pattern without state succeeded")
	}
	// A path that makes the pattern too long.
	long := "/" + string(make([]byte, 120))
	if err := s.Install(state, long, State{}); err == nil {
		t.Fatal("a pattern over 127 bytes was accepted")
	}
}

func TestParsedKind(t *testing.T) {
	for pattern, want := range map[string]string{"|/bin/false": "pipe", "@/run/c": "socket", "@@/run/c": "socket request", "core": "file"} {
		p, err := Expand(pattern, vals)
		if err != nil || p.Kind() != want {
			t.Errorf("Expand(%q).Kind() = %q, %v; want %q", pattern, p.Kind(), err, want)
		}
	}
}
