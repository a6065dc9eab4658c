package loader

import (
	"testing"
	"time"
)

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
