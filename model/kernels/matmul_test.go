package kernels

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

var allDTypes = append([]tensor.DType{tensor.F32, tensor.BF16, tensor.F16}, tensor.QuantizedDTypes()...)

// f16Fields are the byte offsets of the f16 scale fields in a block of each
// quantized type (randMatrix gives them small positive values, the other bytes
// are random).
var f16Fields = map[tensor.DType][]int{
	tensor.Q8_0: {0}, tensor.Q4_K: {0, 2}, tensor.Q6_K: {208}, tensor.Q5_K: {0, 2},
	tensor.Q4_0: {0}, tensor.Q4_1: {0, 2}, tensor.Q5_0: {0}, tensor.Q5_1: {0, 2},
	tensor.Q2_K: {80, 82}, tensor.Q3_K: {108}, tensor.IQ4_NL: {0}, tensor.IQ4_XS: {0},
	tensor.IQ2_XXS: {0}, tensor.IQ2_XS: {0}, tensor.IQ2_S: {0}, tensor.IQ3_XXS: {0}, tensor.IQ3_S: {0},
	tensor.IQ1_S: {0},
}

// randMatrix returns a rows x cols matrix of dtype dt with values of order 1.
func randMatrix(rng *rand.Rand, dt tensor.DType, rows, cols int) tensor.Matrix {
	rb, err := dt.RowBytes(cols)
	if err != nil {
		panic(err)
	}
	data := make([]byte, rows*rb)
	switch dt {
	case tensor.F32:
		for i := 0; i < rows*cols; i++ {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(rng.NormFloat64())))
		}
	case tensor.BF16:
		for i := 0; i < rows*cols; i++ {
			binary.LittleEndian.PutUint16(data[2*i:], tensor.F32ToBF16(float32(rng.NormFloat64())))
		}
	case tensor.F16:
		for i := 0; i < rows*cols; i++ {
			binary.LittleEndian.PutUint16(data[2*i:], tensor.F32ToF16(float32(rng.NormFloat64())))
		}
	case tensor.MXFP4:
		// E8M0 scales of values of order 1 (2^-8..2^-2), and now and then
		// one of the smallest three (0 and 1 decode to subnormals).
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		for b := 0; b < len(data); b += dt.BlockBytes() {
			data[b] = byte(120 + rng.IntN(7))
			if rng.IntN(16) == 0 {
				data[b] = byte(rng.IntN(3))
			}
		}
	case tensor.IQ1_M:
		// Its f16 scale is the top nibbles of the four u16 at 48.
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		for b := 0; b < len(data); b += dt.BlockBytes() {
			h := tensor.F32ToF16(float32(0.001 + 0.01*rng.Float64()))
			for k := range 4 {
				data[b+49+2*k] = data[b+49+2*k]&0x0F | byte(h>>(4*k))<<4
			}
		}
	default:
		fields, ok := f16Fields[dt]
		if !ok {
			panic(fmt.Sprintf("randMatrix: no f16 fields for %v", dt))
		}
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		bb := dt.BlockBytes()
		for b := 0; b < len(data); b += bb {
			for _, f := range fields {
				binary.LittleEndian.PutUint16(data[b+f:], tensor.F32ToF16(float32(0.001+0.01*rng.Float64())))
			}
		}
	}
	m, err := tensor.NewMatrix(dt, rows, cols, data)
	if err != nil {
		panic(err)
	}
	return m
}

