package kernels

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// TestPackedMatchesRowMajor: a packed matrix (packedDTypes) gives the bits
// the row-major one gives, at every kernel level and thread count, for any
// number of input rows (the packed kernels on AVX-512 VNNI: the twin's
// bits), with a partial last group, and with an input row holding a NaN or
// an infinity; its rows dequantize as the row-major rows do.
func TestPackedMatchesRowMajor(t *testing.T) {
	for _, dt := range packedDTypes {
		t.Run(dt.String(), func(t *testing.T) { testPackedMatchesRowMajor(t, dt) })
	}
}

func testPackedMatchesRowMajor(t *testing.T, dt tensor.DType) {
	if !hasPackedKernels(dt) {
		t.Skipf("no packed %v kernels on this CPU or build", dt)
	}
	if packOff[dt] {
		t.Skipf("%s leaves %v row-major", EnvPack, dt)
	}
	if packOnlyAsked[dt] && !packAsked[dt] {
		// Packed at the AVX2 level only when asked: ask, so that those
		// kernels are checked too.
		packAsked[dt] = true
		defer func() { packAsked[dt] = false }()
	}
	defer SetQ8Activations(SetQ8Activations(true))
	rng := rand.New(rand.NewPCG(31, 31))
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	bv := dt.BlockValues()
	twinOf := matMulQ8Ref
	if asQ80(dt) {
		twinOf = matMulQ80Ref
	}
	for _, rows := range []int{1, 16, 37, 100} {
		for _, blocks := range []int{1, 3, 17, 48} {
			cols := blocks * bv
			if bv > 32 && blocks > 6 {
				cols = 6 * bv
			}
			w := randMatrix(rng, dt, rows, cols)
			if !CanPack(w) {
				if KernelLevel() < LevelAVX512 {
					t.Skipf("%v is not packed at the %v level", dt, KernelLevel())
				}
				t.Fatalf("[%d,%d]: not packable", rows, cols)
			}
			p := Pack(make([]byte, PackedBytes(dt, rows, cols)), w)
			want, got := make([]float32, cols), make([]float32, cols)
			for _, r := range []int{0, rows / 2, rows - 1} {
				tensor.DequantizeRow(w.DType, w.Row(r), want)
				DequantizeMatrixRow(p, r, got)
				for c := range want {
					if math.Float32bits(got[c]) != math.Float32bits(want[c]) {
						t.Fatalf("[%d,%d] row %d col %d: %g packed, %g row-major", rows, cols, r, c, got[c], want[c])
					}
				}
			}
			for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 9, 17} {
				x := randVec(rng, n*cols)
				if n == 5 {
					x[3*cols+1] = float32(math.NaN())
				}
				if n == 9 {
					x[cols] = float32(math.Inf(1))
				}
				twin := make([]float32, n*rows)
				if n < 5 {
					twinOf(twin, w, x, n)
				}
				for _, l := range SupportedLevels() {
					SetKernelLevel(l)
					for _, th := range []int{1, 2} {
						what := fmt.Sprintf("%v [%d,%d] n=%d level=%v threads=%d", dt, rows, cols, n, l, th)
						ref := make([]float32, n*rows)
						withThreads(th, func() { MatMul(ref, w, x, n) })
						out := make([]float32, n*rows+1)
						out[n*rows] = 42
						withThreads(th, func() { MatMul(out, p, x, n) })
						if out[n*rows] != 42 {
							t.Fatalf("%s: wrote past out", what)
						}
						for i := range ref {
							if math.Float32bits(out[i]) != math.Float32bits(ref[i]) {
								t.Fatalf("%s: out[%d] = %g packed, %g row-major", what, i, out[i], ref[i])
							}
							if n < 5 && integerAt(dt, l) && math.Float32bits(out[i]) != math.Float32bits(twin[i]) {
								t.Fatalf("%s: out[%d] = %g packed, %g twin", what, i, out[i], twin[i])
							}
						}
					}
				}
				SetKernelLevel(prev)
			}
		}
	}
}

// integerAt reports whether products with dt weights run the integer
// kernels (whose twin TestPackedMatchesRowMajor compares with) at level l.
func integerAt(dt tensor.DType, l Level) bool {
	if asQ80(dt) {
		return hasQ80KernelsAt(l)
	}
	return hasQ8KernelsAt(dt, l)
}

