//go:build !purego

package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

func skipNoQ80(t testing.TB) {
	t.Helper()
	if KernelLevel() < LevelAVX512 || !hasQ80 || !Q8Activations() {
		t.Skip("no Q8_0 integer kernels on this CPU")
	}
}

// forQ80Levels runs f at each kernel level with Q8_0 integer kernels on
// this CPU (AVX-512 VNNI, and the AVX2 kernels), as a subtest.
func forQ80Levels(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	if !Q8Activations() {
		t.Skip("8-bit activations are off")
	}
	prev := KernelLevel()
	defer SetKernelLevel(prev)
	ran := false
	for _, l := range SupportedLevels() {
		if !hasQ80KernelsAt(l) {
			continue
		}
		ran = true
		SetKernelLevel(l)
		t.Run(l.String(), f)
	}
	if !ran {
		t.Skip("no Q8_0 integer kernels on this CPU")
	}
}

// TestQuantizeQ80 checks the group quantizer: the assembly writes the Go
// twin's bytes (zero rows, tiny and extreme blocks included), values within
// half a step, non-finite inputs refused.
func TestQuantizeQ80(t *testing.T) {
	skipNoQ80(t)
	rng := rand.New(rand.NewPCG(21, 21))
	const nb = 5
	k := nb * q80Values
	for _, rows := range []int{1, 7, 16} {
		x := make([]float32, q80Group*k) // rows beyond `rows` stay zero
		copy(x, randVec(rng, rows*k))
		x[3] = 0
		x[40] = -7                       // block 1's extreme
		for l := 2 * 32; l < 3*32; l++ { // block 2 of row 0: tiny
			x[l] = 1e-31
		}
		if rows > 1 {
			x[k+4*32+5] = 3e4 // row 1 block 4: large
		}
		got := make([]byte, nb*q80xBlockBytes)
		want := make([]byte, len(got))
		if !quantQ80I512(&x[0], 4*k, nb, &got[0]) || !quantizeQ80Ref(want, x, k, rows, nb) {
			t.Fatal("finite input refused")
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("rows %d: byte %d (block %d offset %d) = %#x, Go twin %#x", rows, i, i/q80xBlockBytes, i%q80xBlockBytes, got[i], want[i])
			}
		}
		for i := 0; i < rows; i++ {
			for b := 0; b < nb; b++ {
				blk := got[b*q80xBlockBytes:]
				d := math.Float32frombits(uint32(blk[512+4*i]) | uint32(blk[513+4*i])<<8 | uint32(blk[514+4*i])<<16 | uint32(blk[515+4*i])<<24)
				for l := 0; l < q80Values; l++ {
					q := int(blk[64*(l/4)+4*i+l%4]) - 128
					v := x[i*k+b*q80Values+l]
					// d is rounded to f16 (relative 2^-11), q computed with the
					// exact 127/amax: within half a step and the f16 error.
					if e := math.Abs(float64(v - d*float32(q))); e > 0.5001*float64(d)+float64(math.Abs(float64(v)))/1024+q80Tiny {
						t.Fatalf("row %d block %d value %d: %g quantized to %d·%g", i, b, l, v, q, d)
					}
				}
			}
		}
		if int(got[q80xBlockBytes+64*2+0]) != 128-127 { // value 40 = block 1, value 8
			t.Fatalf("extreme value quantized to %d", int(got[q80xBlockBytes+64*2])-128)
		}
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		x := randVec(rng, q80Group*k)
		x[9*k+77] = bad
		buf := make([]byte, nb*q80xBlockBytes)
		if quantQ80I512(&x[0], 4*k, nb, &buf[0]) || quantizeQ80Ref(buf, x, k, q80Group, nb) {
			t.Fatalf("%v accepted", bad)
		}
	}
}

