package posture

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// tree writes files (path → content; content "->target" makes a symlink) below a new temp root.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func find(t *testing.T, fs []Finding, name string) Finding {
	t.Helper()
	for _, f := range fs {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("no finding %q in %v", name, names(fs))
	return Finding{}
}

func names(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Name)
	}
	return out
}

// checker returns a Checker on fake proc and sys trees (each: path below the root → content).
func checker(t *testing.T, proc, sys, etc map[string]string) Checker {
	return Checker{ProcRoot: tree(t, proc), SysRoot: tree(t, sys), EtcRoot: tree(t, etc)}
}

func TestKernelSettings(t *testing.T) {
	cases := []struct {
		name, file, value string
		finding           string
		want              Severity
	}{
		{"yama classic", "sys/kernel/yama/ptrace_scope", "0\n", "kernel.yama.ptrace_scope", Low},
		{"yama restricted", "sys/kernel/yama/ptrace_scope", "1\n", "kernel.yama.ptrace_scope", Info},
		{"yama admin", "sys/kernel/yama/ptrace_scope", "2\n", "kernel.yama.ptrace_scope", Info},
		{"yama missing", "sys/kernel/other", "x", "kernel.yama.ptrace_scope", Low},
		{"perf open", "sys/kernel/perf_event_paranoid", "-1\n", "kernel.perf_event_paranoid", Medium},
		{"perf kernel", "sys/kernel/perf_event_paranoid", "1\n", "kernel.perf_event_paranoid", Low},
		{"perf user", "sys/kernel/perf_event_paranoid", "2\n", "kernel.perf_event_paranoid", Info},
		{"perf debian", "sys/kernel/perf_event_paranoid", "3\n", "kernel.perf_event_paranoid", Info},
		{"bpf open", "sys/kernel/unprivileged_bpf_disabled", "0\n", "kernel.unprivileged_bpf_disabled", Medium},
		{"bpf off", "sys/kernel/unprivileged_bpf_disabled", "1\n", "kernel.unprivileged_bpf_disabled", Info},
		{"bpf off, reversible", "sys/kernel/unprivileged_bpf_disabled", "2\n", "kernel.unprivileged_bpf_disabled", Info},
		{"suid off", "sys/fs/suid_dumpable", "0\n", "fs.suid_dumpable", Info},
		{"suid debug", "sys/fs/suid_dumpable", "1\n", "fs.suid_dumpable", Medium},
		{"suid safe", "sys/fs/suid_dumpable", "2\n", "fs.suid_dumpable", Low},
		{"kexec open", "sys/kernel/kexec_load_disabled", "0\n", "kernel.kexec_load_disabled", Medium},
		{"kexec off", "sys/kernel/kexec_load_disabled", "1\n", "kernel.kexec_load_disabled", Info},
		{"kexec absent", "sys/kernel/other", "x", "kernel.kexec_load_disabled", Info},
		{"modules open", "sys/kernel/modules_disabled", "0\n", "kernel.modules_disabled", Medium},
		{"modules off", "sys/kernel/modules_disabled", "1\n", "kernel.modules_disabled", Info},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := checker(t, map[string]string{c.file: c.value}, map[string]string{"kernel/security/lockdown": "[none] integrity confidentiality\n"}, nil)
			f := find(t, ch.Host(), c.finding)
			if f.Severity != c.want {
				t.Errorf("%s = %q: severity %s, want %s (%s)", c.finding, f.Value, f.Severity, c.want, f.Remediation)
			}
			if f.Remediation == "" {
				t.Errorf("%s: no remediation", c.finding)
			}
			if v := strings.TrimSpace(c.value); c.file == "sys/"+strings.ReplaceAll(c.finding, ".", "/") && f.Value != v {
				t.Errorf("%s value %q, want %q", c.finding, f.Value, v)
			}
		})
	}
}