// packedDTypes are the types with packed layouts.
var packedDTypes = []tensor.DType{tensor.Q8_0, tensor.Q4_K, tensor.Q5_K, tensor.Q6_K, tensor.Q4_0, tensor.IQ4_NL, tensor.Q3_K, tensor.Q2_K, tensor.IQ4_XS, tensor.Q5_0, tensor.Q4_1, tensor.Q5_1, tensor.MXFP4}

// TestPackParallel: a matrix large enough to be packed on several
// goroutines gives the bytes of a packing on one, and unpacks to its rows.
func TestPackParallel(t *testing.T) {
	rng := rand.New(rand.NewPCG(32, 32))
	for _, dt := range packedDTypes {
		rows, cols := 64*16*4+5, 2*dt.BlockValues()
		w := randMatrix(rng, dt, rows, cols)
		n := PackedBytes(dt, rows, cols)
		if n != PackedBytes(dt, rows+11, cols) || n < len(w.Data) {
			t.Fatalf("%v: PackedBytes %d for %d bytes", dt, n, len(w.Data))
		}
		par, ser := make([]byte, n), make([]byte, n)
		p := Pack(par, w)
		s := specOf(dt, tensor.RowMajor)
		s.packGroups(ser, w, 0, (rows+15)/16)
		if string(par) != string(ser) {
			t.Fatalf("%v: parallel packing differs from serial packing", dt)
		}
		if p.Layout == tensor.RowMajor || specOf(dt, p.Layout) != s {
			t.Fatalf("%v: packed layout %v", dt, p.Layout)
		}
		if string(RowMajorBytes(p, 0, rows*w.RowStride())) != string(w.Data) {
			t.Fatalf("%v: packed matrix does not unpack to its rows", dt)
		}
		if got := RowMajorBytes(p, 5*w.RowStride()+7, 3*w.RowStride()); string(got) != string(w.Data[5*w.RowStride()+7:8*w.RowStride()+7]) {
			t.Fatalf("%v: a packed matrix's bytes from the middle differ from its rows'", dt)
		}
	}
}

// TestCanPackAVX2: on the AVX2 level Q8_0, Q4_K, Q3_K, Q2_K, IQ4_XS, Q4_0,
// Q5_0, IQ4_NL and MXFP4 are packed, Q5_K and Q6_K only when SWITCHYARD_PACK names
// them (packOnlyAsked).
func TestCanPackAVX2(t *testing.T) {
	if !hasPackedKernels(tensor.Q4_K) || !hasQ80KernelsAt(LevelAVX2) {
		t.Skip("no packed kernels on this CPU or build")
	}
	if packOff != [tensor.NumDTypes]bool{} || packAsked != [tensor.NumDTypes]bool{} {
		t.Skipf("%s is set", EnvPack)
	}
	defer SetQ8Activations(SetQ8Activations(true))
	prev, _ := SetKernelLevel(LevelAVX2)
	defer SetKernelLevel(prev)
	rng := rand.New(rand.NewPCG(33, 33))
	want := map[tensor.DType]bool{tensor.Q8_0: true, tensor.Q4_K: true, tensor.Q5_K: false, tensor.Q6_K: false, tensor.Q4_0: true, tensor.IQ4_NL: true,
		tensor.Q3_K: true, tensor.Q2_K: true, tensor.IQ4_XS: true, tensor.Q5_0: true, tensor.MXFP4: true}
	for dt, ok := range want {
		if got := CanPack(randMatrix(rng, dt, 16, dt.BlockValues())); got != ok {
			t.Errorf("AVX2: CanPack(%v) = %v, want %v", dt, got, ok)
		}
	}
	for _, dt := range []tensor.DType{tensor.Q5_K, tensor.Q6_K} {
		packAsked[dt] = true
		if !CanPack(randMatrix(rng, dt, 16, 256)) {
			t.Errorf("AVX2: %v not packed when asked", dt)
		}
		packAsked[dt] = false
	}
}

