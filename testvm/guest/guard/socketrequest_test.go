package guard

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
)

// The @@ request protocol (linux/coredump.h): the kernel connects, sends a coredump_req, waits for the
// server's coredump_ack, answers with a mark (COREDUMP_MARK_REQACK = 0 when the ack was accepted), and
// with COREDUMP_KERNEL in the ack then writes the dump on the connection.
const (
	coredumpKernel  = 1 << 0
	coredumpReqSize = 16 // struct coredump_req: u32 size, u32 size_ack, u64 mask
	coredumpAckSize = 16 // struct coredump_ack: u32 size, u32 spare, u64 mask
)

// reqDump is what the @@ receiver saw on one connection.
type reqDump struct {
	reqMask uint64 // the kernel's offered features
	mark    int64  // the kernel's answer to the ack; -1 when none came
	n       int    // dump bytes after the mark
	elf     bool   // the dump starts with an ELF header
	secret  bool   // the victim's secret is in it
}

// requestReceiver listens on a unix socket in this test process and speaks the @@ protocol: it acks
// every request with COREDUMP_KERNEL, reads the mark and then the dump. It points core_pattern at
// "@@<socket>" and returns a function that waits for want connections.
func requestReceiver(t *testing.T) func(want int) []reqDump {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var req *btf.Struct
	if spec.TypeByName("coredump_req", &req) != nil {
		t.Skip("this kernel has no @@ core dump request protocol (no struct coredump_req in its BTF)")
	}
	sock := dir + "/core-req.sock"
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got []reqDump
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			d := serveRequest(c)
			mu.Lock()
			got = append(got, d)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { l.Close() })
	setCorePattern(t, "@@"+sock)
	return func(want int) []reqDump {
		for i := 0; i < 50; i++ {
			mu.Lock()
			n := len(got)
			mu.Unlock()
			if n >= want {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]reqDump(nil), got...)
	}
}

func serveRequest(c net.Conn) reqDump {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	d := reqDump{mark: -1}
	var req [coredumpReqSize]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return d
	}
	d.reqMask = binary.LittleEndian.Uint64(req[8:])
	var ack [coredumpAckSize]byte
	binary.LittleEndian.PutUint32(ack[0:], coredumpAckSize)
	binary.LittleEndian.PutUint64(ack[8:], coredumpKernel)
	if _, err := c.Write(ack[:]); err != nil {
		return d
	}
	var mark [4]byte
	if _, err := io.ReadFull(c, mark[:]); err != nil {
		return d
	}
	d.mark = int64(binary.LittleEndian.Uint32(mark[:]))
	b, _ := io.ReadAll(c)
	d.n, d.elf, d.secret = len(b), bytes.HasPrefix(b, []byte("\x7fELF")), bytes.Contains(b, []byte(secretText))
	return d
}

// secretText is the secret testproc victims hold (testproc.Secret).
const secretText = "KEYGUARD-TEST-SECRET-0123456789abcdef"

// Socket core dumps with the @@ request protocol (a server that acks each dump): an unprotected dump
// is acked and delivered whole; a blocked one never reaches the server; a redact rule's dump sent to a
// server that is not keyguard's handler is killed before its first byte, after the handshake.
func TestDumpSocketRequest(t *testing.T) {
	t.Run("unprotected", func(t *testing.T) {
		wait := requestReceiver(t)
		if ws := crash(t, victimPlain, "-sig", "SEGV"); !ws.Signaled() {
			t.Fatalf("exit %v", ws)
		}
		got := wait(1)
		if len(got) != 1 {
			t.Fatalf("the receiver got %d connections, want 1", len(got))
		}
		d := got[0]
		if d.reqMask&coredumpKernel == 0 || d.mark != 0 {
			t.Fatalf("handshake: request mask %#x, mark %d (want COREDUMP_KERNEL offered and REQACK 0)", d.reqMask, d.mark)
		}
		if !d.elf || !d.secret {
			t.Fatalf("dump of %d bytes (ELF %v, secret %v): want the whole dump", d.n, d.elf, d.secret)
		}
		t.Logf("@@ dump delivered: %d bytes", d.n)
	})
	t.Run("block", func(t *testing.T) {
		wait := requestReceiver(t)
		before := len(readEvents())
		crash(t, victimEnforce, "-sig", "SEGV")
		for _, d := range wait(1) {
			if d.n > 0 {
				t.Fatalf("a blocked dump reached the @@ server: %d bytes", d.n)
			}
		}
		ev := waitEventAfter(t, before, "blocked event", func(e event) bool { return e.Kind == "core_dump" && e.Rule == "signer" && e.Dump != nil })
		if ev.Dump.Action != "blocked" {
			t.Errorf("action %q, want blocked", ev.Dump.Action)
		}
	})
	t.Run("redact fails closed", func(t *testing.T) {
		wait := requestReceiver(t)
		before := len(readEvents())
		crash(t, victimRedact, "-sig", "ABRT", "-thread")
		for _, d := range wait(1) {
			if d.n > 0 || d.secret {
				t.Fatalf("%d dump bytes reached an @@ server that is not keyguard's handler", d.n)
			}
		}
		waitEventAfter(t, before, "bad-destination event", func(e event) bool {
			return e.Kind == "core_dump" && e.Dump != nil && e.Rule == "redactor" && strings.Contains(e.Dump.Reason, "not going to keyguard's handler")
		})
	})
}
