package moe

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// testDevice is a device the tests run on: the fake always, a real GPU when
// this binary was built with -tags cuda and one is found.
type testDevice struct {
	name string
	dev  *cuda.Device
	fake *cuda.Fake
}

func devices(t *testing.T) []testDevice {
	t.Helper()
	f := cuda.NewFake(8<<30, FakeKernels())
	fd, err := cuda.OpenFake(f)
	if err != nil {
		t.Fatal(err)
	}
	// A fake whose cuBLAS refuses batched GEMMs: the per-expert lanes run instead.
	f2 := cuda.NewFake(8<<30, FakeKernels())
	f2.NoBatched = true
	fd2, err := cuda.OpenFake(f2)
	if err != nil {
		t.Fatal(err)
	}
	out := []testDevice{{"fake", fd, f}, {"fake-lanes", fd2, f2}}
	if gpu := realDevice(t); gpu != nil {
		out = append(out, testDevice{"gpu", gpu, nil})
	}
	return out
}

// realDevice opens cuda:0, or logs why not and returns nil.
func realDevice(t testing.TB) *cuda.Device {
	d, err := cuda.Open(0)
	if err != nil {
		t.Logf("no real GPU for this test: %v", err)
		if os.Getenv("SWITCHYARD_REQUIRE_GPU") != "" {
			t.Fatalf("SWITCHYARD_REQUIRE_GPU is set: %v", err)
		}
		return nil
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func randMatrix(r *rand.Rand, dt tensor.DType, rows, cols int, scale float32) tensor.Matrix {
	v := make([]float32, rows*cols)
	for i := range v {
		v[i] = scale * float32(r.NormFloat64())
	}
	var data []byte
	switch dt {
	case tensor.BF16:
		data = make([]byte, 2*len(v))
		for i, f := range v {
			b := tensor.F32ToBF16(f)
			data[2*i], data[2*i+1] = byte(b), byte(b>>8)
		}
	case tensor.F32:
		data = make([]byte, 4*len(v))
		for i, f := range v {
			u := math.Float32bits(f)
			data[4*i], data[4*i+1], data[4*i+2], data[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		}
	case tensor.Q8_0:
		data = make([]byte, rows*cols/tensor.Q8_0BlockValues*tensor.Q8_0BlockBytes)
		tensor.QuantizeQ8_0(v, data)
	default:
		rb, err := dt.RowBytes(cols)
		if err != nil {
			panic(err)
		}
		data = make([]byte, rows*rb)
		if tensor.CanQuantize(dt) {
			tensor.Quantize(dt, v, data)
			break
		}
		// The i-quants have no encoder here: random blocks, each with an f16
		// scale of the values' order (IQ1_M's is the top nibbles of its four
		// scale words at 48, the others' the block's first two bytes).
		for i := range data {
			data[i] = byte(r.IntN(256))
		}
		bb := dt.BlockBytes()
		for b := 0; b < len(data); b += bb {
			h := tensor.F32ToF16(scale * float32(0.02+0.02*r.Float64()))
			if dt == tensor.IQ1_M {
				for k := range 4 {
					data[b+49+2*k] = data[b+49+2*k]&0x0F | byte(h>>(4*k))<<4
				}
				continue
			}
			data[b], data[b+1] = byte(h), byte(h>>8)
		}
	}
	m, err := tensor.NewMatrix(dt, rows, cols, data)
	if err != nil {
		panic(err)
	}
	return m
}

func randExperts(seed uint64, dt tensor.DType, n, H, I int) []hybrid.ExpertWeights {
	r := rand.New(rand.NewPCG(seed, 7))
	ex := make([]hybrid.ExpertWeights, n)
	for e := range ex {
		ex[e] = hybrid.ExpertWeights{Gate: randMatrix(r, dt, I, H, 0.05), Up: randMatrix(r, dt, I, H, 0.05), Down: randMatrix(r, dt, H, I, 0.05)}
	}
	return ex
}

// randRequest routes rows to topK distinct experts with softmax-like weights;
// every fifth row has a padding slot (weight 0).
func randRequest(seed uint64, layer, rows, H, topK, nExperts int, skew bool) *hybrid.ExpertRequest {
	r := rand.New(rand.NewPCG(seed, 11))
	req := &hybrid.ExpertRequest{Layer: layer, Rows: rows, Hidden: H, TopK: topK,
		X: make([]float32, rows*H), Experts: make([]int32, rows*topK), Weights: make([]float32, rows*topK), Out: make([]float32, rows*H)}
	for i := range req.X {
		req.X[i] = float32(r.NormFloat64())
	}
	for i := 0; i < rows; i++ {
		perm := r.Perm(nExperts)
		if skew { // most rows on the first experts: some groups go past SmallRows
			for j := range perm {
				perm[j] = (perm[j] * perm[j]) % nExperts
			}
			seen := map[int]bool{}
			k := 0
			for _, e := range append(perm, r.Perm(nExperts)...) {
				if !seen[e] && k < topK {
					seen[e] = true
					perm[k] = e
					k++
				}
			}
		}
		for j := 0; j < topK; j++ {
			req.Experts[i*topK+j] = int32(perm[j])
			req.Weights[i*topK+j] = 0.1 + r.Float32()
			if i%5 == 4 && j == topK-1 {
				req.Weights[i*topK+j] = 0
				req.Experts[i*topK+j] = int32(r.IntN(1000) - 500) // ignored: padding
			}
		}
	}
	return req
}

// relErr is max|a-b| / max|b|.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		num = math.Max(num, math.Abs(float64(a[i]-b[i])))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	if den == 0 {
		return num
	}
	return num / den
}

func newStore(t *testing.T, d *cuda.Device, layers, nExperts, H, I, topK, small int) *Experts {
	t.Helper()
	x, err := New(d, Config{Layers: layers, NumExperts: nExperts, Hidden: H, Intermediate: I, TopK: topK,
		BudgetBytes: 4 << 30, ReserveRows: 256, SmallRows: small})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := x.Close(); err != nil {
			t.Error(err)
		}
	})
	return x
}

