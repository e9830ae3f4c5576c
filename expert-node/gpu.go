package expertnode

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
	"github.com/switchyard-serving/switchyard/internal/gpu/moe"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// ErrDevice reports a GPU the node cannot use (no driver, no such GPU, a budget
// too small for the model); the message says what is missing.
var ErrDevice = errors.New("expertnode: GPU unavailable")

// fakeGPUBytes is the memory of the "fake" device.
const fakeGPUBytes = 8 << 30

// gpu is the node's GPU backend: the device, the resident experts and their metrics.
type gpu struct {
	dev     *cuda.Device
	experts *moe.Experts
	m       *gpuMetrics
	fake    *cuda.Fake // the emulated GPU of --device fake (tests inject faults)
}

// openGPU opens the configured device and an empty expert store sized for the
// model and the node's largest round.
func openGPU(cfg Config, reg *prometheus.Registry) (*gpu, error) {
	kind, ordinal, _ := ParseDevice(cfg.Device) // validated
	var (
		dev  *cuda.Device
		fake *cuda.Fake
		err  error
	)
	switch kind {
	case "fake":
		fake = cuda.NewFake(fakeGPUBytes, moe.FakeKernels())
		dev, err = cuda.OpenFake(fake)
	default:
		dev, err = cuda.Open(ordinal)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: --device %s: %w", ErrDevice, cfg.Device, err)
	}
	mc, err := config.ReadCheckpoint(cfg.ModelPath)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("expertnode: read model shape: %w", err)
	}
	free, total, err := dev.MemInfo()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrDevice, cfg.Device, err)
	}
	frac, bytes, _ := ParseGPUMemory(cfg.GPUMemory) // validated
	budget := bytes
	switch {
	case bytes == 0 && frac == 0:
		budget = uint64(0.9 * float64(free))
	case bytes == 0:
		budget = uint64(frac * float64(total))
	}
	if budget > free {
		dev.Close()
		return nil, fmt.Errorf("%w: %s: --gpu-memory asks for %d MiB, only %d MiB of %d MiB are free",
			ErrDevice, cfg.Device, budget>>20, free>>20, total>>20)
	}
	x, err := moe.New(dev, moe.Config{Layers: mc.Layers, NumExperts: mc.Experts, Hidden: mc.Hidden, Intermediate: mc.Intermediate,
		TopK: max(mc.ExpertsPerTok, 1), BudgetBytes: budget, ReserveRows: cfg.MaxBatchRows, SmallRows: cfg.GPUSmallRows})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("%w: %s (%s): %w", ErrDevice, cfg.Device, dev.Info().Name, err)
	}
	g := &gpu{dev: dev, experts: x, m: newGPUMetrics(reg, cfg.NodeID), fake: fake}
	g.observeMemory()
	return g, nil
}

// Fatal receives one error when the node's GPU is lost (an illegal address,
// a launch failure, an uncorrectable ECC error: cuda.ErrDeviceLost). The node
// then reports NOT_SERVING and answers every chunk with the error; only a new
// process can use the GPU again, so the caller should exit (RunExpert does) and
// let the supervisor restart it. Trunks retry the chunks on other replicas.
func (n *Node) Fatal() <-chan error { return n.fatal }

// deviceFault handles a failed GPU round: a lost device takes the node out of
// service once.
func (n *Node) deviceFault(err error) {
	if !errors.Is(err, cuda.ErrDeviceLost) {
		return
	}
	n.lostOnce.Do(func() {
		n.lost.Store(true)
		n.setServing(false)
		n.fatal <- fmt.Errorf("expertnode: %s lost: %w", n.cfg.Device, err)
	})
}

// Slots is the number of experts the node's GPU budget holds (0 on the CPU:
// no limit of its own).
func (n *Node) Slots() int {
	if n.gpu == nil {
		return 0
	}
	return n.gpu.experts.Config().Slots()
}