// SetPackedRow builds, a row at a time and in any order, the matrix Pack
// makes of the whole, and PackedRow reads each row back as its row-major
// layout holds it, for every packed type.
func TestSetPackedRow(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 82))
	for _, sp := range packSpecs {
		const rows = 37
		cols := 256
		rb, err := sp.dt.RowBytes(cols)
		if err != nil {
			t.Fatal(err)
		}
		w := tensor.Matrix{DType: sp.dt, Rows: rows, Cols: cols, Data: make([]byte, rows*rb)}
		for i := range w.Data {
			w.Data[i] = byte(rng.IntN(256))
		}
		want := Pack(make([]byte, PackedBytes(sp.dt, rows, cols)), w)
		got := tensor.Matrix{DType: sp.dt, Rows: rows, Cols: cols, Data: make([]byte, len(want.Data)), Layout: want.Layout}
		// Padding rows are what Pack writes; the rows come in reverse order.
		copy(got.Data, want.Data)
		for r := range rows {
			blank := make([]byte, w.RowStride())
			SetPackedRow(got, r, blank) // overwrite with zeros first
		}
		for r := rows - 1; r >= 0; r-- {
			SetPackedRow(got, r, w.Row(r))
		}
		if !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("%v: rows set one at a time differ from Pack's", sp.dt)
		}
		row := make([]byte, w.RowStride())
		for r := range rows {
			PackedRow(row, got, r)
			if !bytes.Equal(row, w.Row(r)) {
				t.Fatalf("%v: PackedRow(%d) differs from the row-major row", sp.dt, r)
			}
		}
	}
}

// TestMXFP4EveryScale: the packed MXFP4 kernels decode every E8M0 scale
// byte as tensor.E8M0Half does (0 and 1 to float32 subnormals, 255 to
// 2^127), at every level with them: row r of a 256-row matrix has scale r
// and the value 1·scale at column j%32 (the rest 0), against an input row
// whose values are all 1, so that each result is d_w·d_x·127 and the twin's
// bits.
func TestMXFP4EveryScale(t *testing.T) {
	if !hasPackedKernels(tensor.MXFP4) {
		t.Skip("no packed MXFP4 kernels on this CPU or build")
	}
	defer SetQ8Activations(SetQ8Activations(true))
	const rows, cols = 256, 64
	rb := tensor.MXFP4.BlockBytes()
	data := make([]byte, rows*2*rb)
	for r := 0; r < rows; r++ {
		for b := 0; b < 2; b++ {
			blk := data[(2*r+b)*rb : (2*r+b+1)*rb]
			blk[0] = byte(r)
			if b == 0 {
				j := r % 32
				blk[1+j%16] = 1 << (4 * (j / 16)) // code 1: the value 1 (E2M1 0.5, doubled)
			}
		}
	}
	w, err := tensor.NewMatrix(tensor.MXFP4, rows, cols, data)
	if err != nil {
		t.Fatal(err)
	}
	x := make([]float32, cols)
	for i := range x {
		x[i] = 1
	}
	twin := make([]float32, rows)
	matMulQ80Ref(twin, w, x, 1)
	p := Pack(make([]byte, PackedBytes(tensor.MXFP4, rows, cols)), w)
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	checked := 0
	for _, l := range SupportedLevels() {
		if !integerAt(tensor.MXFP4, l) {
			continue
		}
		checked++
		SetKernelLevel(l)
		for _, m := range []tensor.Matrix{w, p} {
			got := make([]float32, rows)
			MatMul(got, m, x, 1)
			for r := range got {
				if math.Float32bits(got[r]) != math.Float32bits(twin[r]) {
					t.Fatalf("level %v %v: scale %d: %g, twin %g", l, m.Layout, r, got[r], twin[r])
				}
				// d_x = f16(1/127) and q_x = 127, so the result is
				// 2^(r-128)·127·f16(1/127), within the rounding of the steps.
				want := float64(tensor.E8M0Half(uint8(r))) * 127 * float64(tensor.F16ToF32(tensor.F32ToF16(1.0/127)))
				if d := math.Abs(float64(got[r]) - want); d > 1e-6*want {
					t.Fatalf("level %v %v: scale %d: %g, want %g", l, m.Layout, r, got[r], want)
				}
			}
		}
	}
	if checked == 0 {
		t.Skip("no level of this CPU runs MXFP4's integer kernels")
	}
}

