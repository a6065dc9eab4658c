package loader

import (
	"fmt"
	"os"
	"testing"
	"time"
)

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
		got, err := parseStartTicks([]byte(tc.stat))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseStartTicks(%q) = %d, %v; want %d ok=%v", tc.stat, got, err, tc.want, tc.ok)
		}
	}
	// Our own process: a real /proc/self/stat parses and the value is plausible (started before now).
	self, err := startTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/uptime")
	var up float64
	if _, err := fmt.Sscan(string(b), &up); err == nil && float64(self)/100 > up+1 {
		t.Errorf("start time %d ticks is after uptime %.1fs", self, up)
	}
}

func TestBootTimeRoundTrip(t *testing.T) {
	at := time.Now().Add(90 * time.Second)
	bt, err := BootTime(at)
	if err != nil {
		t.Fatal(err)
	}
	if d := WallTime(bt).Sub(at); d < -time.Second || d > time.Second {
		t.Fatalf("WallTime(BootTime(t)) off by %v", d)
	}
}