func TestLockdown(t *testing.T) {
	cases := []struct {
		value string
		// keyguard's policy refuses kernel-memory opens (side_doors: enforce) and module and kexec
		// loads (modules: deny).
		kmem, modules bool
		want          Severity
		// modules_disabled=0 and kexec_load_disabled=0 are less severe under lockdown (signed only) or
		// with keyguard refusing the loads.
		wantModules Severity
	}{
		{"[none] integrity confidentiality", false, false, High, Medium},
		{"none [integrity] confidentiality", false, false, Medium, Low},
		{"none integrity [confidentiality]", false, false, Info, Low},
		{"", false, false, High, Medium}, // no file: no lockdown LSM
		{"[none] integrity confidentiality", true, true, Low, Low},
		{"[none] integrity confidentiality", true, false, High, Medium},
		{"[none] integrity confidentiality", false, true, High, Low},
		{"none [integrity] confidentiality", true, false, Low, Low},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/kmem=%v/modules=%v", c.value, c.kmem, c.modules), func(t *testing.T) {
			sys := map[string]string{"kernel/other": ""}
			if c.value != "" {
				sys["kernel/security/lockdown"] = c.value + "\n"
			}
			ch := checker(t, map[string]string{"sys/kernel/modules_disabled": "0\n", "sys/kernel/kexec_load_disabled": "0\n"}, sys, nil)
			ch.KernelMemoryGuarded, ch.ModulesGuarded = c.kmem, c.modules
			fs := ch.Host()
			if f := find(t, fs, "lockdown"); f.Severity != c.want {
				t.Errorf("lockdown %q: %s, want %s", f.Value, f.Severity, c.want)
			}
			if f := find(t, fs, "kernel.modules_disabled"); f.Severity != c.wantModules {
				t.Errorf("modules_disabled: %s, want %s", f.Severity, c.wantModules)
			}
			if f := find(t, fs, "kernel.kexec_load_disabled"); f.Severity != c.wantModules {
				t.Errorf("kexec_load_disabled: %s, want %s", f.Severity, c.wantModules)
			}
		})
	}
}

func TestCorePattern(t *testing.T) {
	const handler = "|/usr/sbin/keyguard-agent dump-handler %P %i %I %p %u %g %d %s %t %h %c %e"
	bin := t.TempDir()
	unknown := filepath.Join(bin, "collect-dumps")
	if err := os.WriteFile(unknown, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, pattern, limit, handler string
		want, wantLimit               Severity
	}{
		{"handler installed", handler, "16", handler, Info, Info},
		{"handler, pipe limit 0", handler, "0", handler, Info, Medium},
		{"handler, pipe limit 4", handler, "4", handler, Info, Low},
		{"redact rule, pattern replaced", "|/lib/systemd/systemd-coredump %P", "16", handler, High, Info},
		{"redact rule, file pattern", "core", "0", handler, High, Info},
		{"file pattern", "core", "0", "", Low, Info},
		{"missing helper", "|/nonexistent/dumper %p", "0", "", Medium, Info},
		{"unknown helper", "|" + unknown + " %p", "0", "", Medium, Info},
		{"known helper missing here", "|/no/such/systemd-coredump %P", "0", "", Medium, Info},
	}
	if _, err := os.Stat("/bin/false"); err == nil {
		cases = append(cases, struct {
			name, pattern, limit, handler string
			want, wantLimit               Severity
		}{"known helper", "|/bin/false", "0", "", Info, Info})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := checker(t, map[string]string{"sys/kernel/core_pattern": c.pattern + "\n", "sys/kernel/core_pipe_limit": c.limit + "\n"}, nil, nil)
			ch.HandlerPattern = c.handler
			fs := ch.Host()
			f := find(t, fs, "kernel.core_pattern")
			if f.Value != c.pattern || f.Severity != c.want {
				t.Errorf("core_pattern %q %s (%s), want %q %s", f.Value, f.Severity, f.Remediation, c.pattern, c.want)
			}
			l := find(t, fs, "kernel.core_pipe_limit")
			if l.Value != c.limit || l.Severity != c.wantLimit {
				t.Errorf("core_pipe_limit %q %s, want %q %s", l.Value, l.Severity, c.limit, c.wantLimit)
			}
		})
	}
}