func randVec(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// absRef returns Σ_c |W[r,c]·x[i,c]| for every output, the scale of the
// tolerance.
func absRef(w tensor.Matrix, x []float32, n int) []float32 {
	out := make([]float32, n*w.Rows)
	row := make([]float32, w.Cols)
	for r := 0; r < w.Rows; r++ {
		tensor.DequantizeRow(w.DType, w.Row(r), row)
		for i := 0; i < n; i++ {
			var s float64
			for c, v := range row {
				s += math.Abs(float64(v) * float64(x[i*w.Cols+c]))
			}
			out[i*w.Rows+r] = float32(s)
		}
	}
	return out
}

// tolerance relative to Σ|w·x|: float32 rounding of two different summation
// orders of cols terms. A single dropped or doubled term (about 1/cols of
// Σ|w·x|) is well above it for the sizes tested.
func tolerance(cols int) float64 { return 1e-6 + 2e-6*math.Sqrt(float64(cols)) }

// checkMatMul runs MatMul at the current level and compares with MatMulRef.
func checkAgainstRef(t testing.TB, w tensor.Matrix, x []float32, n int, abs []float32) {
	t.Helper()
	want := make([]float32, n*w.Rows)
	MatMulRef(want, w, x, n)
	if usesQ8(w) {
		// 8-bit activations: compare with the integer kernels' twin.
		matMulQ8Ref(want, w, x, n)
	}
	if usesQ80(w, n) {
		// Q8_0 with 8-bit activations: compare with that path's twin.
		matMulQ80Ref(want, w, x, n)
	}
	if usesBF16(w) {
		// bf16 activations: compare with the bf16 kernels' twin.
		matMulBF16Ref(want, w, x, n)
	}
	const guard = 5
	got := make([]float32, n*w.Rows+guard)
	for i := range got {
		got[i] = float32(math.NaN())
	}
	xc := append([]float32(nil), x...)
	MatMul(got, w, x, n)
	for i := n * w.Rows; i < len(got); i++ {
		if !math.IsNaN(float64(got[i])) {
			t.Fatalf("%v [%d,%d] n=%d level %v: wrote past out[%d]", w.DType, w.Rows, w.Cols, n, KernelLevel(), n*w.Rows)
		}
	}
	for i := range x {
		if math.Float32bits(x[i]) != math.Float32bits(xc[i]) {
			t.Fatalf("MatMul modified x[%d]", i)
		}
	}
	tol := tolerance(w.Cols)
	for i := 0; i < n*w.Rows; i++ {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if d > tol*float64(abs[i])+1e-30 || math.IsNaN(float64(got[i])) {
			t.Fatalf("%v [%d,%d] n=%d level %v threads %d: out[%d] (input %d, row %d) = %g, ref %g, |diff| %.3g > %.3g·%g",
				w.DType, w.Rows, w.Cols, n, KernelLevel(), Threads(), i, i/w.Rows, i%w.Rows, got[i], want[i], d, tol, abs[i])
		}
	}
}

// forEachLevel runs f at every level the CPU supports (LevelRef excluded).
func forEachLevel(t *testing.T, f func(t *testing.T)) {
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	for _, l := range SupportedLevels() {
		if l == LevelRef {
			continue
		}
		if _, err := SetKernelLevel(l); err != nil {
			t.Fatal(err)
		}
		t.Run(l.String(), f)
	}
}

// withThreads runs f with n threads; with n > 1 even small products are split.
func withThreads(n int, f func()) {
	prev := Threads()
	SetThreads(n)
	forceParallel = n > 1
	defer func() {
		SetThreads(prev)
		forceParallel = false
	}()
	f()
}

func colsFor(dt tensor.DType) []int {
	switch dt.BlockValues() {
	case 32:
		return []int{32, 64, 96, 160, 320, 1536}
	case 256:
		return []int{256, 512, 768, 1536}
	}
	return []int{1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 257, 1536}
}

func TestMatMulShapes(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, dt := range allDTypes {
			for _, cols := range colsFor(dt) {
				for _, rows := range []int{1, 3, 4, 5, 7, 8, 13, 64, 67} {
					w := randMatrix(rng, dt, rows, cols)
					for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 17, 32, 33, 70} {
						if rows*cols*n > 1<<20 {
							continue
						}
						x := randVec(rng, n*cols)
						abs := absRef(w, x, n)
						withThreads(1, func() { checkAgainstRef(t, w, x, n, abs) })
						withThreads(2, func() { checkAgainstRef(t, w, x, n, abs) })
					}
				}
			}
		}
	})
}

// TestMatMulLarge covers shapes big enough to be split across threads and
// blocks, and the panel path.
func TestMatMulLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		for _, dt := range allDTypes {
			for _, sh := range [][3]int{{1029, 512, 1}, {517, 768, 3}, {333, 1536, 8}, {261, 512, 40}, {130, 256, 70}} {
				rows, cols, n := sh[0], sh[1], sh[2]
				if !dt.Quantized() {
					cols += 5 // an odd tail
				}
				w := randMatrix(rng, dt, rows, cols)
				x := randVec(rng, n*cols)
				abs := absRef(w, x, n)
				for _, th := range []int{1, 2, 3} {
					withThreads(th, func() { checkAgainstRef(t, w, x, n, abs) })
				}
			}
		}
	})
}

