package sentinel

import (
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/testvm/guesttest"
)

// vmTests are this package's VM tests (vm_*_test.go): in the testvm guest only they run (they need
// the keyguard binaries, not the agent: guesttest.Main starts none); on the host they skip.
var vmTests = []string{"TestSentinelFindsPublishedKey"}

func TestMain(m *testing.M) {
	guesttest.Main(m, guesttest.Options{Tests: vmTests, NoAgent: true, Keys: guestKeys})
}

// vmKeys are the test signer's keys, from keytest like the scanners' tests; guesttest writes them
// into guesttest.TestKeysDir.
func vmKeys() *keytest.Keys { return keytest.Generate() }

func guestKeys() *guesttest.Keys {
	k := vmKeys()
	return &guesttest.Keys{RSA: k.RSA, EC: k.P256, Ed: k.Ed}
}