// TestQuantizeQ80Row: the one-row quantizer (q80rows512's layout) gives the
// group quantizer's values and scales, and 128·Σq per block.
func TestQuantizeQ80Row(t *testing.T) {
	skipNoQ80(t)
	rng := rand.New(rand.NewPCG(25, 25))
	for _, nb := range []int{1, 15, 16, 17, 48} {
		k := nb * q80Values
		x := randVec(rng, k)
		x[0] = 1e-31
		xg := make([]byte, nb*q80xBlockBytes)
		if !quantizeQ80Ref(xg, x, k, 1, nb) {
			t.Fatal("finite input refused")
		}
		nt := (nb + 15) / 16
		xr := make([]byte, nt*q80rTileBytes)
		if !quantQ80R512(&x[0], nb, &xr[0]) {
			t.Fatal("finite input refused")
		}
		xgo := make([]byte, nt*q80rTileBytes)
		if !quantizeQ80RowRef(xgo, x, nb) {
			t.Fatal("finite input refused by quantizeQ80RowRef")
		}
		for b := 0; b < nb; b++ {
			tile, bt := b/16*q80rTileBytes, b%16
			for _, f := range [][2]int{{32 * bt, 32}, {512 + 4*bt, 4}, {576 + 4*bt, 4}} {
				if got, want := xgo[tile+f[0]:tile+f[0]+f[1]], xr[tile+f[0]:tile+f[0]+f[1]]; string(got) != string(want) {
					t.Fatalf("nb %d block %d: quantizeQ80RowRef wrote % x at %d, the assembly % x", nb, b, got, f[0], want)
				}
			}
		}
		for b := 0; b < nb; b++ {
			tile := xr[b/16*q80rTileBytes:]
			var sum int32
			for l := 0; l < q80Values; l++ {
				q := int8(tile[32*(b%16)+l])
				if want := int(xg[b*q80xBlockBytes+64*(l/4)+l%4]) - 128; int(q) != want {
					t.Fatalf("nb %d block %d value %d: q %d, group quantizer %d", nb, b, l, q, want)
				}
				sum += int32(q)
			}
			d := binary.LittleEndian.Uint32(tile[512+4*(b%16):])
			if want := binary.LittleEndian.Uint32(xg[b*q80xBlockBytes+512:]); d != want {
				t.Fatalf("nb %d block %d: d %#x, group quantizer %#x", nb, b, d, want)
			}
			if c := int32(binary.LittleEndian.Uint32(tile[576+4*(b%16):])); c != 128*sum {
				t.Fatalf("nb %d block %d: c %d, want %d", nb, b, c, 128*sum)
			}
		}
	}
	x := randVec(rng, 64)
	x[40] = float32(math.Inf(-1))
	if quantQ80R512(&x[0], 2, &make([]byte, q80rTileBytes)[0]) {
		t.Fatal("-Inf accepted")
	}
	if quantizeQ80RowRef(make([]byte, q80rTileBytes), x, 2) {
		t.Fatal("-Inf accepted by quantizeQ80RowRef")
	}
}

// TestQuantizeQ80RowAVX2: quantQ80R256 writes quantizeQ80RowRef's bytes
// (zero, tiny, huge and tie-rounding blocks included) and refuses rows with
// an infinity or a NaN in any block.
func TestQuantizeQ80RowAVX2(t *testing.T) {
	if !hasQ80KernelsAt(LevelAVX2) {
		t.Skip("no AVX2 on this CPU or build")
	}
	rng := rand.New(rand.NewPCG(26, 26))
	for _, nb := range []int{1, 15, 16, 17, 48} {
		k := nb * q80Values
		x := randVec(rng, k)
		for l := 0; l < q80Values; l++ {
			x[l] = 0 // a zero block
		}
		if nb > 1 {
			x[32] = 1e-31 // a tiny block
		}
		if nb > 2 {
			x[64], x[65] = 3e38, -1e38 // a huge one
		}
		if nb > 3 {
			// x·127/amax exactly n+0.5: ties round to even.
			x[96], x[97], x[98] = 127, 2.5, -3.5
			for l := 99; l < 128; l++ {
				x[l] = 0.5
			}
		}
		want := make([]byte, (nb+15)/16*q80rTileBytes)
		got := make([]byte, len(want))
		if !quantizeQ80RowRef(want, x, nb) || !quantQ80R256(&x[0], nb, &got[0]) {
			t.Fatalf("nb %d: finite input refused", nb)
		}
		if string(got) != string(want) {
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("nb %d: byte %d (block %d) = %#x, quantizeQ80RowRef %#x", nb, i, 16*(i/q80rTileBytes)+i%q80rTileBytes/32, got[i], want[i])
				}
			}
		}
		for _, bad := range []float32{float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())} {
			xb := append([]float32(nil), x...)
			xb[k-1-rng.IntN(k)] = bad
			if quantQ80R256(&xb[0], nb, &got[0]) {
				t.Fatalf("nb %d: %v accepted", nb, bad)
			}
		}
	}
}