// TestMatMulSpecialValues checks zero, negative-zero, subnormal and large
// weights (no NaN/Inf: those propagate identically but compare unequal).
func TestMatMulSpecialValues(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		for _, dt := range []tensor.DType{tensor.BF16, tensor.F16} {
			cols, rows := 40, 9
			rb, _ := dt.RowBytes(cols)
			data := make([]byte, rows*rb)
			specials := []uint16{0, 0x8000, 0x0001, 0x8001, 0x03ff, 0x7bff, 0xfbff, 0x3c00, 0x0400}
			if dt == tensor.BF16 {
				specials = []uint16{0, 0x8000, 0x0001, 0x8001, 0x007f, 0x6000, 0xe000, 0x3f80, 0x0080}
			}
			for i := 0; i < rows*cols; i++ {
				binary.LittleEndian.PutUint16(data[2*i:], specials[i%len(specials)])
			}
			w, _ := tensor.NewMatrix(dt, rows, cols, data)
			x := make([]float32, 2*cols)
			for i := range x {
				x[i] = float32(i%5) - 2
			}
			checkAgainstRef(t, w, x, 2, absRef(w, x, 2))
		}
	})
}

func TestMatMulNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, dt := range allDTypes {
		w := randMatrix(rng, dt, 512, 1024)
		for _, n := range []int{1, 8, 64} {
			x := randVec(rng, n*w.Cols)
			out := make([]float32, n*w.Rows)
			for _, th := range []int{1, 2} {
				withThreads(th, func() {
					MatMul(out, w, x, n) // warm the scratch
					if a := testing.AllocsPerRun(20, func() { MatMul(out, w, x, n) }); a != 0 {
						t.Errorf("%v n=%d threads=%d: %.1f allocations per call", dt, n, th, a)
					}
				})
			}
		}
	}
}

func TestLevels(t *testing.T) {
	if KernelLevel() > MaxLevel() {
		t.Fatalf("level %v above max %v", KernelLevel(), MaxLevel())
	}
	if _, err := SetKernelLevel(MaxLevel() + 1); err == nil {
		t.Fatal("SetKernelLevel accepted an unsupported level")
	}
	for _, l := range SupportedLevels() {
		p, err := ParseLevel(l.String())
		if err != nil || p != l {
			t.Fatalf("ParseLevel(%q) = %v, %v", l.String(), p, err)
		}
	}
	t.Logf("max level %v, current %v, threads %d", MaxLevel(), KernelLevel(), Threads())
}

func TestMatMulPanics(t *testing.T) {
	w := randMatrix(rand.New(rand.NewPCG(7, 8)), tensor.BF16, 4, 32)
	for name, f := range map[string]func(){
		"short x":   func() { MatMul(make([]float32, 8), w, make([]float32, 63), 2) },
		"short out": func() { MatMul(make([]float32, 7), w, make([]float32, 64), 2) },
		"short w": func() {
			MatMul(make([]float32, 8), tensor.Matrix{DType: tensor.BF16, Rows: 4, Cols: 32, Data: w.Data[:100]}, make([]float32, 64), 2)
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestVectorOps(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(9, 10))
		for _, n := range []int{0, 1, 5, 15, 16, 17, 31, 33, 63, 64, 65, 100, 129, 1000, 4099} {
			a, b := randVec(rng, n), randVec(rng, n)
			var abs float64
			for i := range a {
				abs += math.Abs(float64(a[i] * b[i]))
			}
			if got, want := Dot(a, b), DotRef(a, b); math.Abs(float64(got-want)) > tolerance(n)*abs+1e-30 {
				t.Fatalf("Dot n=%d: %g, ref %g", n, got, want)
			}
			y1, y2 := randVec(rng, n), make([]float32, n)
			copy(y2, y1)
			Axpy(0.75, a, y1)
			AxpyRef(0.75, a, y2)
			compareVec(t, fmt.Sprintf("Axpy n=%d", n), y1, y2)
			s1, s2 := append([]float32(nil), a...), append([]float32(nil), a...)
			Scale(-1.5, s1)
			ScaleRef(-1.5, s2)
			compareVec(t, fmt.Sprintf("Scale n=%d", n), s1, s2)
			d1, d2 := make([]float32, n), make([]float32, n)
			Add(d1, a, b)
			AddRef(d2, a, b)
			compareVec(t, fmt.Sprintf("Add n=%d", n), d1, d2)
			// Aliased Add.
			Add(s1, s1, b)
			AddRef(s2, s2, b)
			compareVec(t, fmt.Sprintf("Add aliased n=%d", n), s1, s2)
			Mul(d1, a, b)
			MulRef(d2, a, b)
			compareVec(t, fmt.Sprintf("Mul n=%d", n), d1, d2)
			Mul(s1, s1, b)
			MulRef(s2, s2, b)
			compareVec(t, fmt.Sprintf("Mul aliased n=%d", n), s1, s2)
		}
	})
}

