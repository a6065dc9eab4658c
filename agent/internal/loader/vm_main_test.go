package loader

import (
	"testing"

	"github.com/keyguard/keyguard/agent/internal/detect/keytest"
	"github.com/keyguard/keyguard/testvm/guesttest"
)

// vmTests are this package's VM tests (vm_*_test.go): in the testvm guest only they run, with the
// agent started once for all of them (guesttest.Main); on the host they skip.
var vmTests = []string{"TestTamperRefused", "TestFastpathCoversRules", "TestKernelVariants", "TestDumpRedactWithoutGuardIsBlocked"}

func TestMain(m *testing.M) {
	guesttest.Main(m, guesttest.Options{Tests: vmTests, Keys: vmKeys})
}

// vmKeys are the test signer's keys, from keytest like the scanners' tests.
func vmKeys() *guesttest.Keys {
	k := keytest.Generate()
	return &guesttest.Keys{RSA: k.RSA, EC: k.P256, Ed: k.Ed}
}