// blockSys is a sysfs with: sda (disk) + sda1, sda2 partitions; dm-0 = LUKS on sda2; dm-1 = LVM on
// dm-0 (LVM on LUKS); dm-2 = LVM on sda1 (clear); dm-3 = LVM striped over dm-0 and sda1; zram0.
func blockSys() map[string]string {
	dev := "devices/pci0000:00/0000:00:01.1/ata1/host0/target0:0:0/0:0:0:0/block/sda"
	return map[string]string{
		dev + "/dev":                             "8:0",
		dev + "/sda1/partition":                  "1",
		dev + "/sda2/partition":                  "2",
		"devices/virtual/block/dm-0/dm/uuid":     "CRYPT-LUKS2-0123456789abcdef-sda2_crypt\n",
		"devices/virtual/block/dm-0/dm/name":     "sda2_crypt\n",
		"devices/virtual/block/dm-0/slaves/sda2": "->../../../../" + strings.TrimPrefix(dev, "devices/") + "/sda2",
		"devices/virtual/block/dm-1/dm/uuid":     "LVM-abc\n",
		"devices/virtual/block/dm-1/dm/name":     "vg-swap\n",
		"devices/virtual/block/dm-1/slaves/dm-0": "->../../dm-0",
		"devices/virtual/block/dm-2/dm/uuid":     "LVM-def\n",
		"devices/virtual/block/dm-2/dm/name":     "vg2-swap\n",
		"devices/virtual/block/dm-2/slaves/sda1": "->../../../../" + strings.TrimPrefix(dev, "devices/") + "/sda1",
		"devices/virtual/block/dm-3/dm/uuid":     "LVM-ghi\n",
		"devices/virtual/block/dm-3/slaves/dm-0": "->../../dm-0",
		"devices/virtual/block/dm-3/slaves/sda1": "->../../../../" + strings.TrimPrefix(dev, "devices/") + "/sda1",
		"devices/virtual/block/zram0/dev":        "252:0",
		"class/block/sda":                        "->../../" + dev,
		"class/block/sda1":                       "->../../" + dev + "/sda1",
		"class/block/sda2":                       "->../../" + dev + "/sda2",
		"class/block/dm-0":                       "->../../devices/virtual/block/dm-0",
		"class/block/dm-1":                       "->../../devices/virtual/block/dm-1",
		"class/block/dm-2":                       "->../../devices/virtual/block/dm-2",
		"class/block/dm-3":                       "->../../devices/virtual/block/dm-3",
		"class/block/zram0":                      "->../../devices/virtual/block/zram0",
		"block/dm-0":                             "->../devices/virtual/block/dm-0",
		"block/dm-1":                             "->../devices/virtual/block/dm-1",
		"block/dm-2":                             "->../devices/virtual/block/dm-2",
		"dev/block/8:1":                          "->../../" + dev + "/sda1",
		"dev/block/8:2":                          "->../../" + dev + "/sda2",
		"dev/block/254:0":                        "->../../devices/virtual/block/dm-0",
		"dev/block/254:1":                        "->../../devices/virtual/block/dm-1",
	}
}

const swapsHeader = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"