// TestSSMRows: the fused state update gives the bits of Scale, Axpy and
// Dot per row at every level, for widths with and without the fused path.
func TestSSMRows(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(13, 14))
		for _, n := range []int{16, 32, 64, 100, 128, 256} {
			for _, rows := range []int{1, 3, 64} {
				st := randVec(rng, rows*n)
				st2 := append([]float32(nil), st...)
				b, c, dtx := randVec(rng, n), randVec(rng, n), randVec(rng, rows)
				y, y2 := make([]float32, rows), make([]float32, rows)
				SSMRows(st, n, 0.875, dtx, b, c, y)
				SSMRowsRef(st2, n, 0.875, dtx, b, c, y2)
				for i := range st {
					if math.Float32bits(st[i]) != math.Float32bits(st2[i]) {
						t.Fatalf("n=%d rows=%d: state[%d] = %g, twin %g", n, rows, i, st[i], st2[i])
					}
				}
				for i := range y {
					if math.Float32bits(y[i]) != math.Float32bits(y2[i]) {
						t.Fatalf("n=%d rows=%d: y[%d] = %g, twin %g", n, rows, i, y[i], y2[i])
					}
				}
			}
		}
	})
}

func compareVec(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); d > 1e-6*math.Abs(float64(want[i]))+1e-6 {
			t.Fatalf("%s: [%d] = %g, ref %g", what, i, got[i], want[i])
		}
	}
}

// TestMatMulPanelModes forces the panel path on and off, so that both are
// tested for every dtype whatever the automatic thresholds are.
func TestMatMulPanelModes(t *testing.T) {
	defer func() { panelMode = 0 }()
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(11, 12))
		for _, dt := range allDTypes {
			for _, sh := range [][3]int{{9, 256, 1}, {13, 512, 7}, {70, 768, 20}} {
				cols := sh[1]
				if !dt.Quantized() {
					cols += 9
				}
				w := randMatrix(rng, dt, sh[0], cols)
				x := randVec(rng, sh[2]*cols)
				abs := absRef(w, x, sh[2])
				for _, pm := range []int{-1, 1} {
					panelMode = pm
					withThreads(2, func() { checkAgainstRef(t, w, x, sh[2], abs) })
				}
				panelMode = 0
			}
		}
	})
}

// TestMatMulConcurrent calls MatMul from several goroutines at once: one gets
// the worker pool, the others wait for it (the pool's threads fill every P)
// or run on their own goroutine (after busyWait, or with spare Ps).
func TestMatMulConcurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	w := randMatrix(rng, tensor.BF16, 300, 640)
	n := 3
	x := randVec(rng, n*w.Cols)
	want := make([]float32, n*w.Rows)
	MatMul(want, w, x, n)
	runCallers(t, 8, 50, func(g, it int) string {
		out := make([]float32, n*w.Rows)
		MatMul(out, w, x, n)
		for i := range out {
			if out[i] != want[i] {
				return fmt.Sprintf("goroutine %d iteration %d: out[%d] = %g, want %g", g, it, i, out[i], want[i])
			}
		}
		return ""
	})
}

// runCallers calls call(g, it) on callers goroutines, iters times each, and
// fails the test with the first message a call returns ("": fine).
func runCallers(t *testing.T, callers, iters int, call func(g, it int) string) {
	t.Helper()
	var wg sync.WaitGroup
	fail := make(chan string, callers)
	for g := range callers {
		wg.Go(func() {
			for it := range iters {
				if msg := call(g, it); msg != "" {
					fail <- msg
					return
				}
			}
		})
	}
	wg.Wait()
	close(fail)
	for f := range fail {
		t.Fatal(f)
	}
}