// TestComputeMatchesCPU compares Compute with the CPU path across sizes, both
// kernel paths and several weight types. Tolerances: 1e-4 of the output's
// largest value where every expert takes the GEMV path (f32 activations), 1e-2
// where cuBLAS runs (activations rounded to bf16, as bf16 GEMMs take them).
func TestComputeMatchesCPU(t *testing.T) {
	const nExperts, topK = 8, 2
	// The types of 256-value blocks need widths of 256: the K-quants and
	// the i-quants of llama.cpp's low-bit mixes (uploaded through
	// DequantizeRow as every type is).
	type shape struct {
		dt   tensor.DType
		H, I int
	}
	var shapes []shape
	for _, dt := range []tensor.DType{tensor.BF16, tensor.F32, tensor.Q8_0, tensor.MXFP4} {
		shapes = append(shapes, shape{dt, 128, 64})
	}
	for _, dt := range []tensor.DType{tensor.Q4_K, tensor.Q6_K, tensor.IQ2_XXS, tensor.IQ3_S, tensor.IQ1_S, tensor.IQ1_M} {
		shapes = append(shapes, shape{dt, 256, 256})
	}
	for _, td := range devices(t) {
		for _, sh := range shapes {
			dt, H, I := sh.dt, sh.H, sh.I
			experts := randExperts(1, dt, nExperts, H, I)
			for _, tc := range []struct {
				rows, small int
				skew        bool
			}{{1, 32, false}, {3, 32, false}, {17, 32, true}, {64, 32, true}, {40, -1, false}, {40, 1000, false}, {200, 32, true}} {
				name := fmt.Sprintf("%s/%v/rows%d/small%d", td.name, dt, tc.rows, tc.small)
				t.Run(name, func(t *testing.T) {
					x := newStore(t, td.dev, 2, nExperts, H, I, topK, tc.small)
					for e := range experts {
						if err := x.Acquire(1, e, experts[e]); err != nil {
							t.Fatal(err)
						}
					}
					req := randRequest(uint64(tc.rows), 1, tc.rows, H, topK, nExperts, tc.skew)
					want := make([]float32, len(req.Out))
					cpu := *req
					cpu.Out = want
					// The GEMV path multiplies float32 activations: the CPU reference must not round them to bf16 for bf16
					// weights, nor quantize them to 8 bits for Q8_0 ones.
					prevBF, prevQ8 := kernels.SetBF16Activations(false), kernels.SetQ8Activations(false)
					err := hybrid.ComputeExperts(experts, &cpu, &hybrid.ExpertScratch{})
					kernels.SetBF16Activations(prevBF)
					kernels.SetQ8Activations(prevQ8)
					if err != nil {
						t.Fatal(err)
					}
					for i := range req.Out {
						req.Out[i] = float32(math.NaN()) // must be overwritten
					}
					tm, err := x.Compute(req)
					if err != nil {
						t.Fatal(err)
					}
					if td.fake != nil && tm.SmallExperts < tm.Experts {
						// The cuBLAS experts ran batched, or (without batched GEMMs) one GEMM each.
						batched, single := td.fake.Launches["gemm_batched"], td.fake.Launches["gemm"]
						if td.fake.NoBatched && (batched != 0 || single == 0 || tm.Batched) || !td.fake.NoBatched && (batched == 0 || !tm.Batched) {
							t.Fatalf("batched GEMM calls %d, single %d, Timing.Batched %v on %s", batched, single, tm.Batched, td.name)
						}
					}
					tol := 1e-4
					if tm.SmallExperts < tm.Experts || dt != tensor.BF16 {
						// cuBLAS rounds activations to bf16; weights that are not bf16
						// (f32, Q8_0) are rounded to bf16 at upload.
						tol = 1e-2
					}
					if e := relErr(req.Out, want); !(e <= tol) {
						t.Fatalf("relative error %.3g > %.0e (pairs %d, experts %d, on GEMV %d)", e, tol, tm.Pairs, tm.Experts, tm.SmallExperts)
					} else {
						t.Logf("relative error %.3g (pairs %d, experts %d, on GEMV %d, kernels %v)", e, tm.Pairs, tm.Experts, tm.SmallExperts, tm.Kernels)
					}
				})
			}
		}
	}
}