// TestConvQ80: the conv*Q80 assembly rewrites Q4_0, Q5_0 and IQ4_NL blocks
// as toQ80RowRef does, and the Q8_0 blocks dequantize to the original
// block's values.
func TestConvQ80(t *testing.T) {
	if !hasQ80KernelsAt(LevelAVX2) {
		t.Skip("no AVX2 on this CPU or build")
	}
	rng := rand.New(rand.NewPCG(27, 27))
	for _, dt := range q80DTypes[1:] {
		if !q80Rewrites(dt) {
			continue
		}
		const nb = 37
		w := randMatrix(rng, dt, 1, nb*q80Values)
		// Every byte value in the codes and qh of some block.
		for i := range w.Data {
			if i%dt.BlockBytes() >= 2 {
				w.Data[i] = byte(rng.Uint32())
			}
		}
		want := make([]byte, nb*tensor.Q8_0BlockBytes)
		got := make([]byte, len(want)+1)
		got[len(want)] = 0x5A
		toQ80RowRef(want, w.Data, dt, nb)
		convQ80Fns[dt](&w.Data[0], nb, &got[0])
		if got[len(want)] != 0x5A {
			t.Fatalf("%v: wrote past the row", dt)
		}
		if string(got[:len(want)]) != string(want) {
			t.Fatalf("%v: assembly and toQ80RowRef differ", dt)
		}
		a, b := make([]float32, nb*q80Values), make([]float32, nb*q80Values)
		tensor.DequantizeRow(dt, w.Data, a)
		tensor.DequantizeRow(tensor.Q8_0, want, b)
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				t.Fatalf("%v value %d: %g as Q8_0, %g as it was", dt, i, b[i], a[i])
			}
		}
	}
}

// TestQ80WithoutVNNI: on an AVX-512 CPU without VNNI (simulated) the
// Q8_0 family runs the AVX2 integer kernels at the AVX-512 level, row-major
// and packed, with the twin's bits.
func TestQ80WithoutVNNI(t *testing.T) {
	if MaxLevel() < LevelAVX512 || !Q8Activations() {
		t.Skip("no AVX-512 on this CPU or build")
	}
	defer forceNoQ80VNNI()()
	prev, _ := SetKernelLevel(LevelAVX512)
	defer SetKernelLevel(prev)
	if !hasQ80KernelsAt(LevelAVX512) {
		t.Fatal("no Q8_0 integer kernels at the AVX-512 level without VNNI")
	}
	rng := rand.New(rand.NewPCG(28, 28))
	for _, dt := range []tensor.DType{tensor.Q8_0, tensor.Q4_0, tensor.IQ4_NL, tensor.Q4_1, tensor.Q5_1, tensor.MXFP4} {
		w := randMatrix(rng, dt, 37, 96)
		if !CanPack(w) {
			t.Fatalf("%v: not packed without VNNI", dt)
		}
		p := Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
		for _, n := range []int{1, 3, 9, 40} {
			x := randVec(rng, n*w.Cols)
			want := make([]float32, n*w.Rows)
			matMulQ80Ref(want, w, x, n)
			for _, m := range []tensor.Matrix{w, p} {
				got := make([]float32, n*w.Rows)
				MatMul(got, m, x, n)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%v %v n=%d: out[%d] = %g, twin %g", dt, m.Layout, n, i, got[i], want[i])
					}
				}
			}
		}
	}
}

// TestMatMulQ80 checks the Q8_0 integer path: bit for bit its plain twin,
// within the error of 8-bit activations of the float32 reference, every row
// the same bits whatever the other rows of the call, the thread count or
// the weight rows per kernel call.
func TestMatMulQ80(t *testing.T) {
	forQ80Levels(t, func(t *testing.T) {
		for _, dt := range q80DTypes {
			t.Run(dt.String(), func(t *testing.T) { testMatMulQ80(t, dt) })
		}
	})
}

// q80DTypes are the weight types the Q8_0 integer kernels compute (asQ80).
var q80DTypes = []tensor.DType{tensor.Q8_0, tensor.Q4_0, tensor.Q5_0, tensor.IQ4_NL, tensor.Q4_1, tensor.Q5_1, tensor.MXFP4}