// TestMatMulBackToBackWaitsForWorkers runs many small parallel products back
// to back with more threads than cores, so that callers often block waiting
// for a worker that has not started. A completion token left over from the
// previous call must not let a caller return (and recycle its job) while a
// worker still computes into it.
func TestMatMulBackToBackWaitsForWorkers(t *testing.T) {
	prev := runtime.GOMAXPROCS(8)
	defer runtime.GOMAXPROCS(prev)
	rng := rand.New(rand.NewPCG(21, 22))
	w := randMatrix(rng, tensor.BF16, 1024, 256)
	var iters int
	x := randVec(rng, 5*w.Cols)
	want := make([]float32, 5*w.Rows)
	MatMulRef(want, w, x, 5)
	if usesBF16(w) {
		matMulBF16Ref(want, w, x, 5)
	}
	// Delay every completion token, so that one arrives after its caller has
	// already seen pending reach 0 and the next call has started.
	// (An atomic: a worker may still be past its last token when the test
	// returns and takes the hook away.)
	delay := func() { time.Sleep(200 * time.Microsecond) }
	testHookBeforeDone.Store(&delay)
	defer testHookBeforeDone.Store(nil)
	if !testing.Short() {
		iters = 12000
	} else {
		iters = 500
	}
	// With 4 threads on 8 Ps the callers that find the pool busy run alone,
	// beside it; with 8 they wait for it in turn (fewer iterations: each
	// pays the delayed token, in turn).
	for _, tc := range []struct{ threads, iters int }{{4, iters}, {8, iters / 40}} {
		withThreads(tc.threads, func() {
			// Several callers: whichever holds the pool hands out work, and a caller
			// that returned early would leave a worker writing into a recycled job.
			runCallers(t, 4, tc.iters, func(g, it int) string {
				n := 1 + (it+g)%5
				out := make([]float32, n*w.Rows)
				MatMul(out, w, x, n)
				for i := range out {
					if d := out[i] - want[i]; d > 1e-3 || d < -1e-3 {
						return fmt.Sprintf("caller %d n=%d iteration %d: out[%d] = %g, want %g", g, n, it, i, out[i], want[i])
					}
				}
				return ""
			})
		})
	}
}

// TestPoolAcquireWaits checks the pool's token: a free pool is taken at once;
// a busy one is refused without wait, handed to a waiting call when
// released, and refused after busyWait when it is not (a call nested in a
// pool task must not wait for itself).
func TestPoolAcquireWaits(t *testing.T) {
	p := workerPool{tok: make(chan struct{}, 1)}
	p.release()
	if !p.acquire(false) {
		t.Fatal("a free pool was refused")
	}
	if p.acquire(false) {
		t.Fatal("a busy pool was taken without waiting")
	}
	start := time.Now()
	if p.acquire(true) {
		t.Fatal("a pool that is never released was taken")
	}
	if d := time.Since(start); d < busyWait {
		t.Fatalf("gave up after %v, want at least busyWait (%v)", d, busyWait)
	}
	got := make(chan bool)
	go func() { got <- p.acquire(true) }()
	p.release()
	if !<-got {
		t.Fatal("a waiting call did not get the released pool")
	}
	if p.acquire(false) {
		t.Fatal("the pool was taken twice")
	}
}

// TestSetSpinWait: 0 restores the default; the previous setting comes back.
func TestSetSpinWait(t *testing.T) {
	prev := SetSpinWait(5 * time.Millisecond)
	defer SetSpinWait(prev)
	if got := SetSpinWait(0); got != 5*time.Millisecond {
		t.Fatalf("previous setting %v, want 5ms", got)
	}
	if got := SetSpinWait(prev); got != DefaultSpinWait {
		t.Fatalf("0 set %v, want the default %v", got, DefaultSpinWait)
	}
}

// TestParallelForNestedMatMulDoesNotWait: a MatMul inside a ParallelFor
// task finds the pool held by its own ParallelFor; it must run alone at
// once, not wait busyWait for a pool that is not released before it
// returns.
func TestParallelForNestedMatMulDoesNotWait(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	w := randMatrix(rng, tensor.BF16, 256, 512)
	x := randVec(rng, w.Cols)
	want := make([]float32, w.Rows)
	MatMul(want, w, x, 1)
	var waits atomic.Int32
	testHookPoolWait = func() { waits.Add(1) }
	defer func() { testHookPoolWait = nil }()
	withThreads(runtime.GOMAXPROCS(0), func() { // the pool's threads fill every P: calls wait for it
		outs := make([][]float32, 8)
		ParallelFor(len(outs), wakeWorthNs, func(i int) {
			outs[i] = make([]float32, w.Rows)
			MatMul(outs[i], w, x, 1)
		})
		for i, out := range outs {
			for r := range out {
				if out[r] != want[r] {
					t.Fatalf("task %d: out[%d] = %g, want %g", i, r, out[r], want[r])
				}
			}
		}
	})
	if n := waits.Load(); n != 0 {
		t.Fatalf("%d nested MatMul calls waited for the pool their ParallelFor holds", n)
	}
}