func TestSwap(t *testing.T) {
	cases := []struct {
		dev     string
		want    Severity
		howPart string
	}{
		{"/dev/sda1", High, "unencrypted sda1"},
		{"/dev/sda2", High, "unencrypted sda2"},
		{"/dev/dm-0", Info, "dm-crypt dm-0"},
		{"/dev/dm-1", Info, "dm-1 on dm-crypt dm-0"},
		{"/dev/mapper/vg-swap", Info, "dm-1 on dm-crypt dm-0"},
		{"/dev/dm-2", High, "unencrypted dm-2 on unencrypted sda1"},
		{"/dev/mapper/vg2-swap", High, "unencrypted dm-2"},
		{"/dev/dm-3", High, "unencrypted dm-3 on unencrypted sda1"},
		{"/dev/zram0", Info, "zram zram0"},
		{"/dev/nvme9n1p1", High, "unknown: nvme9n1p1 not in sysfs"},
	}
	for _, c := range cases {
		t.Run(c.dev, func(t *testing.T) {
			ch := checker(t, map[string]string{"swaps": swapsHeader + c.dev + "                               partition\t1003516\t\t0\t\t-2\n"}, blockSys(), nil)
			f := find(t, ch.Host(), "swap:"+c.dev)
			if f.Severity != c.want || !strings.Contains(f.Value, c.howPart) {
				t.Errorf("swap %s: %q %s, want %s and %q", c.dev, f.Value, f.Severity, c.want, c.howPart)
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		ch := checker(t, map[string]string{"swaps": swapsHeader}, blockSys(), nil)
		if f := find(t, ch.Host(), "swap"); f.Value != "none" || f.Severity != Info {
			t.Errorf("no swap: %+v", f)
		}
	})
	t.Run("swap file", func(t *testing.T) {
		// A real file: its st_dev is looked up in the fake /sys/dev/block.
		dir := t.TempDir()
		file := filepath.Join(dir, "swap file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(file, &st); err != nil {
			t.Fatal(err)
		}
		majmin := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
		if unix.Major(st.Dev) == 0 {
			t.Skipf("temp folder is on %s, not a block device", majmin)
		}
		for _, c := range []struct {
			target string
			want   Severity
		}{{"../../devices/virtual/block/dm-1", Info}, {"../../devices/virtual/block/dm-2", High}} {
			sys := blockSys()
			sys["dev/block/"+majmin] = "->" + c.target
			escaped := strings.ReplaceAll(file, " ", `\040`)
			ch := checker(t, map[string]string{"swaps": swapsHeader + escaped + " file 1024 0 -3\n"}, sys, nil)
			if f := find(t, ch.Host(), "swap:"+file); f.Severity != c.want {
				t.Errorf("swap file on %s: %q %s, want %s", c.target, f.Value, f.Severity, c.want)
			}
		}
	})
}

func TestHibernation(t *testing.T) {
	cases := []struct {
		name                string
		state, disk, resume string
		cmdline, swaps      string
		want                Severity
		wantValue           string
	}{
		{"no disk state", "freeze mem", "[platform] shutdown", "0:0", "", "", Info, "unavailable"},
		{"disabled (lockdown)", "freeze mem disk", "[disabled]", "0:0", "", "", Info, "unavailable"},
		{"nohibernate", "freeze mem disk", "[platform] shutdown", "8:1", "root=/dev/sda3 nohibernate", "", Info, "unavailable"},
		{"resume to clear partition", "freeze mem disk", "[platform] shutdown reboot", "8:1", "root=/dev/sda3 resume=UUID=abcd", "", High, "cmdline resume=UUID=abcd"},
		{"resume to LUKS", "freeze mem disk", "[platform] shutdown", "254:1", "resume=/dev/mapper/vg-swap", "", Low, "dm-crypt"},
		{"no resume, clear swap", "freeze mem disk", "[platform] shutdown", "0:0", "", "/dev/sda1 partition 1 0 -2\n", High, "available"},
		{"no resume, encrypted swap", "freeze mem disk", "[platform] shutdown", "0:0", "", "/dev/dm-1 partition 1 0 -2\n", Low, "available"},
		{"no resume, no swap", "freeze mem disk", "[platform] shutdown", "0:0", "", "", Low, "available"},
		{"resume= after -- is init's", "freeze mem disk", "[platform] shutdown", "0:0", "quiet -- resume=/dev/sda1", "", Low, "available"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sys := blockSys()
			sys["power/state"], sys["power/disk"], sys["power/resume"] = c.state+"\n", c.disk+"\n", c.resume+"\n"
			ch := checker(t, map[string]string{"cmdline": c.cmdline + "\n", "swaps": swapsHeader + c.swaps}, sys, nil)
			f := find(t, ch.Host(), "hibernation")
			if f.Severity != c.want || !strings.Contains(f.Value, c.wantValue) {
				t.Errorf("hibernation: %q %s (%s), want %s with %q", f.Value, f.Severity, f.Remediation, c.want, c.wantValue)
			}
		})
	}
}

func TestKdump(t *testing.T) {
	cases := []struct {
		name            string
		loaded, cmdline string
		etc             map[string]string
		want            Severity
		wantValue       string
	}{
		{"off", "0", "root=/dev/sda1", nil, Info, "no crash kernel"},
		{"loaded, Debian default (-d 31)", "1", "crashkernel=512M", map[string]string{"default/kdump-tools": "USE_KDUMP=1\n#MAKEDUMP_ARGS=\"-c -d 0\"\n"}, Low, "dump level [31]"},
		{"loaded, -d 1 keeps user pages", "1", "crashkernel=512M", map[string]string{"default/kdump-tools": "USE_KDUMP=1\nMAKEDUMP_ARGS=\"-c -d 1\"\n"}, Critical, "user pages dumped"},
		{"loaded, -d 23 (31 without user bit)", "1", "crashkernel=512M", map[string]string{"default/kdump-tools": "MAKEDUMP_ARGS='-c -d 23'\n"}, Critical, "dump level [23]"},
		{"loaded, -d8 attached", "1", "crashkernel=512M", map[string]string{"default/kdump-tools": "MAKEDUMP_ARGS=\"-d8\"\n"}, Low, "dump level [8]"},
		{"loaded, no -d dumps all", "1", "crashkernel=512M", map[string]string{"default/kdump-tools": "MAKEDUMP_ARGS=\"-c\"\n"}, Critical, "user pages dumped"},
		{"loaded, remote ssh", "1", "crashkernel=512M", map[string]string{"default/kdump-tools": "MAKEDUMP_ARGS=\"-c -d 0\"\nSSH=\"dumps@vault\"\n"}, Critical, "target ssh dumps@vault"},
		{"reserved, not loaded, keeps user pages", "0", "crashkernel=384M-:128M", map[string]string{"default/kdump-tools": "MAKEDUMP_ARGS=\"-c -d 1\"\n"}, Medium, "crash kernel not loaded"},
		{"reserved, not loaded, default", "0", "crashkernel=384M-:128M", map[string]string{"default/kdump-tools": "\n"}, Info, "user pages excluded"},
		{"RHEL kdump.conf cp collector", "1", "crashkernel=auto", map[string]string{"kdump.conf": "path /var/crash\ncore_collector cp --sparse=always\n"}, Critical, "collector: cp"},
		{"RHEL kdump.conf default", "1", "crashkernel=auto", map[string]string{"kdump.conf": "core_collector makedumpfile -l --message-level 7 -d 31\nnfs nas:/dumps\n"}, Low, "target nfs nas:/dumps"},
		{"loaded, no config known", "1", "crashkernel=256M", nil, Critical, "unknown"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := checker(t, map[string]string{"cmdline": c.cmdline + "\n"}, map[string]string{"kernel/kexec_crash_loaded": c.loaded + "\n"}, c.etc)
			f := find(t, ch.Host(), "kdump")
			if f.Severity != c.want || !strings.Contains(f.Value, c.wantValue) {
				t.Errorf("kdump: %q %s, want %s with %q", f.Value, f.Severity, c.want, c.wantValue)
			}
		})
	}
}

