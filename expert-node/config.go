package expertnode

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// ErrConfig reports an invalid Config; the message names the field.
var ErrConfig = errors.New("expertnode: invalid config")

// Config configures a Node. Build one from DefaultConfig and set NodeID and
// ModelPath.
type Config struct {
	// Config is the lifecycle every role shares (agent.Config): NodeID (this
	// node's id in the routing table; required), etcd, gossip, metrics, logging.
	// Run needs etcd; a Node used directly (New, Register, SetAssignment) does not.
	agent.Config
	// Listen is the address Run serves ExpertService on.
	Listen string
	// Listener, when set, is used by Run instead of listening on Listen.
	Listener net.Listener
	// PeerTLS is the mutual TLS of ExpertService (plaintext when empty).
	PeerTLS rpc.TLSFiles
	// HealthListen, when set, is an address Run serves only the gRPC health
	// service on, in plaintext: Kubernetes' gRPC probes speak no TLS, and
	// this keeps the probes' "SERVING once the assigned experts are loaded"
	// when ExpertService uses PeerTLS.
	HealthListen string
	// DropGrace is how long replicas that left the routing tables stay loaded
	// (trunks may still be finishing a step routed by the previous table).
	DropGrace time.Duration
	// ModelPath is the checkpoint: a Hugging Face folder (config.json +
	// safetensors) or a .gguf file. Required.
	ModelPath string
	// MaxRecvMsgBytes is the largest ExpertBatch message accepted, and the
	// largest ExpertResult sent, in bytes (applied through ServerOptions).
	// Per-pair answers (--deterministic trunks) are up to top_k times their
	// batch's activations: keep it at least the trunks' message limit
	// (16 MiB by default; trunks size their chunks so both directions fit).
	// Default 64 MiB.
	MaxRecvMsgBytes int
	// CoalesceWindow is how long the compute loop waits, once something is
	// queued, for more chunks to coalesce with; it stops waiting early when
	// MaxBatchRows rows are queued. 0 (the default) adds no wait: a round takes
	// whatever is queued when the compute loop becomes free.
	CoalesceWindow time.Duration
	// MaxBatchRows caps the rows one compute round takes from the queue, in token
	// rows (a single larger chunk is still computed, alone). Default 4096.
	MaxBatchRows int
	// MaxInflightPerStream is the number of chunks one Dispatch stream may have
	// outstanding (queued, computing or being sent) before the node stops reading
	// from it. Default 16.
	MaxInflightPerStream int
	// SpinWait is how long the compute threads keep polling for the next
	// product before they park (kernels.SetSpinWait, a process-wide setting
	// the expert command applies; `switchyard up`, whose nodes share one
	// process, applies its own --spin-wait of the same default). Between two layers of
	// the trunks' steps a node idles a millisecond or more; a parked thread
	// takes 50 µs to 1 ms to wake on a virtual machine, and products
	// estimated under a millisecond do not wait for it, so a one-session
	// layer was computed on one thread: half the speed (measured:
	// BenchmarkComputeExpertsGap, 2 ms gaps, 3 experts per call, 677 µs
	// against 327-356 µs with 5 ms). The cost is the threads polling for up
	// to SpinWait after each round. Default 5 ms; 0: the kernels' default.
	SpinWait time.Duration
	// Tracing provides the node's tracer (nil: no spans).
	Tracing *telemetry.Tracing
	// Registry receives the node's metrics (nil: a private registry).
	Registry *prometheus.Registry

	// Device is where routed experts are computed: "cpu" (the default), "cuda"
	// or "cuda:N" (GPU N, through the CUDA driver and cuBLAS; needs a binary
	// built with -tags cuda), or "fake" (the CUDA path on an in-memory emulated
	// GPU that runs the kernels' Go twins: for tests, slow). One GPU per node:
	// run one expert node per GPU.
	Device string
	// GPUMemory is the device memory the node may use for experts and scratch:
	// a fraction of the GPU's total memory ("0.9") or a size ("40GiB", "512MiB",
	// bytes). Empty: 0.9 of the memory free at start. Ignored on the CPU.
	GPUMemory string
	// GPUSmallRows: on a GPU, experts with at most this many rows in a round use
	// the grouped GEMV kernel and the others cuBLAS (0: moe.DefaultSmallRows;
	// negative: cuBLAS for every expert).
	GPUSmallRows int
	// Deterministic makes the CPU kernels batch-invariant (an expert's output
	// for a row does not depend on the other rows computed with it), which
	// trunks running with --deterministic (their default) need on every
	// expert node. On by default; off, the one- and two-row products use
	// kernels that round differently (faster only on CPUs without AVX-512
	// BF16, by 10-25% on those products). (GPU expert nodes are not
	// batch-invariant and answer row sums.)
	Deterministic bool
	// Mmap reads the assigned experts' matrices through the file's memory
	// map instead of copying them into anonymous memory, the default on the
	// CPU (faster expert compute; a re-placement copies only the experts
	// that move in, through a hybrid.ExpertCache). A GPU node always maps:
	// it uploads its experts.
	Mmap bool
}

// DefaultConfig returns the defaults; NodeID and ModelPath are left empty.
func DefaultConfig() Config {
	return Config{
		Config:               agent.DefaultConfig(),
		Listen:               "127.0.0.1:7071",
		DropGrace:            3 * time.Second,
		MaxRecvMsgBytes:      64 << 20,
		CoalesceWindow:       0,
		MaxBatchRows:         4096,
		MaxInflightPerStream: 16,
		SpinWait:             5 * time.Millisecond,
		Deterministic:        true,
	}
}

