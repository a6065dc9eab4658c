package policy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyguard/keyguard/testvm/guesttest"
	"github.com/keyguard/keyguard/testvm/vmenv"
)

// TestRawLoopDevice: a key file of the redactor rule on a romfs image attached to a loop device. Root
// reading the loop device or its backing image is refused (EPERM) and reported as a raw_disk side door;
// the raw_disk_readers entry reads both; the rule's own process still loads its key.
func TestRawLoopDevice(t *testing.T) {
	vmenv.Require(t)
	image := guesttest.Dir + "/loop.img"
	key := filepath.Join(guesttest.LoopKeyDir, "l.pem")
	// Registered first, so it runs last: after the unmount and the loop detach, the agent resolves the
	// policy again and lists no device of this test.
	t.Cleanup(func() {
		guesttest.StopAgent()
		if err := guesttest.StartAgent(); err != nil {
			t.Errorf("restart the agent: %v", err)
		}
	})
	dev := guesttest.LoopMount(t, image, guesttest.LoopKeyDir, filepath.Base(key), []byte("-----BEGIN PRIVATE KEY-----\nloop holder\n-----END PRIVATE KEY-----\n"))
	// The agent lists the new key file, its loop device and the image when it resolves the policy.
	guesttest.StopAgent()
	if err := guesttest.StartAgent(); err != nil {
		t.Fatalf("restart the agent: %v", err)
	}
	before := guesttest.Count()
	waitRefused(t, key)
	for _, path := range []string{dev, image} {
		if got := fileop(t, "read", path); got != "ERR EPERM" {
			t.Errorf("root reads %s (below the key file %s): %s, want ERR EPERM", path, key, got)
		}
		out, _ := exec.Command(guesttest.DiskReader, "fileop", "read", path).CombinedOutput()
		if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, "OK") {
			t.Errorf("the raw_disk_readers entry reads %s: %s, want OK", path, got)
		}
	}
	for _, what := range []string{filepath.Base(dev), filepath.Base(image)} {
		guesttest.WaitEventAfter(t, before, "raw_disk denied: "+what, func(e guesttest.Event) bool {
			return e.Kind == "side_door" && e.Operation == "raw_disk" && e.Decision == "denied" &&
				strings.Contains(e.Detail, what) && e.Accessor != nil && strings.HasSuffix(e.Accessor.Executable, "testproc")
		})
	}
	v := guesttest.StartVictim(t, guesttest.HolderExe, 0, "-keyfile", key)
	v.Kill()
	if _, err := os.Stat(key); err != nil {
		t.Errorf("key file gone: %v", err)
	}
}

// waitRefused waits until root's read of path is refused (the agent has listed it).
func waitRefused(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if fileop(t, "read", path) == "ERR EPERM" {
			return
		}
	}
	t.Fatalf("%s was not listed as a key file within 15 s", path)
}