func testMatMulQ80(t *testing.T, dt tensor.DType) {
	rng := rand.New(rand.NewPCG(22, 22))
	for _, rows := range []int{1, 5, 6, 13, 64, 301} {
		for _, cols := range []int{32, 96, 352, 1536} {
			w := randMatrix(rng, dt, rows, cols)
			for _, n := range []int{1, 2, 3, q80MinRows - 1, q80MinRows, 16, 17, 40} {
				x := randVec(rng, n*cols)
				abs := absRef(w, x, n)
				want := make([]float32, n*rows)
				matMulQ80Ref(want, w, x, n)
				exact := make([]float32, n*rows)
				MatMulRef(exact, w, x, n)
				for _, th := range []int{1, 2} {
					got := make([]float32, n*rows+1)
					got[n*rows] = 42
					withThreads(th, func() { MatMul(got, w, x, n) })
					if got[n*rows] != 42 {
						t.Fatal("wrote past out")
					}
					what := fmt.Sprintf("[%d,%d] n=%d threads=%d", rows, cols, n, th)
					for i := range want {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s: out[%d] = %g, twin %g", what, i, got[i], want[i])
						}
						// 8-bit activations: half a step (amax/254) per value.
						if d := math.Abs(float64(got[i] - exact[i])); d > 0.01*float64(abs[i]) {
							t.Fatalf("%s: out[%d] = %g, float32 ref %g (|w·x| %g)", what, i, got[i], exact[i], abs[i])
						}
					}
				}
			}
		}
	}
}

// TestMatMulQ80Rows: every q80dot512R kernel gives each of its rows the bits
// of the one-row kernel.
func TestMatMulQ80Rows(t *testing.T) {
	skipNoQ80(t)
	rng := rand.New(rand.NewPCG(23, 23))
	const nb = 7
	k := nb * q80Values
	w := randMatrix(rng, tensor.Q8_0, q80MaxRows, k)
	x := randVec(rng, q80Group*k)
	xg := make([]byte, nb*q80xBlockBytes)
	quantQ80I512(&x[0], 4*k, nb, &xg[0])
	ps := (nb + 15) / 16 * 16 * 8
	prep := make([]byte, q80MaxRows*ps)
	q80prep512(&w.Data[0], w.RowStride(), q80MaxRows, nb, &prep[0], ps)
	var one [q80MaxRows * q80Group]float32
	for r := 0; r < q80MaxRows; r++ {
		q80dot512R1(&w.Data[r*w.RowStride()], w.RowStride(), &xg[0], nb, &prep[r*ps], ps, &one[r*q80Group])
	}
	for R := 1; R <= q80MaxRows; R++ {
		var out [q80MaxRows * q80Group]float32
		q80Dots[R](&w.Data[0], w.RowStride(), &xg[0], nb, &prep[0], ps, &out[0])
		for i := 0; i < R*q80Group; i++ {
			if math.Float32bits(out[i]) != math.Float32bits(one[i]) {
				t.Fatalf("R=%d: row %d lane %d = %g, alone %g", R, i/q80Group, i%q80Group, out[i], one[i])
			}
		}
	}
}

// TestMatMulQ80BatchInvariant: a row's result does not depend on which rows
// share its call or its lane group, in either mode (the two Q8_0 integer
// kernels give the same bits), and a row holding a NaN leaves the others the
// bits they have without it.
func TestMatMulQ80BatchInvariant(t *testing.T) {
	forQ80Levels(t, func(t *testing.T) {
		for _, dt := range q80DTypes {
			for _, inv := range []bool{false, true} {
				t.Run(fmt.Sprintf("%v/invariant=%v", dt, inv), func(t *testing.T) {
					defer SetBatchInvariant(SetBatchInvariant(inv))
					testMatMulQ80BatchInvariant(t, dt)
				})
			}
		}
	})
}

