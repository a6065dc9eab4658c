// Package smoke proves the testvm harness: in the guest, the kernel offers what keyguard's VM
// tests rely on (BPF LSM active, BTF, bpffs, cgroup2, loopback TCP, the test users).
package smoke

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/user"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/vmenv"
)

func TestBPFLSMActive(t *testing.T) {
	vmenv.Require(t)
	data, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		t.Fatalf("reading the active LSM list: %v", err)
	}
	lsms := strings.Split(strings.TrimSpace(string(data)), ",")
	if !slices.Contains(lsms, "bpf") {
		t.Fatalf("bpf is not an active LSM on %s: %q", vmenv.Kernel(), lsms)
	}
	t.Logf("active LSMs: %s", data)
}

func TestKernelBTF(t *testing.T) {
	vmenv.Require(t)
	st, err := os.Stat("/sys/kernel/btf/vmlinux")
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	if st.Size() < 1<<20 {
		t.Fatalf("/sys/kernel/btf/vmlinux is %d bytes; a real kernel's BTF is several MB", st.Size())
	}
}

func TestMounts(t *testing.T) {
	vmenv.Require(t)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fstype := map[string]string{} // mount point -> file system type
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			t.Fatalf("unparsable mountinfo line %q", sc.Text())
		}
		fstype[fields[4]] = fields[sep+1]
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ dir, fstype string }{
		{"/sys/fs/bpf", "bpf"},
		{"/sys/fs/cgroup", "cgroup2"},
		{"/sys/kernel/security", "securityfs"},
		{"/sys/kernel/tracing", "tracefs"},
		{"/proc", "proc"},
		{"/dev", "devtmpfs"},
		{"/tmp", "tmpfs"},
	}
	for _, tc := range tests {
		if got := fstype[tc.dir]; got != tc.fstype {
			t.Errorf("%s: mounted as %q, want %s", tc.dir, got, tc.fstype)
		}
	}
}

func TestLoopbackTCP(t *testing.T) {
	vmenv.Require(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on loopback: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatalf("dial loopback: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("keyguard over loopback")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if string(got) != string(msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestUsers(t *testing.T) {
	vmenv.Require(t)
	tests := []struct{ name, uid string }{{"root", "0"}, {"kguser", "1000"}, {"nobody", "65534"}}
	for _, tc := range tests {
		u, err := user.Lookup(tc.name)
		if err != nil {
			t.Errorf("user %s: %v", tc.name, err)
			continue
		}
		if u.Uid != tc.uid {
			t.Errorf("user %s has uid %s, want %s", tc.name, u.Uid, tc.uid)
		}
	}
}

func TestEnvironment(t *testing.T) {
	vmenv.Require(t)
	if k := vmenv.Kernel(); k == "" {
		t.Error("KEYGUARD_KERNEL is empty")
	}
	if os.Geteuid() != 0 {
		t.Errorf("tests run as uid %d, want root", os.Geteuid())
	}
	// The artifact round trip: the host checks that this file arrives.
	vmenv.SaveArtifact(t, "kernel.txt", []byte(vmenv.Kernel()+"\n"))
}