// TestParallelForHelping: the participants of a ParallelFor that run out
// of indices compute blocks of the products the others still run
// (MatMulSerial), and every product gives the bits it gives alone, for
// each type, at every level; with SetProductHelping(false) nobody helps.
func TestParallelForHelping(t *testing.T) {
	var helped atomic.Int64
	testHookHelped = func(b int) { helped.Add(int64(b)) }
	defer func() { testHookHelped = nil }()
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(51, 52))
		for _, on := range []bool{true, false} {
			prev := SetProductHelping(on)
			helped.Store(0)
			for _, dt := range []tensor.DType{tensor.BF16, tensor.Q8_0, tensor.Q4_K, tensor.Q6_K, tensor.F32} {
				// One large product among small ones: the others finish first.
				ws := []tensor.Matrix{randMatrix(rng, dt, 8192, 512)}
				for range 5 {
					ws = append(ws, randMatrix(rng, dt, 64, 512))
				}
				for i, w := range ws {
					if CanPack(w) {
						ws[i] = Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
					}
				}
				for _, n := range []int{1, 3, 16} { // 16: above helpMaxRows, no offer
					x := randVec(rng, n*512)
					want := make([][]float32, len(ws))
					for i, w := range ws {
						want[i] = make([]float32, n*w.Rows)
						withThreads(1, func() { MatMul(want[i], w, x, n) })
					}
					for range 5 {
						got := make([][]float32, len(ws))
						withThreads(2, func() {
							ParallelFor(2, wakeWorthNs, func(int) {}) // the worker spins: it starts at once
							ParallelFor(len(ws), wakeWorthNs, func(i int) {
								got[i] = make([]float32, n*ws[i].Rows)
								MatMulSerial(got[i], ws[i], x, n)
							})
						})
						for i := range ws {
							for r := range want[i] {
								if math.Float32bits(got[i][r]) != math.Float32bits(want[i][r]) {
									t.Fatalf("%v n=%d helping=%v product %d out[%d]: %g, alone %g", dt, n, on, i, r, got[i][r], want[i][r])
								}
							}
						}
					}
				}
			}
			SetProductHelping(prev)
			if on && helped.Load() == 0 && runtime.GOMAXPROCS(0) > 1 {
				t.Error("no participant helped with any product")
			}
			if !on && helped.Load() != 0 {
				t.Errorf("%d blocks helped with helping off", helped.Load())
			}
		}
	})
}

// Products of fewer than helpMinBytes of weights (an attention page's keys
// or values) do not offer their blocks: with helping on and a participant
// idle, none is helped, and the results are the bits of each alone.
func TestSmallProductsNotOffered(t *testing.T) {
	var helped atomic.Int64
	testHookHelped = func(b int) { helped.Add(int64(b)) }
	defer func() { testHookHelped = nil }()
	rng := rand.New(rand.NewPCG(53, 54))
	ws := []tensor.Matrix{randMatrix(rng, tensor.BF16, 256, 128), randMatrix(rng, tensor.BF16, 128, 256)} // 64 KiB each
	if ws[0].Bytes() >= helpMinBytes {
		t.Fatalf("a %d-byte product is not small", ws[0].Bytes())
	}
	x := randVec(rng, 3*256)
	for range 20 {
		got := make([][]float32, len(ws))
		withThreads(2, func() {
			ParallelFor(2, wakeWorthNs, func(int) {}) // the worker spins: it starts at once
			ParallelFor(len(ws), wakeWorthNs, func(i int) {
				got[i] = make([]float32, 3*ws[i].Rows)
				MatMulSerial(got[i], ws[i], x[:3*ws[i].Cols], 3)
			})
		})
		for i, w := range ws {
			want := make([]float32, 3*w.Rows)
			withThreads(1, func() { MatMul(want, w, x[:3*w.Cols], 3) })
			for r := range want {
				if math.Float32bits(got[i][r]) != math.Float32bits(want[r]) {
					t.Fatalf("product %d out[%d]: %g, alone %g", i, r, got[i][r], want[r])
				}
			}
		}
	}
	if helped.Load() != 0 {
		t.Fatalf("%d blocks of small products helped", helped.Load())
	}
}