// TestMatMulPairSerial: MatMulPairSerial gives the bits of two MatMulSerial
// calls for every packed type, one to three input rows (three: two calls),
// with the second matrix and output before or after the first in memory
// (negative offsets), each in its own allocation or both in one, alone and
// as tasks of a ParallelFor whose idle participant helps with its blocks;
// nothing is written past either output.
func TestMatMulPairSerial(t *testing.T) {
	defer SetQ8Activations(SetQ8Activations(true))
	rng := rand.New(rand.NewPCG(34, 34))
	paired := 0 // products that took the one-product path (planPair)
	for _, dt := range packedDTypes {
		if !hasPackedKernels(dt) || packOff[dt] || (packOnlyAsked[dt] && !packAsked[dt] && KernelLevel() < LevelAVX512) {
			continue
		}
		bv := dt.BlockValues()
		for _, rows := range []int{64, 160} {
			cols := 2 * bv
			if bv == 32 {
				cols = 7 * bv
			}
			wa, wb := randMatrix(rng, dt, rows, cols), randMatrix(rng, dt, rows, cols)
			if !CanPack(wa) {
				continue
			}
			size := PackedBytes(dt, rows, cols)
			one := make([]byte, 2*size)
			layouts := map[string][2]tensor.Matrix{
				"apart":      {Pack(make([]byte, size), wa), Pack(make([]byte, size), wb)},
				"b after a":  {Pack(one[:size], wa), Pack(one[size:], wb)},
				"b before a": {Pack(one[size:], wa), Pack(one[:size], wb)},
			}
			for name, ab := range layouts {
				for _, n := range []int{1, 2, 3} {
					x := randVec(rng, n*cols)
					// Where the layout has a two-stream kernel for n rows,
					// the pair must run as one product.
					planned := pairPlanned(ab[0], ab[1], x, n)
					if want := hasStreamKernel(ab[0].Layout, KernelLevel(), n) && ProductStreams() == 2; planned != want {
						t.Fatalf("%v %d rows %s n=%d: planPair %v, want %v", dt, rows, name, n, planned, want)
					}
					if planned {
						paired++
					}
					wantA, wantB := make([]float32, n*rows), make([]float32, n*rows)
					MatMulSerial(wantA, ab[0], x, n)
					MatMulSerial(wantB, ab[1], x, n)
					buf := make([]float32, 2*n*rows+2)
					for _, order := range []string{"outB after outA", "outB before outA"} {
						outA, outB := buf[:n*rows], buf[n*rows+1:2*n*rows+1]
						if order == "outB before outA" {
							outB, outA = buf[:n*rows], buf[n*rows+1:2*n*rows+1]
						}
						for _, helped := range []bool{false, true} {
							clear(buf)
							buf[n*rows], buf[2*n*rows+1] = 42, 42
							if helped {
								// Two tasks on two threads: the one with the
								// pair, and an empty one whose participant
								// then helps with the pair's blocks.
								withThreads(2, func() {
									ParallelFor(2, 1<<20, func(i int) {
										if i == 0 {
											MatMulPairSerial(outA, ab[0], outB, ab[1], x, n)
										}
									})
								})
							} else {
								MatMulPairSerial(outA, ab[0], outB, ab[1], x, n)
							}
							what := fmt.Sprintf("%v %d rows %s n=%d %s helped=%v", dt, rows, name, n, order, helped)
							if buf[n*rows] != 42 || buf[2*n*rows+1] != 42 {
								t.Fatalf("%s: wrote past an output", what)
							}
							for i := range wantA {
								if math.Float32bits(outA[i]) != math.Float32bits(wantA[i]) || math.Float32bits(outB[i]) != math.Float32bits(wantB[i]) {
									t.Fatalf("%s: out[%d] = %g, %g; two products %g, %g", what, i, outA[i], outB[i], wantA[i], wantB[i])
								}
							}
						}
					}
				}
			}
		}
	}
	if paired == 0 {
		t.Skip("no packed type has a two-stream kernel on this CPU: every pair ran as two products")
	}
}

// pairPlanned reports whether MatMulPairSerial would run a and b as one
// product (planPair) for the n input rows x.
func pairPlanned(a, b tensor.Matrix, x []float32, n int) bool {
	c := ctxPool.Get().(*callCtx)
	defer func() {
		c.job = mmJob{}
		ctxPool.Put(c)
	}()
	j := &c.job
	j.out, j.w, j.x, j.n = make([]float32, n*a.Rows), a, x, n
	j.rowBytes = a.RowStride()
	return planPair(c, KernelLevel(), b, make([]float32, n*b.Rows))
}
