package expertnode

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
	"github.com/switchyard-serving/switchyard/internal/gpu/moe"
)

func TestParseDeviceAndMemory(t *testing.T) {
	for _, tc := range []struct {
		in      string
		kind    string
		ordinal int
		bad     bool
	}{
		{"", "cpu", 0, false}, {"cpu", "cpu", 0, false}, {"cuda", "cuda", 0, false}, {"CUDA:3", "cuda", 3, false},
		{"fake", "fake", 0, false}, {"cuda:0,cuda:1", "", 0, true}, {"cuda:-1", "", 0, true}, {"tpu", "", 0, true},
	} {
		kind, ord, err := ParseDevice(tc.in)
		if (err != nil) != tc.bad || kind != tc.kind || ord != tc.ordinal {
			t.Errorf("ParseDevice(%q) = %q, %d, %v", tc.in, kind, ord, err)
		}
	}
	if _, _, err := ParseDevice("cuda:0,cuda:1"); err == nil || !strings.Contains(err.Error(), "one expert node per GPU") {
		t.Errorf("several devices: %v, want advice to run one node per GPU", err)
	}
	for _, tc := range []struct {
		in    string
		frac  float64
		bytes uint64
		bad   bool
	}{
		{"", 0, 0, false}, {"0.9", 0.9, 0, false}, {"1.0", 1, 0, false}, {"40GiB", 0, 40 << 30, false}, {"512M", 0, 512 << 20, false},
		{"1048576", 0, 1 << 20, false}, {"1.5", 0, 0, true}, {"0", 0, 0, true}, {"lots", 0, 0, true}, {"-1GiB", 0, 0, true},
	} {
		f, b, err := ParseGPUMemory(tc.in)
		if (err != nil) != tc.bad || f != tc.frac || b != tc.bytes {
			t.Errorf("ParseGPUMemory(%q) = %v, %d, %v", tc.in, f, b, err)
		}
	}
}

// Without a usable GPU, a node asked for one fails at New with one line that
// says what is missing; nothing is left running.
func TestNewWithoutGPU(t *testing.T) {
	checkGoroutines(t)
	cfg := testConfig(fixtureHF)
	cfg.Device = "cuda:0"
	n, err := New(cfg)
	if err == nil {
		n.Close()
		t.Skip("a GPU is available here")
	}
	if !errors.Is(err, ErrDevice) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("New(--device cuda:0) without a GPU: %q, want one line wrapping ErrDevice", err)
	}
	if !cuda.Built && !strings.Contains(err.Error(), "built without GPU support") {
		t.Fatalf("untagged build: %q should say the binary has no GPU support", err)
	}
	t.Log(err)
}

// A node's GPU budget bounds the experts it holds: it reports the slots the
// budget has room for, and refuses an assignment with more, naming the slots,
// without becoming ready.
func TestGPUBudgetRefusesAssignment(t *testing.T) {
	checkGoroutines(t)
	cfg := testConfig(fixtureHF)
	cfg.Device, cfg.MaxBatchRows = "fake", 16
	// The smallest budget with room for 10 experts of the fixture.
	shape := moe.Config{Layers: fxLayers, NumExperts: fxExperts, Hidden: fxHidden, Intermediate: 32, TopK: 2, ReserveRows: 16, SmallRows: moe.DefaultSmallRows}
	lo, hi := uint64(1), uint64(1<<30)
	for lo < hi {
		shape.BudgetBytes = (lo + hi) / 2
		if shape.Slots() >= 10 {
			hi = shape.BudgetBytes
		} else {
			lo = shape.BudgetBytes + 1
		}
	}
	cfg.GPUMemory = strconv.FormatUint(lo, 10)
	e := startEnv(t, cfg, hooks{})
	if got := e.node.Slots(); got != 10 {
		t.Fatalf("Slots() = %d, want 10", got)
	}
	tb := staticTable(t, 1) // half of the fixture's 48 experts
	err := e.node.SetAssignment(tb)
	if !errors.Is(err, ErrAssignment) || !errors.Is(err, moe.ErrBudget) || !strings.Contains(err.Error(), "slots: 10") {
		t.Fatalf("SetAssignment of %d experts into 10 slots: %v", fxLayers*fxExperts/2, err)
	}
	if e.node.Ready() {
		t.Fatal("node ready after a refused assignment")
	}
	if got := e.node.gpu.experts.Resident(); got != 0 {
		t.Fatalf("%d experts left on the GPU after the refused assignment", got)
	}
}

// A GPU whose context is lost takes the node out of service: the chunk fails
// with the driver's error, health turns NOT_SERVING and stays so (a new table
// does not bring it back), and Fatal tells the process to restart.
func TestGPULostTakesNodeOut(t *testing.T) {
	checkGoroutines(t)
	cfg := testConfig(fixtureHF)
	cfg.Device = "fake"
	e := startEnv(t, cfg, hooks{})
	tb := staticTable(t, 1)
	e.assign(t, tb)
	held := heldBy(tb, "a")
	e.node.gpu.fake.FailLaunches(&cuda.Error{Call: "cuLaunchKernel", Code: 700, Name: "CUDA_ERROR_ILLEGAL_ADDRESS"})
	s := e.stream(t)
	mustSend(t, s, randomBatch(rand.New(rand.NewPCG(5, 5)), 1, 0, 2, held[0]))
	wantErrorResult(t, recvAll(t, s, 1)[resultKey{1, 0, 0}], "CUDA_ERROR_ILLEGAL_ADDRESS")
	select {
	case err := <-e.node.Fatal():
		if !errors.Is(err, cuda.ErrDeviceLost) || !strings.Contains(err.Error(), "fake lost") {
			t.Fatalf("Fatal: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Fatal error after the GPU was lost")
	}
	if got := healthOf(t, e, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health %v after the GPU was lost", got)
	}
	e.node.SetAssignment(staticTable(t, 2))
	if got := healthOf(t, e, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health %v after a new table on a lost GPU", got)
	}
	closeAndDrain(t, s)
}

func TestErrDeviceLostCodes(t *testing.T) {
	for _, tc := range []struct {
		err  *cuda.Error
		lost bool
	}{
		{&cuda.Error{Call: "cuLaunchKernel", Code: 700}, true},
		{&cuda.Error{Call: "cuStreamSynchronize", Code: 719}, true},
		{&cuda.Error{Call: "cuMemAlloc", Code: 214}, true},
		{&cuda.Error{Call: "cuMemAlloc", Code: 2}, false},
		{&cuda.Error{Call: "cublasGemmEx", Code: 13, Name: "CUBLAS_STATUS_EXECUTION_FAILED"}, true},
		{&cuda.Error{Call: "cublasGemmEx", Code: 7, Name: "CUBLAS_STATUS_INVALID_VALUE"}, false},
	} {
		if got := errors.Is(tc.err, cuda.ErrDeviceLost); got != tc.lost {
			t.Errorf("%v: ErrDeviceLost = %v, want %v", tc.err, got, tc.lost)
		}
	}
}