// TestAddScaledSameBits: AddScaled gives, at every level, the bits of
// Scale then Add (what it replaces in the expert sums) and of its twin, and
// ScaleTo the bits of Scale,
// special values included (NaNs in both operands, infinities, subnormals,
// signed zeros; a NaN may carry either operand's payload), for lengths
// around the kernels' 4-vector steps.
func TestAddScaledSameBits(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(41, 42))
		special := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 1e-40, -1e-40, float32(math.Copysign(0, -1)), 0, math.MaxFloat32}
		for _, n := range []int{0, 1, 31, 32, 63, 64, 65, 127, 128, 1536, 1537} {
			for _, alpha := range []float32{0.3125, -1.75e-3, 0, float32(math.NaN())} {
				x, dst := randVec(rng, n), randVec(rng, n)
				for i := 0; i < n; i += 7 {
					x[i] = special[rng.IntN(len(special))]
					dst[(i*3)%n] = special[rng.IntN(len(special))]
				}
				if n > 5 {
					x[5] = math.Float32frombits(0x7fc00001) // NaNs in both, different payloads
					dst[5] = math.Float32frombits(0x7fc00002)
				}
				want := append([]float32(nil), dst...)
				xs := append([]float32(nil), x...)
				Scale(alpha, xs)
				Add(want, want, xs)
				twin := append([]float32(nil), dst...)
				AddScaledRef(twin, x, alpha)
				// ScaleTo: Scale's bits (xs) into another slice, x unchanged.
				st, sr := make([]float32, n), make([]float32, n)
				ScaleTo(st, x, alpha)
				ScaleToRef(sr, x, alpha)
				eq := func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b) }
				for i := range st {
					if !eq(st[i], xs[i]) || !eq(sr[i], xs[i]) {
						t.Fatalf("ScaleTo n=%d alpha=%g [%d]: %#x, twin %#x, Scale %#x", n, alpha, i, math.Float32bits(st[i]), math.Float32bits(sr[i]), math.Float32bits(xs[i]))
					}
				}
				got := append([]float32(nil), dst...)
				xc := append([]float32(nil), x...)
				AddScaled(got, x, alpha)
				same := func(a, b float32) bool { // NaN payloads are not kept apart (Go's adds choose either)
					return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b)
				}
				for i := range want {
					if !same(got[i], want[i]) || !same(twin[i], want[i]) {
						t.Fatalf("n=%d alpha=%g [%d]: AddScaled %#x, twin %#x, Scale+Add %#x", n, alpha, i, math.Float32bits(got[i]), math.Float32bits(twin[i]), math.Float32bits(want[i]))
					}
					if math.Float32bits(x[i]) != math.Float32bits(xc[i]) {
						t.Fatalf("n=%d: AddScaled wrote x[%d]", n, i)
					}
				}
			}
		}
	})
}

