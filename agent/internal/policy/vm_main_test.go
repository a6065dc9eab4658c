package policy

import (
	"testing"

	"github.com/keyguard/keyguard/testvm/guesttest"
)

// vmTests are this package's VM tests (vm_*_test.go): in the testvm guest only they run, with the
// agent started once for all of them (guesttest.Main); on the host they skip.
var vmTests = []string{"TestKeyFileOnlyForHolders", "TestKeyManagerAllowed", "TestSignerRewriteRefused", "TestAgentBinaryOverwriteWhileDown", "TestStrictSigner", "TestAgentTamperedAfterTrust", "TestKeyOpenRace", "TestKeyOpenForkRace", "TestKeyOpenForkRaceControl", "TestKeyDirMoved", "TestBPFLoadRefused", "TestPerfUserStackRefused", "TestSysctlWritesRefused", "TestKernelMemoryRefused", "TestModuleLoadRefused", "TestRawLoopDevice"}

func TestMain(m *testing.M) {
	guesttest.Main(m, guesttest.Options{Tests: vmTests})
}