func TestKeyFiles(t *testing.T) {
	cases := []struct {
		name             string
		mode, dirMode    os.FileMode
		uid, dirUID      int
		service          []uint32
		want, wantFolder Severity
	}{
		{"root 0600", 0o600, 0o755, 0, 0, nil, Info, Info},
		{"root 0400, service 1000", 0o400, 0o750, 0, 0, []uint32{1000}, Info, Info},
		{"service user owns it", 0o600, 0o700, 1000, 1000, []uint32{1000}, Info, Info},
		{"group readable", 0o640, 0o755, 0, 0, nil, High, Info},
		{"world readable", 0o644, 0o755, 0, 0, nil, High, Info},
		{"world writable", 0o602, 0o755, 0, 0, nil, High, Info},
		{"other user owns it", 0o600, 0o755, 1001, 0, []uint32{1000}, Medium, Info},
		{"other user, service unknown", 0o600, 0o755, 1001, 0, nil, Low, Info},
		{"folder group writable", 0o600, 0o775, 0, 0, nil, Info, Medium},
		{"folder world writable, sticky", 0o600, 0o1777, 0, 0, nil, Info, Medium},
		{"folder owned by another user", 0o600, 0o755, 0, 1001, []uint32{1000}, Info, Medium},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys")
			key := filepath.Join(dir, "signing.pem")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(key, []byte("-----BEGIN PRIVATE KEY-----\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, x := range []struct {
				p    string
				mode os.FileMode
				uid  int
			}{{key, c.mode, c.uid}, {dir, c.dirMode, c.dirUID}} {
				if err := os.Chown(x.p, x.uid, 0); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(x.p, x.mode); err != nil {
					t.Fatal(err)
				}
			}
			// A symlink to the key is checked as the file it names, and a missing file is skipped.
			link := filepath.Join(t.TempDir(), "current.pem")
			if err := os.Symlink(key, link); err != nil {
				t.Fatal(err)
			}
			fs := Checker{}.KeyFiles([]KeyFile{{Path: link, Rule: "signer", ServiceUIDs: c.service}, {Path: dir + "/gone.pem", Rule: "signer"}})
			if len(fs) != 2 {
				t.Fatalf("findings %v, want the file and its folder", names(fs))
			}
			f := find(t, fs, "key_file:"+link)
			wantValue := fmt.Sprintf("owner %d:0 mode %04o", c.uid, c.mode)
			if f.Severity != c.want || f.Value != wantValue {
				t.Errorf("key file: %q %s (%s), want %q %s", f.Value, f.Severity, f.Remediation, wantValue, c.want)
			}
			d := find(t, fs, "key_folder:"+dir)
			if d.Severity != c.wantFolder {
				t.Errorf("key folder: %q %s (%s), want %s", d.Value, d.Severity, d.Remediation, c.wantFolder)
			}
		})
	}
}