// DeviceInfo describes the node's GPU ("" on the CPU).
func (n *Node) DeviceInfo() string {
	if n.gpu == nil {
		return ""
	}
	i := n.gpu.dev.Info()
	return fmt.Sprintf("%s (cuda:%d, %d MiB, compute %d.%d, driver %d, cuBLAS %d)", i.Name, i.Ordinal, i.TotalBytes>>20,
		i.ComputeMajor, i.ComputeMinor, i.DriverVersion, i.CUBLASVersion)
}

// acquire uploads the shard's experts to the GPU (those already resident for
// the previous assignment are shared, not copied). On failure nothing stays
// acquired.
func (g *gpu) acquire(m *hybrid.Model, assigned map[[2]int]bool) ([][2]int, error) {
	var held [][2]int
	for key := range assigned {
		l, e := key[0], key[1]
		if l < 0 || l >= len(m.W.Layers) || e < 0 || e >= len(m.W.Layers[l].Experts) {
			continue
		}
		w := m.W.Layers[l].Experts[e]
		if w.Gate.Data == nil {
			continue // a dense layer: nothing to hold
		}
		if err := g.experts.Acquire(l, e, w); err != nil {
			g.release(held)
			return nil, err
		}
		held = append(held, key)
	}
	g.observeMemory()
	return held, nil
}

func (g *gpu) release(keys [][2]int) error {
	var errs []error
	for _, k := range keys {
		errs = append(errs, g.experts.Release(k[0], k[1]))
	}
	g.observeMemory()
	return errors.Join(errs...)
}

func (g *gpu) close() error {
	return errors.Join(g.experts.Close(), g.dev.Close())
}

func (g *gpu) observeMemory() {
	experts, scratch, budget := g.experts.Memory()
	free, total, err := g.dev.MemInfo()
	g.m.mem.WithLabelValues("experts").Set(float64(experts))
	g.m.mem.WithLabelValues("scratch").Set(float64(scratch))
	g.m.mem.WithLabelValues("budget").Set(float64(budget))
	if err == nil {
		g.m.mem.WithLabelValues("device_free").Set(float64(free))
		g.m.mem.WithLabelValues("device_total").Set(float64(total))
	}
	g.m.resident.Set(float64(g.experts.Resident()))
}

func (g *gpu) observeRound(layer int, t moe.Timing) {
	l := strconv.Itoa(layer)
	g.m.kernel.WithLabelValues(l).Observe(t.Kernels.Seconds())
	g.m.copy.WithLabelValues("host_to_device").Observe(t.Upload.Seconds())
	g.m.copy.WithLabelValues("device_to_host").Observe(t.Download.Seconds())
}

// gpuMetrics are the GPU series of an expert node.
type gpuMetrics struct {
	mem      *prometheus.GaugeVec
	resident prometheus.Gauge
	kernel   *prometheus.HistogramVec
	copy     *prometheus.HistogramVec
}

func newGPUMetrics(reg *prometheus.Registry, node string) *gpuMetrics {
	cl := prometheus.Labels{"node_id": node}
	m := &gpuMetrics{
		mem: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_expert_gpu_memory_bytes",
			Help: "GPU memory: held by experts, by round scratch, the node's budget, and the device's free and total memory.", ConstLabels: cl}, []string{"kind"}),
		resident: prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_expert_gpu_resident_experts",
			Help: "Experts resident in GPU memory.", ConstLabels: cl}),
		kernel: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "switchyard_expert_gpu_kernel_seconds",
			Help: "GPU time of one round's kernels and GEMMs (CUDA events).", Buckets: telemetry.LatencyBuckets, ConstLabels: cl}, []string{"layer"}),
		copy: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "switchyard_expert_gpu_copy_seconds",
			Help: "Host-device copy time of one round (CUDA events).", Buckets: telemetry.LatencyBuckets, ConstLabels: cl}, []string{"direction"}),
	}
	reg.MustRegister(m.mem, m.resident, m.kernel, m.copy)
	return m
}