func testMatMulQ80BatchInvariant(t *testing.T, dt tensor.DType) {
	rng := rand.New(rand.NewPCG(24, 24))
	w := randMatrix(rng, dt, 70, 512)
	const n = 37
	x := randVec(rng, n*w.Cols)
	all := make([]float32, n*w.Rows)
	MatMul(all, w, x, n)
	// Each row again at another position, alone or among up to 10 others
	// (both Q8_0 integer kernels).
	for i := 0; i < n; i++ {
		m := 1 + i%11
		xs := make([]float32, m*w.Cols)
		pos := i % m
		for t := 0; t < m; t++ {
			src := (i + 3*t + 1) % n
			if t == pos {
				src = i
			}
			copy(xs[t*w.Cols:], x[src*w.Cols:(src+1)*w.Cols])
		}
		out := make([]float32, m*w.Rows)
		MatMul(out, w, xs, m)
		for r := 0; r < w.Rows; r++ {
			if got, want := out[pos*w.Rows+r], all[i*w.Rows+r]; math.Float32bits(got) != math.Float32bits(want) {
				t.Fatalf("row %d at position %d of %d: out[%d] = %g, %g in the batch of %d", i, pos, m, r, got, want, n)
			}
		}
	}
	// A NaN in row 5: the other rows keep the bits they have without row 5.
	xn := append([]float32(nil), x...)
	xn[5*w.Cols+9] = float32(math.NaN())
	out := make([]float32, n*w.Rows)
	MatMul(out, w, xn, n)
	without := make([]float32, (n-1)*w.Rows)
	xw := append(append([]float32(nil), x[:5*w.Cols]...), x[6*w.Cols:]...)
	MatMul(without, w, xw, n-1)
	for i := 0; i < n; i++ {
		for r := 0; r < w.Rows; r++ {
			got := out[i*w.Rows+r]
			switch {
			case i == 5:
				if got == got {
					t.Fatalf("the NaN row gave %g", got)
				}
			case math.Float32bits(got) != math.Float32bits(without[(i-b2i(i > 5))*w.Rows+r]):
				t.Fatalf("row %d out[%d] = %g beside a NaN row, %g without it", i, r, got, without[(i-b2i(i > 5))*w.Rows+r])
			}
		}
	}
}

// BenchmarkQ81Packing: row-major Q4_1 and Q5_1 products (mapped weights),
// in_proj and an expert's shape, one thread: "rows" runs the one-row
// kernels per input row, "packing" packs 16-row groups as the product goes
// (q8PackingBlock, what MatMul takes from q81PackMinRows input rows).
// Compare the variants of one run.
func BenchmarkQ81Packing(b *testing.B) {
	prev := q81PackMinRows
	defer func() { q81PackMinRows = prev }()
	for _, dt := range []tensor.DType{tensor.Q4_1, tensor.Q5_1} {
		if !hasPackedKernels(dt) {
			continue
		}
		for _, sh := range [][2]int{{6448, 1536}, {1536, 512}} {
			for _, n := range []int{1, 2, 3, 4, 8, 64} {
				for _, v := range []string{"rows", "packing"} {
					b.Run(fmt.Sprintf("%v/%dx%d/n=%d/%s", dt, sh[0], sh[1], n, v), func(b *testing.B) {
						q81PackMinRows = map[string]int{"rows": 1 << 30, "packing": 1}[v]
						benchMatMulOn(b, coldWeights(dt, sh[0], sh[1], 600<<20), n, 1)
					})
				}
			}
		}
	}
}

// streamsPlanned reports whether a product of w with n input rows runs a
// two-stream kernel (planStreams).
func streamsPlanned(w tensor.Matrix, x []float32, n int) bool {
	c := new(callCtx)
	j := &c.job
	j.out, j.w, j.x, j.n = make([]float32, n*w.Rows), w, x, n
	j.rowBytes = w.RowStride()
	q8, _ := planQ8(c, KernelLevel())
	return q8 && j.q8.streams != nil
}

// TestStreamsMatchOneRun: a packed product of one or two input rows gives
// the same bits with its layout's two-stream kernel as with the one-run
// kernel (and the twin's), whether the groups split evenly into two runs or
// leave a group and a partial group after them, on one thread and two, at
// each level with two-stream kernels (AVX-512 VNNI, AVX2).
func TestStreamsMatchOneRun(t *testing.T) {
	defer SetProductStreams(SetProductStreams(2))
	defer SetQ8Activations(SetQ8Activations(true))
	forQ80Levels(t, testStreamsMatchOneRun)
}

