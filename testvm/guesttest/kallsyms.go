package guesttest

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// Kallsyms reports which of names the running kernel has as functions (read from /proc/kallsyms, a
// source independent of the BTF the agent probes).
func Kallsyms(t *testing.T, names ...string) map[string]bool {
	t.Helper()
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	found := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && want[fields[2]] {
			found[fields[2]] = true
		}
	}
	return found
}
