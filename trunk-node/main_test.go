package trunknode

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if they leave goroutines running.
func TestMain(m *testing.M) {
	// The kernels' worker pool lives as long as the process, by design.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/switchyard-serving/switchyard/model/kernels.(*worker).loop"))
}
