package objhash

import (
	"crypto/sha256"
	"fmt"
	"os"
	"testing"
)

// The constant is the hash of the committed object: a rebuilt object without `make generate-bpf`
// fails here.
func TestMatchesObject(t *testing.T) {
	b, err := os.ReadFile("../keyguard_x86_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != SHA256 {
		t.Fatalf("SHA256 = %s, the object's is %s: run make generate-bpf", SHA256, got)
	}
}
