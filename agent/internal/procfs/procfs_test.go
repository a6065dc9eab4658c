package procfs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeProc writes files under a temporary procfs root: name → content.
func fakeProc(t *testing.T, files map[string]string) FS {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return FS{Root: root}
}

const signerStatus = "Name:\tsigner\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t1\nTracerPid:\t0\n" +
	"Uid:\t998\t999\t999\t999\nGid:\t997\t996\t996\t996\n"

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Status
	}{
		{"service", signerStatus, Status{Name: "signer", UID: 998, EUID: 999, GID: 997, EGID: 996, hasUID: true}},
		{"traced", "Name:\tgdb victim\nTracerPid:\t4242\nUid:\t0\t0\t0\t0\n", Status{Name: "gdb victim", TracerPID: 4242, hasUID: true}},
		{"short uid line", "Uid:\t5\n", Status{}},
		{"empty", "", Status{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseStatus([]byte(tc.in)); got != tc.want {
				t.Errorf("ParseStatus = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestFakeTree(t *testing.T) {
	fs := fakeProc(t, map[string]string{
		"42/status":            signerStatus,
		"42/task/42/status":    "TracerPid:\t0\n",
		"42/task/43/status":    "TracerPid:\t777\n",
		"42/cgroup":            "0::/system.slice/signer.service\n",
		"42/comm":              "signer\n",
		"42/stat":              "42 (sign er)) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5151 1000",
		"7/status":             "Name:\tnoise\n", // no Uid line
		"self/status":          signerStatus,     // not a pid
		"sys/kernel/x":         "",
		"43/task/43/status":    "TracerPid:\t0\n",
		"43/cgroup":            "12:cpu:/v1\n",
		"stat":                 "btime 1700000000\n",
		"42/fd/.keep-dir-ok":   "",
		"1000/status":          signerStatus,
		"1000/task/1/status":   "",
		"notapid123/status":    "",
		"0/status":             "",
		"-1/status":            "",
		"42/task/44/notstatus": "",
	})
	pids, err := fs.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(pids)
	if want := []int{7, 42, 43, 1000}; !slices.Equal(pids, want) {
		t.Errorf("PIDs = %v, want %v", pids, want)
	}
	st, err := fs.Status(42)
	if err != nil || st.EUID != 999 || st.Name != "signer" {
		t.Errorf("Status(42) = %+v, %v", st, err)
	}
	if _, err := fs.Status(7); err == nil {
		t.Error("Status of a file without a Uid line: want an error")
	}
	if _, err := fs.Status(99); err == nil {
		t.Error("Status of a missing process: want an error")
	}
	if got := fs.TracerPID(42); got != 777 {
		t.Errorf("TracerPID(42) = %d, want 777 (traced thread 43)", got)
	}
	if got := fs.TracerPID(43); got != 0 {
		t.Errorf("TracerPID(43) = %d, want 0", got)
	}
	if got := fs.Cgroup(42); got != "/system.slice/signer.service" {
		t.Errorf("Cgroup(42) = %q", got)
	}
	if got := fs.Cgroup(43); got != "" {
		t.Errorf("Cgroup(43) without a v2 line = %q, want empty", got)
	}
	if got := fs.Comm(42); got != "signer" {
		t.Errorf("Comm(42) = %q", got)
	}
	if got, err := fs.StartTicks(42); err != nil || got != 5151 {
		t.Errorf("StartTicks(42) = %d, %v; want 5151", got, err)
	}
	if got := fs.File("stat"); got != filepath.Join(fs.Root, "stat") {
		t.Errorf("File(stat) = %q", got)
	}
}

func TestRealProc(t *testing.T) {
	var fs FS
	pid := os.Getpid()
	st, err := fs.Status(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.EUID != uint32(os.Geteuid()) {
		t.Errorf("own euid %d, want %d", st.EUID, os.Geteuid())
	}
	exe, _ := os.Executable()
	if got := fs.Exe(pid); got != exe {
		t.Errorf("Exe = %q, want %q", got, exe)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if want := fs.Path(pid, "fd", fmt.Sprint(f.Fd())); !slices.Contains(fs.FDs(pid), want) {
		t.Errorf("FDs does not list %s", want)
	}
}

func TestParseStartTicks(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want uint64
		ok   bool
	}{
		{"1 (systemd) S 0 1 1 0 -1 4194560 35 0 0 0 5 10 0 0 20 0 1 0 27 1000 1 18446744073709551615", 27, true},
		// A comm with spaces and parentheses, and a negative nice value.
		{"42 (a) b (c)) R 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 -5 3 0 123456 1000", 123456, true},
		{"garbage", 0, false},
		{"1 (x) S 1 2", 0, false},
	} {
		got, err := ParseStartTicks([]byte(tc.stat))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseStartTicks(%q) = %d, %v; want %d ok=%v", tc.stat, got, err, tc.want, tc.ok)
		}
	}
	// Our own process: a real /proc/self/stat parses and the value is plausible (started before now).
	self, err := FS{}.StartTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/uptime")
	var up float64
	if _, err := fmt.Sscan(string(b), &up); err == nil && float64(self)/100 > up+1 {
		t.Errorf("start time %d ticks is after uptime %.1fs", self, up)
	}
}
