package localcluster

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// gpuDevices are the expert devices the GPU cluster tests run on: the emulated
// GPU always (it runs the CUDA path's host side and the kernels' Go twins), and
// the GPU named by SWITCHYARD_TEST_GPU (e.g. cuda:0) in the GPU check.
func gpuDevices() []string {
	d := []string{"fake"}
	if g := os.Getenv("SWITCHYARD_TEST_GPU"); g != "" {
		d = append(d, g)
	}
	return d
}

// gpuMemoryFor splits one GPU between the cluster's expert nodes.
func gpuMemoryFor(device string, experts int) string {
	if device == "cpu" || device == "" {
		return ""
	}
	return fmt.Sprintf("%.3f", 0.5/float64(max(experts, 1)))
}

// With the expert nodes on the GPU path (f32 on the wire), the cluster's greedy
// continuations equal llama.cpp's golden tokens.
func TestClusterGPUExpertsGolden(t *testing.T) {
	for _, dev := range gpuDevices() {
		t.Run(dev, func(t *testing.T) {
			c := startFaultClusterOn(t, dev, 2, 1)
			cli := clientFor(t, c.Endpoint)
			for _, p := range goldenGreedy(t) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				got, err := gen(ctx, cli, p.IDs, len(p.Greedy))
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, p.Greedy) {
					t.Errorf("%s: cluster with %s experts %v, golden %v", p.Name, dev, got, p.Greedy)
				}
			}
		})
	}
}

// A GPU expert node dies under load: no request fails and every output equals
// the golden tokens, as on the CPU.
func TestGPUExpertCrashUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("fault-injection soak")
	}
	for _, dev := range gpuDevices() {
		t.Run(dev, func(t *testing.T) {
			c := startFaultClusterOn(t, dev, 3, 1)
			stop := make(chan struct{})
			lg := startLoad(t, c, 4, stop)
			waitFor(t, "load running", 20*time.Second, func() bool { return lg.completed() >= 4 })
			if err := c.CrashExpert("expert-1"); err != nil {
				t.Fatal(err)
			}
			n := lg.completed()
			waitFor(t, "load continuing", 60*time.Second, func() bool { return lg.completed() >= n+8 })
			close(stop)
			lg.check(t)
		})
	}
}