func TestComputeErrors(t *testing.T) {
	const H, I, nExperts, topK = 64, 32, 4, 2
	for _, td := range devices(t) {
		t.Run(td.name, func(t *testing.T) {
			x := newStore(t, td.dev, 1, nExperts, H, I, topK, 0)
			experts := randExperts(2, tensor.BF16, nExperts, H, I)
			if err := x.Acquire(0, 0, experts[0]); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name string
				mod  func(r *hybrid.ExpertRequest)
				want string
			}{
				{"not resident", func(r *hybrid.ExpertRequest) { r.Experts[1] = 3 }, "expert 3 is not available here"},
				{"out of range", func(r *hybrid.ExpertRequest) { r.Experts[1] = 9 }, "expert 9 is not available here"},
				{"layer", func(r *hybrid.ExpertRequest) { r.Layer = 5 }, "layer 5 of 1"},
				{"width", func(r *hybrid.ExpertRequest) { r.Hidden = 32 }, "hidden size is 64"},
				{"short", func(r *hybrid.ExpertRequest) { r.X = r.X[:10] }, "short buffers"},
			} {
				req := randRequest(3, 0, 2, H, topK, nExperts, false)
				for i := range req.Experts {
					req.Experts[i], req.Weights[i] = 0, 0.5
				}
				tc.mod(req)
				if _, err := x.Compute(req); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
				}
			}
			// The store still works after refused requests.
			req := randRequest(3, 0, 2, H, topK, nExperts, false)
			for i := range req.Experts {
				req.Experts[i], req.Weights[i] = 0, 0.5
			}
			if _, err := x.Compute(req); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBudgetAndRefcounts(t *testing.T) {
	const H, I, nExperts, topK = 64, 32, 4, 2
	f := cuda.NewFake(1<<30, FakeKernels())
	d, err := cuda.OpenFake(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Layers: 1, NumExperts: nExperts, Hidden: H, Intermediate: I, TopK: topK, ReserveRows: 8, SmallRows: DefaultSmallRows}
	cfg.BudgetBytes = cfg.scratchBytes(8) + 2*cfg.ExpertBytes() + 100
	if got := cfg.Slots(); got != 2 {
		t.Fatalf("Slots() = %d, want 2", got)
	}
	x, err := New(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	experts := randExperts(4, tensor.BF16, nExperts, H, I)
	for e := 0; e < 2; e++ {
		if err := x.Acquire(0, e, experts[e]); err != nil {
			t.Fatal(err)
		}
	}
	err = x.Acquire(0, 2, experts[2])
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), "slots: 2") {
		t.Fatalf("third expert: %v, want ErrBudget naming the slots", err)
	}
	// A second reference to a resident expert costs nothing; the expert stays
	// until both are released.
	if err := x.Acquire(0, 1, experts[1]); err != nil {
		t.Fatal(err)
	}
	if err := x.Release(0, 1); err != nil {
		t.Fatal(err)
	}
	if x.Resident() != 2 {
		t.Fatalf("resident %d after one of two releases, want 2", x.Resident())
	}
	if err := x.Release(0, 1); err != nil {
		t.Fatal(err)
	}
	if err := x.Acquire(0, 2, experts[2]); err != nil {
		t.Fatalf("after a release the budget has room: %v", err)
	}
	if err := x.Release(0, 3); err == nil {
		t.Fatal("release of a non-resident expert succeeded")
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if u := f.Used(); u != 0 {
		t.Fatalf("%d device bytes still allocated after Close", u)
	}
}

func TestPTXIsEmbedded(t *testing.T) {
	// Every kernel the store launches has a twin, and every twin a kernel.
	s := string(PTX)
	if !strings.Contains(s, ".target sm_80") {
		t.Error("embedded PTX is not for sm_80")
	}
	for k := range FakeKernels() {
		if !strings.Contains(s, ".entry "+k+"(") {
			t.Errorf("embedded PTX lacks kernel %q", k)
		}
	}
	if n := strings.Count(s, ".entry "); n != len(FakeKernels()) {
		t.Errorf("PTX has %d kernels, %d twins", n, len(FakeKernels()))
	}
}

// roundedReference computes req on the CPU with the GPU's roundings: on the
// cuBLAS path (experts with more than small rows) the input rows and the
// activations are rounded to bf16. Weights are rounded to bf16 as at upload.
func roundedReference(experts []hybrid.ExpertWeights, req *hybrid.ExpertRequest, small int) []float32 {
	H, K := req.Hidden, req.TopK
	count := map[int32]int{}
	for i, e := range req.Experts[:req.Rows*K] {
		if req.Weights[i] != 0 {
			count[e]++
		}
	}
	rb := func(f float32) float32 { return bf16ToF32(bf16(f)) }
	deq := func(m tensor.Matrix) []float32 {
		v := make([]float32, m.Rows*m.Cols)
		for r := 0; r < m.Rows; r++ {
			tensor.DequantizeRow(m.DType, m.Row(r), v[r*m.Cols:(r+1)*m.Cols])
		}
		for i := range v {
			v[i] = rb(v[i])
		}
		return v
	}
	out := make([]float32, req.Rows*H)
	for r := 0; r < req.Rows; r++ {
		for j := 0; j < K; j++ {
			w, e := req.Weights[r*K+j], req.Experts[r*K+j]
			if w == 0 {
				continue
			}
			big := count[e] > small
			ew := experts[e]
			I := ew.Gate.Rows
			g, u, d := deq(ew.Gate), deq(ew.Up), deq(ew.Down)
			x := append([]float32(nil), req.X[r*H:(r+1)*H]...)
			if big {
				for i := range x {
					x[i] = rb(x[i])
				}
			}
			act := make([]float32, I)
			for i := 0; i < I; i++ {
				var sg, su float64
				for c := 0; c < H; c++ {
					sg += float64(g[i*H+c]) * float64(x[c])
					su += float64(u[i*H+c]) * float64(x[c])
				}
				act[i] = siluMul(float32(sg), float32(su))
				if big {
					act[i] = rb(act[i])
				}
			}
			for c := 0; c < H; c++ {
				var s float64
				for i := 0; i < I; i++ {
					s += float64(d[c*I+i]) * float64(act[i])
				}
				out[r*H+c] += w * float32(s)
			}
		}
	}
	return out
}

// TestComputeExactUpToRounding checks that the GPU pipeline is exact except
// for the roundings it documents: against roundedReference the error is that
// of float32 summation order (1e-5 of the largest value), on both paths and
// every weight type.
func TestComputeExactUpToRounding(t *testing.T) {
	const H, I, nExperts, topK = 64, 32, 8, 2
	for _, td := range devices(t) {
		for _, dt := range []tensor.DType{tensor.BF16, tensor.Q8_0} {
			experts := randExperts(5, dt, nExperts, H, I)
			for _, tc := range []struct{ rows, small int }{{5, 32}, {99, 32}, {99, -1}, {99, 1000}} {
				t.Run(fmt.Sprintf("%s/%v/rows%d/small%d", td.name, dt, tc.rows, tc.small), func(t *testing.T) {
					x := newStore(t, td.dev, 1, nExperts, H, I, topK, tc.small)
					for e := range experts {
						if err := x.Acquire(0, e, experts[e]); err != nil {
							t.Fatal(err)
						}
					}
					req := randRequest(uint64(tc.rows)+100, 0, tc.rows, H, topK, nExperts, true)
					if _, err := x.Compute(req); err != nil {
						t.Fatal(err)
					}
					want := roundedReference(experts, req, x.Config().SmallRows)
					if e := relErr(req.Out, want); !(e <= 1e-5) {
						t.Fatalf("relative error %.3g against the rounded reference, want <= 1e-5", e)
					}
				})
			}
		}
	}
}

// TestComputeBuckets routes rows to experts with R, R/2, R/4, R/8 rows each,
// so that the cuBLAS experts fall into several padded buckets, and checks the
// result against the rounded reference.
func TestComputeBuckets(t *testing.T) {
	const H, I, nExperts, topK, rows = 64, 32, 16, 4, 40
	experts := randExperts(9, tensor.BF16, nExperts, H, I)
	for _, td := range devices(t) {
		for _, small := range []int{-1, 6} {
			t.Run(fmt.Sprintf("%s/small%d", td.name, small), func(t *testing.T) {
				x := newStore(t, td.dev, 1, nExperts, H, I, topK, small)
				for e := range experts {
					if err := x.Acquire(0, e, experts[e]); err != nil {
						t.Fatal(err)
					}
				}
				req := randRequest(3, 0, rows, H, topK, nExperts, false)
				for r := 0; r < rows; r++ {
					for j, e := range []int{0, 1 + r%2, 3 + r%4, 7 + r%8} {
						req.Experts[r*topK+j] = int32(e)
					}
				}
				if _, err := x.Compute(req); err != nil {
					t.Fatal(err)
				}
				if n := len(x.plan.buckets); n < 2 {
					t.Fatalf("%d buckets, want several", n)
				}
				want := roundedReference(experts, req, x.Config().SmallRows)
				if e := relErr(req.Out, want); !(e <= 1e-5) {
					t.Fatalf("relative error %.3g against the rounded reference, want <= 1e-5", e)
				}
			})
		}
	}
}