func testStreamsMatchOneRun(t *testing.T) {
	kernels := &streamKernels
	if packedLevel(tensor.Q80x16, KernelLevel()) == LevelAVX2 {
		kernels = &streamKernelsAVX2
	}
	rng := rand.New(rand.NewPCG(41, 41))
	for _, dt := range packedDTypes {
		if kernels[specOf(dt, tensor.RowMajor).layout][1] == nil {
			continue
		}
		for _, rows := range []int{8 * packRows, 9 * packRows, 11*packRows + 7, 1536} {
			for _, cols := range []int{dt.BlockValues(), 1536} {
				w := randMatrix(rng, dt, rows, cols)
				p := Pack(make([]byte, PackedBytes(dt, rows, cols)), w)
				for n := 1; n <= maxStreamRows && kernels[specOf(dt, tensor.RowMajor).layout][n] != nil; n++ {
					x := randVec(rng, n*cols)
					if !streamsPlanned(p, x, n) {
						t.Fatalf("%v [%d,%d] n=%d: no two-stream kernel planned", dt, rows, cols, n)
					}
					twin := make([]float32, n*rows)
					if asQ80(dt) {
						matMulQ80Ref(twin, w, x, n)
					} else {
						matMulQ8Ref(twin, w, x, n)
					}
					for _, th := range []int{1, 2} {
						what := fmt.Sprintf("%v [%d,%d] n=%d threads=%d", dt, rows, cols, n, th)
						one, two := make([]float32, n*rows), make([]float32, n*rows)
						SetProductStreams(1)
						withThreads(th, func() { MatMul(one, p, x, n) })
						SetProductStreams(2)
						withThreads(th, func() { MatMul(two, p, x, n) })
						for r := range n * rows {
							if math.Float32bits(one[r]) != math.Float32bits(two[r]) || math.Float32bits(twin[r]) != math.Float32bits(two[r]) {
								t.Fatalf("%s out[%d]: %g with two streams, %g with one, %g twin", what, r, two[r], one[r], twin[r])
							}
						}
					}
				}
			}
		}
	}
}

// FuzzStreamsMatchTwin: random shapes of packed products of one or two
// input rows, for every layout with two-run kernels, at every level that
// has them, on one thread and two: the two-run kernels give the bits of
// the integer twin (matMulQ8Ref, matMulQ80Ref). Rows 128-1151, so that
// the groups split into two runs with or without groups after them, and
// 1-6 blocks of columns. The seeds run with go test.
//
//	go test ./model/kernels -run '^$' -fuzz FuzzStreamsMatchTwin -fuzztime 60s
func FuzzStreamsMatchTwin(f *testing.F) {
	f.Add(uint64(1), uint8(1), uint16(0), uint8(0), uint8(0))       // Q4_K, 128 rows
	f.Add(uint64(2), uint8(3), uint16(423), uint8(5), uint8(0))     // Q6_K, 551 rows, 6 blocks
	f.Add(uint64(3), uint8(1), uint16(1023), uint8(2), uint8(1))    // Q4_K, two input rows
	f.Add(uint64(4), uint8(0), uint16(77), uint8(11), uint8(1))     // Q8_0
	f.Add(uint64(5), uint8(2), uint16(300), uint8(1), uint8(0))     // Q5_K
	f.Add(uint64(6), uint8(3), uint16(16*20+9), uint8(1), uint8(0)) // Q6_K, a partial group after the runs
	defer SetProductStreams(SetProductStreams(2))
	defer SetQ8Activations(SetQ8Activations(true))
	f.Fuzz(func(t *testing.T, seed uint64, dtSel uint8, rows16 uint16, blocks8 uint8, n8 uint8) {
		dt := packedDTypes[int(dtSel)%len(packedDTypes)]
		rows := 128 + int(rows16)%1024
		cols := dt.BlockValues() * (1 + int(blocks8)%6)
		n := 1 + int(n8)%maxStreamRows
		rng := rand.New(rand.NewPCG(seed, uint64(rows)<<32|uint64(cols)))
		w := randMatrix(rng, dt, rows, cols)
		p := Pack(make([]byte, PackedBytes(dt, rows, cols)), w)
		x := randVec(rng, n*cols)
		twin := make([]float32, n*rows)
		if asQ80(dt) {
			matMulQ80Ref(twin, w, x, n)
		} else {
			matMulQ8Ref(twin, w, x, n)
		}
		prev := KernelLevel()
		defer SetKernelLevel(prev)
		checked := false
		for _, l := range SupportedLevels() {
			if !hasQ80KernelsAt(l) {
				continue
			}
			SetKernelLevel(l)
			if !streamsPlanned(p, x, n) {
				continue // no two-run kernel of this layout and row count here
			}
			checked = true
			for _, th := range []int{1, 2} {
				out := make([]float32, n*rows)
				withThreads(th, func() { MatMul(out, p, x, n) })
				for r := range out {
					if math.Float32bits(out[r]) != math.Float32bits(twin[r]) {
						t.Fatalf("%v [%d,%d] n=%d %v threads=%d out[%d]: %g, twin %g", dt, rows, cols, n, l, th, r, out[r], twin[r])
					}
				}
			}
		}
		if !checked {
			t.Skipf("%v, %d input rows: no two-run kernel at any level of this CPU", dt, n)
		}
	})
}

