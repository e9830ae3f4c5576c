package trunknode

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if they leave goroutines running. Run
// with $SWITCHYARD_FAKE_EXPERT_DELAY set, the test binary is instead a fake
// expert node in a process of its own (BenchmarkDispatchOverlap).
func TestMain(m *testing.M) {
	if d := os.Getenv(fakeExpertEnv); d != "" {
		serveFakeProcess(d)
		return
	}
	// The kernels' worker pool lives as long as the process, by design.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/switchyard-serving/switchyard/model/kernels.(*worker).loop"))
}