func TestProcessFake(t *testing.T) {
	const limitsFmt = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax core file size        %s                    %s            bytes     \n"
	status := func(euid, tracer int) string {
		return fmt.Sprintf("Name:\tsigner\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\nPPid:\t1\nTracerPid:\t%d\nUid:\t%d\t%d\t%d\t%d\nGid:\t%d\t%d\t%d\t%d\n", tracer, euid, euid, euid, euid, euid, euid, euid, euid)
	}
	cases := []struct {
		name               string
		pattern            string
		soft, hard, filter string
		euid, owner        int
		tracer             int
		dumps              string
		want               map[string]Severity
		values             map[string]string
	}{
		{"quiet signer", "core", "0", "0", "00000010", 1000, 0, 0, "block",
			map[string]Severity{"rlimit_core": Info, "coredump_filter": Info, "dumpable": Info, "tracer": Info},
			map[string]string{"rlimit_core": "soft 0, hard 0", "coredump_filter": "0x10 (elf-headers)", "dumpable": "0", "tracer": "0"}},
		{"defaults, pipe pattern", "|/lib/systemd/systemd-coredump %P", "0", "unlimited", "00000033", 1000, 1000, 0, "block",
			map[string]Severity{"rlimit_core": Low, "coredump_filter": Low, "dumpable": Low},
			map[string]string{"coredump_filter": "0x33 (anon-private anon-shared elf-headers hugetlb-private)", "dumpable": "1"}},
		{"limit 1 stops piped dumps", "|/lib/systemd/systemd-coredump %P", "1", "1", "00000033", 1000, 1000, 0, "block",
			map[string]Severity{"rlimit_core": Info}, nil},
		{"dumps allowed", "core", "unlimited", "unlimited", "00000023", 1000, 1000, 0, "allow",
			map[string]Severity{"rlimit_core": High, "coredump_filter": High}, map[string]string{"rlimit_core": "soft unlimited, hard unlimited"}},
		{"root", "core", "0", "unlimited", "00000033", 0, 0, 0, "redact",
			map[string]Severity{"dumpable": Info}, map[string]string{"dumpable": "unknown (euid 0)"}},
		{"traced", "core", "0", "0", "00000033", 1000, 1000, 777, "block",
			map[string]Severity{"tracer": Critical}, map[string]string{"tracer": "777 (gdb)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := checker(t, map[string]string{
				"4242/status": status(c.euid, c.tracer), "4242/limits": fmt.Sprintf(limitsFmt, c.soft, c.hard),
				"4242/coredump_filter": c.filter + "\n", "777/comm": "gdb\n", "sys/kernel/core_pattern": c.pattern + "\n",
			}, nil, nil)
			if err := os.Chown(ch.proc("4242", "status"), c.owner, c.owner); err != nil {
				t.Fatal(err)
			}
			fs := ch.Process(Target{PID: 4242, Rule: "signer", Dumps: c.dumps})
			if len(fs) != 4 {
				t.Fatalf("findings %v, want 4", names(fs))
			}
			for item, sev := range c.want {
				if f := find(t, fs, "process.4242."+item); f.Severity != sev {
					t.Errorf("%s: %q %s (%s), want %s", item, f.Value, f.Severity, f.Remediation, sev)
				}
			}
			for item, v := range c.values {
				if f := find(t, fs, "process.4242."+item); f.Value != v {
					t.Errorf("%s value %q, want %q", item, f.Value, v)
				}
			}
		})
	}
	t.Run("gone", func(t *testing.T) {
		if fs := checker(t, map[string]string{"1/status": "Name:\tinit\n"}, nil, nil).Process(Target{PID: 4242}); len(fs) != 0 {
			t.Errorf("findings for a missing process: %v", fs)
		}
	})
}