// AddFlags registers the expert node's flags (and the shared ones) on fs.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	c.Config.AddFlags(fs, "")
	fs.StringVar(&c.Listen, "listen", c.Listen, "expert service address")
	fs.StringVar(&c.ModelPath, "model", c.ModelPath, "model: Hugging Face folder or .gguf (required)")
	fs.StringVar(&c.PeerTLS.Cert, "peer-tls-cert", "", "node-to-node certificate (PEM)")
	fs.StringVar(&c.PeerTLS.Key, "peer-tls-key", "", "node-to-node private key (PEM)")
	fs.StringVar(&c.PeerTLS.CA, "peer-tls-ca", "", "node-to-node CA bundle (PEM); enables mutual TLS on servers")
	fs.StringVar(&c.HealthListen, "health-listen", c.HealthListen, "also serve the gRPC health service alone, in plaintext, here (e.g. :7073, for probes when the expert service uses TLS; empty: off)")
	fs.BoolVar(&c.Deterministic, "deterministic", c.Deterministic, "batch-invariant CPU kernels, which trunks with --deterministic (their default) need; --deterministic=false: one- and two-row kernels that round differently (faster on CPUs without AVX-512 BF16)")
	fs.BoolVar(&c.Mmap, "mmap", c.Mmap, "read the assigned experts through the file's memory map (page cache, shared) instead of copying them into anonymous memory with transparent huge pages (the default on the CPU: faster expert compute, anonymous memory the size of the assignment; a re-placement copies only the experts that move in); GPU nodes always map")
	fs.StringVar(&c.Device, "device", "cpu", "where routed experts run: cpu, cuda, cuda:N (one GPU per expert node; needs the -cuda build), or fake (emulated GPU, tests)")
	fs.StringVar(&c.GPUMemory, "gpu-memory", "", "GPU memory for experts and scratch: a fraction of the GPU's memory (0.8) or a size (40GiB); default 0.9 of the free memory")
	fs.DurationVar(&c.SpinWait, "spin-wait", c.SpinWait, "how long idle compute threads poll for the next product before parking (the gap between the trunks' layers should fit; 0: 200µs)")
	fs.IntVar(&c.GPUSmallRows, "gpu-small-rows", 0, "GPU: experts with at most this many rows in a round use the grouped GEMV kernel, larger ones cuBLAS (0: default 8; -1: always cuBLAS)")
}

// Validate checks every field and resolves the shared flags (agent.Config:
// --etcd, --gossip-*) into their fields.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrConfig, err))
	}
	if c.ModelPath == "" {
		errs = append(errs, fmt.Errorf("%w: ModelPath is empty", ErrConfig))
	}
	if c.MaxRecvMsgBytes <= 0 || c.MaxRecvMsgBytes > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("%w: MaxRecvMsgBytes is %d, want 1..%d", ErrConfig, c.MaxRecvMsgBytes, math.MaxInt32))
	}
	if c.CoalesceWindow < 0 {
		errs = append(errs, fmt.Errorf("%w: CoalesceWindow is %v, want >= 0", ErrConfig, c.CoalesceWindow))
	}
	if c.SpinWait < 0 {
		errs = append(errs, fmt.Errorf("%w: SpinWait is %v, want >= 0", ErrConfig, c.SpinWait))
	}
	if c.MaxBatchRows <= 0 {
		errs = append(errs, fmt.Errorf("%w: MaxBatchRows is %d, want > 0", ErrConfig, c.MaxBatchRows))
	}
	if _, _, err := ParseDevice(c.Device); err != nil {
		errs = append(errs, fmt.Errorf("%w: Device: %w", ErrConfig, err))
	}
	if _, _, err := ParseGPUMemory(c.GPUMemory); err != nil {
		errs = append(errs, fmt.Errorf("%w: GPUMemory: %w", ErrConfig, err))
	}
	if c.MaxInflightPerStream <= 0 {
		errs = append(errs, fmt.Errorf("%w: MaxInflightPerStream is %d, want > 0", ErrConfig, c.MaxInflightPerStream))
	}
	return errors.Join(errs...)
}

// ParseDevice parses Config.Device: kind is "cpu", "cuda" or "fake", ordinal
// the GPU number.
func ParseDevice(s string) (kind string, ordinal int, err error) {
	switch s = strings.TrimSpace(strings.ToLower(s)); {
	case s == "" || s == "cpu":
		return "cpu", 0, nil
	case s == "fake":
		return "fake", 0, nil
	case s == "cuda" || s == "gpu":
		return "cuda", 0, nil
	case strings.Contains(s, ","):
		return "", 0, fmt.Errorf("%q names several devices; run one expert node per GPU (--device cuda:0, cuda:1, ... in separate processes or pods)", s)
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(s[len("cuda:"):])
		if err != nil || n < 0 {
			return "", 0, fmt.Errorf("%q: want cuda:N with N a GPU number >= 0", s)
		}
		return "cuda", n, nil
	}
	return "", 0, fmt.Errorf("unknown device %q (want cpu, cuda, cuda:N or fake)", s)
}

// ParseGPUMemory parses Config.GPUMemory: a fraction in (0, 1] (of the GPU's
// total memory) or a byte size with an optional KiB/MiB/GiB/TiB (or K/M/G/T)
// suffix. Empty returns fraction 0: the caller's default.
func ParseGPUMemory(s string) (fraction float64, bytes uint64, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, 0, nil
	}
	if strings.Contains(s, ".") && !strings.ContainsAny(s, "KMGTkmgtBb") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || !(f > 0 && f <= 1) {
			return 0, 0, fmt.Errorf("%q: a fraction must be in (0, 1]", s)
		}
		return f, 0, nil
	}
	mult := uint64(1)
	num := s
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 {
		return 0, 0, fmt.Errorf("%q: want a fraction like 0.9 or a size like 40GiB", s)
	}
	return 0, n * mult, nil
}
