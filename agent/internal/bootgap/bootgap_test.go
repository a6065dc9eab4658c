package bootgap

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDetectGap(t *testing.T) {
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "sys/kernel/random"), 0o755); err != nil {
		t.Fatal(err)
	}
	setBoot := func(id string) {
		if err := os.WriteFile(filepath.Join(proc, "sys/kernel/random/boot_id"), []byte(id+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(proc, "stat"), []byte("cpu 1 2 3\nbtime 1764763200\nprocesses 9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	t0 := time.Unix(1764700000, 0)

	setBoot("boot-a")
	if g, err := Detect(state, proc, t0); err != nil || g != nil {
		t.Fatalf("first start ever: gap %+v, %v; want none", g, err)
	}
	if err := WriteAlive(state, proc, t0); err != nil {
		t.Fatal(err)
	}
	if g, err := Detect(state, proc, t0.Add(time.Minute)); err != nil || g != nil {
		t.Fatalf("restart in the same boot: gap %+v, %v; want none", g, err)
	}
	setBoot("boot-b")
	now := time.Unix(1764763260, 0)
	g, err := Detect(state, proc, now)
	if err != nil || g == nil {
		t.Fatalf("after reboot: gap %+v, %v", g, err)
	}
	if g.PreviousBootID != "boot-a" || g.BootID != "boot-b" || !g.LastSeen.Equal(t0) || !g.Resumed.Equal(now) ||
		!g.BootTime.Equal(time.Unix(1764763200, 0)) {
		t.Fatalf("gap %+v", g)
	}
	if err := os.WriteFile(filepath.Join(state, aliveFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Detect(state, proc, now); err == nil {
		t.Fatal("malformed alive file accepted")
	}
}

func TestGapOnThisHost(t *testing.T) {
	// The real boot id: a file written now names this boot, so no gap.
	state := t.TempDir()
	if err := WriteAlive(state, "/proc", time.Now()); err != nil {
		t.Fatal(err)
	}
	if g, err := Detect(state, "/proc", time.Now()); err != nil || g != nil {
		t.Fatalf("gap %+v, %v", g, err)
	}
	if bootTime("/proc").IsZero() || time.Since(bootTime("/proc")) <= 0 {
		t.Fatal("no btime in /proc/stat")
	}
}