func TestDiff(t *testing.T) {
	old := []Finding{{Name: "a", Value: "1", Severity: Info}, {Name: "b", Value: "0", Severity: Low}, {Name: "c", Value: "x", Severity: High}}
	cur := []Finding{{Name: "a", Value: "1", Severity: Info}, {Name: "b", Value: "1", Severity: Medium}, {Name: "d", Value: "y", Severity: Critical}}
	appeared, gone, changed := Diff(old, cur)
	if len(appeared) != 1 || appeared[0].Name != "d" || len(gone) != 1 || gone[0].Name != "c" || len(changed) != 1 || changed[0].Name != "b" || changed[0].Value != "1" {
		t.Errorf("Diff: appeared %v gone %v changed %v", appeared, gone, changed)
	}
	if a, g, c := Diff(cur, cur); len(a)+len(g)+len(c) != 0 {
		t.Errorf("Diff of equal sets: %v %v %v", a, g, c)
	}
	if w := Worst(cur); w[0].Name != "d" || w[1].Name != "b" || w[2].Name != "a" {
		t.Errorf("Worst order: %v", names(w))
	}
}

func TestChanges(t *testing.T) {
	host := Finding{Name: "kernel.perf_event_paranoid", Value: "2", Severity: Info}
	proc := func(pid int, item, value string, s Severity) Finding {
		return Finding{Name: fmt.Sprintf("process.%d.%s", pid, item), Value: value, Severity: s}
	}
	old := []Finding{host, proc(10, "rlimit_core", "soft 0, hard 0", Low), proc(10, "tracer", "0", Info)}
	cases := []struct {
		name                    string
		cur                     []Finding
		appeared, gone, changed []string
	}{
		{"same", old, nil, nil, nil},
		{"ordinary process exits and another starts", []Finding{host, proc(11, "rlimit_core", "soft 0, hard 0", Low), proc(11, "tracer", "0", Info)}, nil, nil, nil},
		{"process becomes traced", []Finding{host, proc(10, "rlimit_core", "soft 0, hard 0", Low), proc(10, "tracer", "99 (gdb)", Critical)}, []string{"process.10.tracer"}, nil, nil},
		{"sysctl changes", []Finding{{Name: host.Name, Value: "-1", Severity: Medium}}, nil, nil, []string{host.Name}},
		{"key file appears", append([]Finding{{Name: "key_file:/k.pem", Value: "owner 0:0 mode 0640", Severity: High}}, old...), []string{"key_file:/k.pem"}, nil, nil},
		{"swap goes away", []Finding{proc(10, "tracer", "0", Info)}, nil, []string{host.Name}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, g, ch := Changes(old, c.cur)
			if fmt.Sprint(names(a), names(g), names(ch)) != fmt.Sprint(c.appeared, c.gone, c.changed) {
				t.Errorf("Changes: appeared %v gone %v changed %v, want %v %v %v", names(a), names(g), names(ch), c.appeared, c.gone, c.changed)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	fs := []Finding{{Name: "lockdown", Value: "[none]", Severity: High}}
	for pid := 100; pid > 80; pid-- { // 20 processes, listed in descending pid order
		fs = append(fs, Finding{Name: fmt.Sprintf("process.%d.rlimit_core", pid), Severity: Low},
			Finding{Name: fmt.Sprintf("process.%d.tracer", pid), Severity: Info})
	}
	fs = append(fs, Finding{Name: "process.99.tracer", Value: "5 (gdb)", Severity: Critical})
	out := Summarize(fs, 4)
	var kept []string
	for _, f := range out {
		kept = append(kept, f.Name)
	}
	want := []string{"lockdown", "process.84.rlimit_core", "process.84.tracer", "process.83.rlimit_core", "process.83.tracer",
		"process.82.rlimit_core", "process.82.tracer", "process.81.rlimit_core", "process.81.tracer", "process.99.tracer", "processes"}
	if fmt.Sprint(kept) != fmt.Sprint(want) {
		t.Errorf("Summarize kept %v, want %v", kept, want)
	}
	if p := out[len(out)-1]; p.Value != "20 protected" {
		t.Errorf("processes finding %+v", p)
	}
	if got := Summarize(fs[:5], 4); len(got) != 5 {
		t.Errorf("under the bound everything stays: %v", names(got))
	}
}

// Socket core patterns (Linux 6.16): a refused pattern, no listener, not a socket and an unknown
// listener are each a path keyguard does not cover.
func TestCorePatternSocket(t *testing.T) {
	d := t.TempDir()
	sock := filepath.Join(d, "core.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	plain := filepath.Join(d, "plain")
	os.WriteFile(plain, nil, 0o600)
	for _, c := range []struct {
		name, pattern, says string
	}{
		{"relative path", "@run/core", "refuses"},
		{"no listener", "@" + filepath.Join(d, "missing.sock"), "nothing listens"},
		{"not a socket", "@@" + plain, "not a socket"},
		{"unknown receiver", "@" + sock, "unknown socket receiver"},
		{"unknown request receiver", "@@" + sock, "unknown socket request receiver"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ch := checker(t, map[string]string{"sys/kernel/core_pattern": c.pattern + "\n", "sys/kernel/core_pipe_limit": "0\n"}, nil, nil)
			f := find(t, ch.Host(), "kernel.core_pattern")
			if f.Severity != Medium || !strings.Contains(f.Remediation, c.says) {
				t.Errorf("%q: %s (%s), want medium saying %q", c.pattern, f.Severity, f.Remediation, c.says)
			}
		})
	}
}

func TestKeyFilesAnyOpener(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		any  bool
		want int
	}{{false, 0}, {true, 1}} {
		fs := Checker{}.KeyFiles([]KeyFile{{Path: a, Rule: "r", AnyOpener: c.any}, {Path: b, Rule: "r", AnyOpener: c.any}})
		n := 0
		for _, f := range fs {
			if f.Name == "key_openers:r" {
				n++
				if f.Severity != Medium || f.Value != "any" {
					t.Errorf("finding %+v", f)
				}
			}
			if strings.HasPrefix(f.Name, "key_fs:") {
				t.Errorf("a local temp file reported as uncovered: %+v", f)
			}
		}
		if n != c.want {
			t.Errorf("any=%v: %d key_openers findings, want %d (once per rule)", c.any, n, c.want)
		}
	}
}

func TestExecDigest(t *testing.T) {
	cases := []struct {
		name, variant, cmdline string
		fsverity               bool
		strict                 []string
		sev                    Severity
		remedy                 string
	}{
		{"IMA, fs-verity kfunc (6.12)", "bpf_ima_file_hash", "root=/dev/sda1", true, []string{"s"}, Info, "available but unused"},
		{"IMA, no fs-verity kfunc (6.1)", "bpf_ima_file_hash", "root=/dev/sda1", false, nil, Info, "not in this kernel"},
		{"ima_hash=sha256", "bpf_ima_file_hash", "ima_hash=sha256", false, []string{"s"}, Info, "trusted by content"},
		{"ima_hash=sha1, strict rule", "bpf_ima_file_hash", "ima_hash=sha1", false, []string{"s"}, High, "strict rules (s) admit no process"},
		{"ima_hash=sha1, no strict rule", "bpf_ima_file_hash", "ima_hash=sha1", false, nil, Low, "by inode only"},
		{"no hashing, strict rules", "none", "", false, []string{"a", "b"}, High, "strict rules (a, b) admit no process"},
		{"no hashing", "none", "", false, nil, Low, "by inode only"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := checker(t, map[string]string{"cmdline": c.cmdline + "\n"}, nil, nil)
			ch.ExecDigest, ch.FSVerityKfunc, ch.StrictRules = c.variant, c.fsverity, c.strict
			var got *Finding
			for _, f := range ch.Host() {
				if f.Name == "executable_digest" {
					got = &f
				}
			}
			if got == nil {
				t.Fatal("no executable_digest finding")
			}
			if got.Severity != c.sev || !strings.Contains(got.Remediation, c.remedy) {
				t.Errorf("got %s %q, want %s and %q", got.Severity, got.Remediation, c.sev, c.remedy)
			}
		})
	}
	if fs := (Checker{ProcRoot: t.TempDir()}).Host(); len(fs) > 0 {
		for _, f := range fs {
			if f.Name == "executable_digest" {
				t.Error("executable_digest reported without a known variant (no agent)")
			}
		}
	}
}
