// Package memscan finds bytes in another process's memory through /proc, as root would when stealing a
// key: the demos use it to show a key is readable without keyguard and unreadable with it.
package memscan

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Find searches the writable mappings of pid for needle, big-endian or byte-reversed (little-endian
// machine words, as Go's math/big and OpenSSL hold numbers), and returns the address where it starts.
func Find(pid int, needle []byte) (uint64, bool) {
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, false
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, false
	}
	defer mem.Close()
	rev := make([]byte, len(needle))
	for i := range needle {
		rev[i] = needle[len(needle)-1-i]
	}
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.HasPrefix(f[1], "rw") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		if end-start > 256<<20 {
			continue
		}
		buf := make([]byte, end-start)
		n, _ := mem.ReadAt(buf, int64(start))
		for _, nd := range [][]byte{needle, rev} {
			if i := bytes.Index(buf[:n], nd); i >= 0 {
				return start + uint64(i), true
			}
		}
	}
	return 0, false
}
