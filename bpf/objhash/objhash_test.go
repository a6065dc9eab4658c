package objhash

import (
	"crypto/sha256"
	"fmt"
	"os"
	"regexp"
	"testing"
)

// The constants are the hashes of the committed objects: a rebuilt object without `make generate-bpf`
// fails here. Both architectures are checked whatever GOARCH the test runs on.
func TestMatchesObject(t *testing.T) {
	for _, tc := range []struct{ constFile, obj string }{
		{"sha256_amd64.go", "../keyguard_x86_bpfel.o"},
		{"sha256_arm64.go", "../keyguard_arm64_bpfel.o"},
	} {
		src, err := os.ReadFile(tc.constFile)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`const SHA256 = "([0-9a-f]{64})"`).FindSubmatch(src)
		if m == nil {
			t.Fatalf("%s holds no SHA256 constant", tc.constFile)
		}
		b, err := os.ReadFile(tc.obj)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != string(m[1]) {
			t.Errorf("%s: SHA256 = %s, %s's is %s: run make generate-bpf", tc.constFile, m[1], tc.obj, got)
		}
	}
	if SHA256 == "" {
		t.Fatal("no SHA256 for this GOARCH")
	}
}
