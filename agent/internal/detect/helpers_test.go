package detect

import (
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
)

func pemOf(typ string, der []byte, h map[string]string) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: h, Bytes: der})
}

func be(x *big.Int, n int) []byte { return x.FillBytes(make([]byte, n)) }

func le(x *big.Int, n int) []byte {
	b := be(x, n)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func TestKeytestMatchesCoverage(t *testing.T) {
	if keytest.MaxGCD != fracMaxDen {
		t.Fatalf("keytest.MaxGCD %d != fracMaxDen %d", keytest.MaxGCD, fracMaxDen)
	}
}