// TestRoundBF16SameBits: RoundBF16 and AddScaledBF16 give, at every
// level, the bits of tensor.F32ToBF16 then BF16ToF32 (after Scale, before
// Add for AddScaledBF16) and of their twins: ties to even, values that
// round up to infinity, NaNs (quiet, their top bits kept), subnormals,
// signed zeros.
func TestRoundBF16SameBits(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(43, 44))
		special := []float32{float32(math.NaN()), math.Float32frombits(0x7f800001), math.Float32frombits(0xffc12345), float32(math.Inf(1)), float32(math.Inf(-1)),
			1e-40, -1e-40, float32(math.Copysign(0, -1)), 0, math.MaxFloat32, math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x3f808001)}
		for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 31, 33, 1536, 1539} {
			for _, alpha := range []float32{0.3125, -1.75e-3, 1} {
				x, dst := randVec(rng, n), randVec(rng, n)
				for i := 0; i < n; i += 3 {
					x[i] = special[rng.IntN(len(special))]
				}
				wantR := make([]float32, n)
				for i, v := range x {
					wantR[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
				}
				gotR, twinR := make([]float32, n), make([]float32, n)
				RoundBF16(gotR, x)
				RoundBF16Ref(twinR, x)
				want := append([]float32(nil), dst...)
				xs := append([]float32(nil), x...)
				Scale(alpha, xs)
				for i, v := range xs {
					want[i] += tensor.BF16ToF32(tensor.F32ToBF16(v))
				}
				got, twin := append([]float32(nil), dst...), append([]float32(nil), dst...)
				AddScaledBF16(got, x, alpha)
				AddScaledBF16Ref(twin, x, alpha)
				for i := range want {
					if math.Float32bits(gotR[i]) != math.Float32bits(wantR[i]) || math.Float32bits(twinR[i]) != math.Float32bits(wantR[i]) {
						t.Fatalf("RoundBF16 n=%d [%d] of %#x: %#x, twin %#x, want %#x", n, i, math.Float32bits(x[i]), math.Float32bits(gotR[i]), math.Float32bits(twinR[i]), math.Float32bits(wantR[i]))
					}
					same := func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b) }
					if !same(got[i], want[i]) || !same(twin[i], want[i]) {
						t.Fatalf("AddScaledBF16 n=%d alpha=%g [%d]: %#x, twin %#x, want %#x", n, alpha, i, math.Float32bits(got[i]), math.Float32bits(twin[i]), math.Float32bits(want[i]))
					}
				}
				in := append([]float32(nil), x...) // in place
				RoundBF16(in, in)
				for i := range in {
					if math.Float32bits(in[i]) != math.Float32bits(wantR[i]) {
						t.Fatalf("RoundBF16 in place n=%d [%d]: %#x, want %#x", n, i, math.Float32bits(in[i]), math.Float32bits(wantR[i]))
					}
				}
			}
		}
	})
}

// TestBF16WireSameBits: EncodeBF16, DecodeBF16 and AddBF16 give, at every
// level, the bytes and bits of tensor.F32ToBF16 / BF16ToF32 per value
// (and of their twins), on byte slices at odd addresses too.
func TestBF16WireSameBits(t *testing.T) {
	forEachLevel(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(45, 46))
		special := []float32{float32(math.NaN()), math.Float32frombits(0x7f800001), math.Float32frombits(0xffc12345), float32(math.Inf(1)),
			float32(math.Inf(-1)), 1e-40, float32(math.Copysign(0, -1)), math.MaxFloat32, math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000)}
		for _, n := range []int{0, 1, 15, 16, 17, 32, 47, 1536, 1543} {
			for _, off := range []int{0, 1} {
				x := randVec(rng, n)
				for i := 0; i < n; i += 3 {
					x[i] = special[rng.IntN(len(special))]
				}
				want := make([]byte, 2*n)
				for i, v := range x {
					binary.LittleEndian.PutUint16(want[2*i:], tensor.F32ToBF16(v))
				}
				buf := make([]byte, 2*n+off)
				got := buf[off:]
				EncodeBF16(got, x)
				twin := make([]byte, 2*n)
				EncodeBF16Ref(twin, x)
				if !bytes.Equal(got, want) || !bytes.Equal(twin, want) {
					t.Fatalf("EncodeBF16 n=%d off=%d: bytes differ from F32ToBF16's", n, off)
				}
				dec, dtwin := make([]float32, n), make([]float32, n)
				DecodeBF16(dec, got)
				DecodeBF16Ref(dtwin, got)
				base := randVec(rng, n)
				sum, stwin := append([]float32(nil), base...), append([]float32(nil), base...)
				AddBF16(sum, got)
				AddBF16Ref(stwin, got)
				for i := range dec {
					w := tensor.BF16ToF32(binary.LittleEndian.Uint16(want[2*i:]))
					if math.Float32bits(dec[i]) != math.Float32bits(w) || math.Float32bits(dtwin[i]) != math.Float32bits(w) {
						t.Fatalf("DecodeBF16 n=%d off=%d [%d]: %#x, twin %#x, want %#x", n, off, i, math.Float32bits(dec[i]), math.Float32bits(dtwin[i]), math.Float32bits(w))
					}
					ws := base[i] + w
					if (math.Float32bits(sum[i]) != math.Float32bits(ws) || math.Float32bits(stwin[i]) != math.Float32bits(ws)) && !(ws != ws && sum[i] != sum[i] && stwin[i] != stwin[i]) {
						t.Fatalf("AddBF16 n=%d off=%d [%d]: %#x, twin %#x, want %#x", n, off, i, math.Float32bits(sum[i]), math.Float32bits(stwin[i]), math.Float32bits(ws))
					}
				}
			}
		}
	})
}
