package cli

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
	"github.com/switchyard-serving/switchyard/internal/gpu/moe"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/synth"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

func init() {
	register("bench-gpu", "measure GPU expert rounds against the device's copy bandwidth and a plain cuBLAS GEMM", runBenchGPU)
}

// runBenchGPU times moe.Experts rounds for one MoE layer of a preset's shapes
// (every expert resident, random bf16 weights, uniform top-k routing) at each
// row count, on three path choices: the default threshold, every expert on the
// grouped GEMV, every expert on cuBLAS. Ratios are to ceilings measured in the
// same run: a device-to-device copy (bytes read + written) and one plain
// cuBLAS bf16 GEMM pair of the same total size.
func runBenchGPU(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench-gpu", stderr)
	device := fs.String("device", "cuda:0", "GPU (cuda:N), or fake")
	presets := fs.String("preset", "h-tiny,h-small", "comma-separated model presets whose expert shapes to use")
	rowsFlag := fs.String("rows", "1,8,64,512,4096", "comma-separated token rows per round")
	reps := fs.Int("reps", 20, "timed rounds per size (median reported)")
	if err := parse(fs, args); err != nil {
		return err
	}
	rows, err := intList(*rowsFlag)
	if err != nil {
		return err
	}
	kind, ord, err := expertnode.ParseDevice(*device)
	if err != nil {
		return err
	}
	var dev *cuda.Device
	switch kind {
	case "cuda":
		dev, err = cuda.Open(ord)
	case "fake":
		dev, err = cuda.OpenFake(cuda.NewFake(8<<30, moe.FakeKernels()))
	default:
		return fmt.Errorf("bench-gpu needs a GPU device, not %q", *device)
	}
	if err != nil {
		return err
	}
	defer dev.Close()
	info := dev.Info()
	fmt.Fprintf(stdout, "device %s: %d MiB, %d SMs, compute %d.%d, L2 %d MiB, driver %d, cuBLAS %d (%s)\n", info.Name, info.TotalBytes>>20,
		info.Multiprocessors, info.ComputeMajor, info.ComputeMinor, info.L2Bytes>>20, info.DriverVersion, info.CUBLASVersion, info.CUBLASLibrary)
	copyBW, err := measureCopy(dev, 1<<30, 10)
	if err != nil {
		return fmt.Errorf("copy bandwidth: %w", err)
	}
	fmt.Fprintf(stdout, "device-to-device copy: %.0f GB/s (bytes read + written, median of 10 copies of 1 GiB)\n", copyBW/1e9)
	for _, name := range strings.Split(*presets, ",") {
		if err := benchPreset(dev, stdout, strings.TrimSpace(name), rows, *reps, copyBW); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func presetInt(p map[string]any, k string) int {
	switch v := p[k].(type) {
	case int:
		return v
	case float64:
		return int(v)
	}
	return 0
}

func medianDur(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	return s[len(s)/2]
}

// timeStream runs f reps times between events on s and returns the median.
func timeStream(dev *cuda.Device, s *cuda.Stream, reps int, f func() error) (time.Duration, error) {
	a, err := dev.NewEvent()
	if err != nil {
		return 0, err
	}
	defer a.Destroy()
	b, err := dev.NewEvent()
	if err != nil {
		return 0, err
	}
	defer b.Destroy()
	var ts []time.Duration
	for i := 0; i < reps+2; i++ {
		if err := a.Record(s); err != nil {
			return 0, err
		}
		if err := f(); err != nil {
			return 0, err
		}
		if err := b.Record(s); err != nil {
			return 0, err
		}
		if err := b.Sync(); err != nil {
			return 0, err
		}
		ms, err := cuda.Elapsed(a, b)
		if err != nil {
			return 0, err
		}
		if i >= 2 { // two warm-ups
			ts = append(ts, time.Duration(float64(ms)*float64(time.Millisecond)))
		}
	}
	return medianDur(ts), nil
}

// measureCopy returns the device-to-device copy bandwidth (read + written bytes per second).
func measureCopy(dev *cuda.Device, n, reps int) (float64, error) {
	src, err := dev.Alloc(n)
	if err != nil {
		return 0, err
	}
	defer dev.Free(src)
	dst, err := dev.Alloc(n)
	if err != nil {
		return 0, err
	}
	defer dev.Free(dst)
	s, err := dev.NewStream()
	if err != nil {
		return 0, err
	}
	defer s.Destroy()
	d, err := timeStream(dev, s, reps, func() error { return s.CopyDevice(dst, src, n) })
	if err != nil {
		return 0, err
	}
	return 2 * float64(n) / d.Seconds(), nil
}

// fillBF16 writes pseudo-random bf16 values of scale ~0.05 (fast, deterministic).
func fillBF16(b []byte, seed uint64) {
	x := seed | 1
	for i := 0; i+1 < len(b); i += 2 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		f := (float32(x>>40)/float32(1<<24) - 0.5) * 0.1
		h := tensor.F32ToBF16(f)
		b[i], b[i+1] = byte(h), byte(h>>8)
	}
}

func benchPreset(dev *cuda.Device, stdout io.Writer, preset string, rows []int, reps int, copyBW float64) error {
	p, err := synth.PresetConfig(preset)
	if err != nil {
		return err
	}
	H, I, E, K := presetInt(p, "hidden_size"), presetInt(p, "intermediate_size"), presetInt(p, "num_local_experts"), presetInt(p, "num_experts_per_tok")
	if E == 0 {
		return fmt.Errorf("preset %s has no routed experts", preset)
	}
	maxRows := 0
	for _, r := range rows {
		maxRows = max(maxRows, r)
	}
	cfg := moe.Config{Layers: 1, NumExperts: E, Hidden: H, Intermediate: I, TopK: K, ReserveRows: maxRows}
	free, _, err := dev.MemInfo()
	if err != nil {
		return err
	}
	cfg.BudgetBytes = free * 8 / 10
	x, err := moe.New(dev, cfg)
	if err != nil {
		return err
	}
	defer x.Close()
	// One expert's random weights, uploaded as every expert (distinct allocations).
	mk := func(r, c int, seed uint64) tensor.Matrix {
		b := make([]byte, 2*r*c)
		fillBF16(b, seed)
		m, _ := tensor.NewMatrix(tensor.BF16, r, c, b)
		return m
	}
	ew := hybrid.ExpertWeights{Gate: mk(I, H, 1), Up: mk(I, H, 2), Down: mk(H, I, 3)}
	start := time.Now()
	for e := 0; e < E; e++ {
		if err := x.Acquire(0, e, ew); err != nil {
			return err
		}
	}
	upload := time.Since(start)
	fmt.Fprintf(stdout, "\n%s: hidden %d, expert intermediate %d, %d experts top-%d; one layer's experts resident (%d MiB, uploaded in %v)\n",
		preset, H, I, E, K, uint64(E)*cfg.ExpertBytes()>>20, upload.Round(time.Millisecond))

	// Reference: one cuBLAS bf16 GEMM pair of the round's total size.
	s, err := dev.NewStream()
	if err != nil {
		return err
	}
	defer s.Destroy()
	blas, err := dev.NewBLAS(s)
	if err != nil {
		return err
	}
	defer blas.Destroy()
	P := maxRows * K
	bufs := map[string]int{"x": 2 * P * H, "w1": 2 * 2 * I * H, "y1": 4 * P * 2 * I, "a": 2 * P * I, "w2": 2 * H * I, "y2": 4 * P * H}
	ptr := map[string]cuda.DevPtr{}
	for k, n := range bufs {
		if ptr[k], err = dev.Alloc(n); err != nil {
			return err
		}
		defer dev.Free(ptr[k])
		if err := s.Memset(ptr[k], 0x3c, n); err != nil { // bf16 ~0.011, not zeros
			return err
		}
	}

	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "rows\tpairs\texperts\tpath\tkernel µs\tround µs\tupload µs\tdownload µs\tweights GB/s\tof copy BW\tTFLOP/s\tcuBLAS ref TFLOP/s\tof ref\treplayed µs\tof copy BW\tof ref\t")
	rng := rand.New(rand.NewPCG(9, 9))
	for _, R := range rows {
		// Page-locked input and output rows, as the expert node uses them.
		in, out, err := x.Buffers(R)
		if err != nil {
			return err
		}
		req := &hybrid.ExpertRequest{Layer: 0, Rows: R, Hidden: H, TopK: K, X: in, Experts: make([]int32, R*K),
			Weights: make([]float32, R*K), Out: out}
		for i := range req.X {
			req.X[i] = float32(rng.NormFloat64())
		}
		for r := 0; r < R; r++ {
			for j, e := range rng.Perm(E)[:K] {
				req.Experts[r*K+j], req.Weights[r*K+j] = int32(e), 1/float32(K)
			}
		}
		pairs := R * K
		ref, err := timeStream(dev, s, reps, func() error {
			if err := blas.GemmRowMajor(pairs, 2*I, H, 1, ptr["x"], cuda.R16BF, H, ptr["w1"], cuda.R16BF, H, 0, ptr["y1"], cuda.R32F, 2*I); err != nil {
				return err
			}
			return blas.GemmRowMajor(pairs, H, I, 1, ptr["a"], cuda.R16BF, I, ptr["w2"], cuda.R16BF, I, 0, ptr["y2"], cuda.R32F, H)
		})
		if err != nil {
			return err
		}
		flops := float64(pairs) * 2 * 3 * float64(H) * float64(I)
		refTF := flops / ref.Seconds() / 1e12
		for _, v := range []struct {
			name    string
			small   int
			batched bool
		}{{"default", moe.DefaultSmallRows, true}, {"gemv", 1 << 30, true}, {"cublas", -1, true}, {"cublas 1/expert", -1, false}} {
			x.SetSmallRows(v.small)
			x.SetBatched(v.batched)
			var kern, round, up, down []time.Duration
			var last moe.Timing
			for i := 0; i < reps+2; i++ {
				t0 := time.Now()
				t, err := x.Compute(req)
				if err != nil {
					return err
				}
				if i >= 2 {
					round = append(round, time.Since(t0))
					kern, up, down = append(kern, t.Kernels), append(up, t.Upload), append(down, t.Download)
				}
				last = t
			}
			k := medianDur(kern)
			bw := float64(last.WeightBytes) / k.Seconds()
			tf := float64(last.FLOPs) / k.Seconds() / 1e12
			// The same kernels queued back to back: the GPU's own time per round.
			rp, err := x.Replay(reps)
			if err != nil {
				return err
			}
			path := fmt.Sprintf("%s (%d on GEMV)", v.name, last.SmallExperts)
			if last.Batched {
				path = fmt.Sprintf("%s (%d on GEMV, batched)", v.name, last.SmallExperts)
			}
			fmt.Fprintf(w, "%d\t%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%.1f\t%.1f\t%.2f\t%.1f\t%.2f\t%.2f\t\n", R, last.Pairs, last.Experts, path,
				us(k), us(medianDur(round)), us(medianDur(up)), us(medianDur(down)), bw/1e9, bw/copyBW, tf, refTF, tf/refTF,
				us(rp), float64(last.WeightBytes)/rp.Seconds()/copyBW, float64(last.FLOPs)/rp.Seconds()/1e12/refTF)
		}
	}
	x.SetSmallRows(moe.DefaultSmallRows)
	x.SetBatched(true)
	if err := w.Flush(); err != nil {
		return err
	}
	if err := x.BatchedErr(); err != nil {
		fmt.Fprintf(stdout, "batched GEMMs unavailable, one GEMM per expert from 4 lanes: %v\n", err)
	}
	fmt.Fprintln(stdout, "kernel: CUDA events around one round's kernels as the node issues them; replayed: the same kernels queued back to back (launch gaps hidden)")
	return nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