// TestBF16StreamsMatchOneRun: bf16 weights at one input row give the same
// bits with bf16rows512S2 (two runs of rows at once) as with bf16rows512,
// with an even and an odd number of rows, on one thread and two.
func TestBF16StreamsMatchOneRun(t *testing.T) {
	defer SetProductStreams(SetProductStreams(2))
	if KernelLevel() < LevelAVX512 || !hasBF16DotKernels() {
		t.Skip("no bf16 dot kernels on this CPU")
	}
	rng := rand.New(rand.NewPCG(43, 43))
	for _, rows := range []int{128, 129, 1537} {
		for _, cols := range []int{32, 96, 1536} {
			w := randMatrix(rng, tensor.BF16, rows, cols)
			x := randVec(rng, cols)
			c := new(callCtx)
			c.job.out, c.job.w, c.job.x, c.job.n, c.job.rowBytes = make([]float32, rows), w, x, 1, w.RowStride()
			if !planBF16(c, KernelLevel()) || c.job.span == 0 {
				t.Fatalf("[%d,%d]: bf16rows512S2 not planned", rows, cols)
			}
			for _, th := range []int{1, 2} {
				one, two := make([]float32, rows), make([]float32, rows)
				SetProductStreams(1)
				withThreads(th, func() { MatMul(one, w, x, 1) })
				SetProductStreams(2)
				withThreads(th, func() { MatMul(two, w, x, 1) })
				for r := range rows {
					if math.Float32bits(one[r]) != math.Float32bits(two[r]) {
						t.Fatalf("[%d,%d] threads=%d row %d: %g with two runs, %g with one", rows, cols, th, r, two[r], one[r])
					}
				}
			}
		}
	}
}

// BenchmarkStreams: products of one and two input rows with the two-stream
// kernels (planStreams, and bf16rows512S2 for one BF16 row) against the
// one-run kernels, in_proj, an expert's and the LM head's shapes, from
// memory. Compare the pairs of one run.
func BenchmarkStreams(b *testing.B) {
	for _, dt := range append([]tensor.DType{tensor.BF16}, packedDTypes...) {
		if dt != tensor.BF16 && streamKernels[specOf(dt, tensor.RowMajor).layout][1] == nil {
			continue
		}
		for _, sh := range [][2]int{{6448, 1536}, {1536, 512}, {100352, 1536}, {1024, 1536}, {1536, 1024}} {
			for _, run := range [][2]int{{1, 1}, {1, 2}, {2, 1}, {2, 2}} { // input rows, threads
				n, th := run[0], run[1]
				if n > 1 && dt == tensor.BF16 {
					continue
				}
				for _, streams := range []int{1, 2} {
					b.Run(fmt.Sprintf("%v/%dx%d/n=%d/threads=%d/streams=%d", dt, sh[0], sh[1], n, th, streams), func(b *testing.B) {
						ws := append([]tensor.Matrix(nil), coldWeights(dt, sh[0], sh[1], 600<<20)...)
						for i, w := range ws {
							if dt != tensor.BF16 {
								ws[i] = Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
							}
						}
						defer SetProductStreams(SetProductStreams(streams))
						benchMatMulOn(b, ws, n, th)
					})
				}
			}
		}
	}
}
