package kernels

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Benchmarks. Decode and prefill report, besides ns/op:
//
//	GB/s        weight bytes streamed per second
//	%bw         GB/s as a percentage of MeasureBandwidth(threads)
//	GFLOP/s     2·rows·cols·n / time
//	%fma        GFLOP/s as a percentage of MeasureFMAPeak(threads)
//
// Weights are cycled through enough copies (> 600 MB) that every call
// streams them from DRAM, as in a real model whose weights exceed the L3.
//
//	go test ./model/kernels -run '^$' -bench . -benchtime 20x

var (
	peakMu  sync.Mutex
	peakBW  = map[int]float64{}
	peakFMA = map[int]float64{}
)

func peaks(threads int) (bw, fma float64) {
	peakMu.Lock()
	defer peakMu.Unlock()
	if _, ok := peakBW[threads]; !ok {
		peakBW[threads] = MeasureBandwidth(threads)
		peakFMA[threads] = MeasureFMAPeak(threads)
	}
	return peakBW[threads], peakFMA[threads]
}

func BenchmarkBandwidth(b *testing.B) {
	for _, th := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", th), func(b *testing.B) {
			var bw Bandwidth
			for i := 0; i < b.N; i++ {
				bw = MeasureBandwidthDetail(th)
			}
			b.ReportMetric(bw.Copy/1e9, "copyGB/s")
			b.ReportMetric(bw.Triad/1e9, "triadGB/s")
			b.ReportMetric(bw.Read/1e9, "readGB/s")
		})
	}
}

func BenchmarkFMAPeak(b *testing.B) {
	for _, th := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", th), func(b *testing.B) {
			var f float64
			for i := 0; i < b.N; i++ {
				f = MeasureFMAPeak(th)
			}
			b.ReportMetric(f/1e9, "GFLOP/s")
		})
	}
}

// coldWeights returns copies of one random matrix totalling more than minBytes.
var coldCache = map[string][]tensor.Matrix{}

func coldWeights(dt tensor.DType, rows, cols int, minBytes int) []tensor.Matrix {
	key := fmt.Sprint(dt, rows, cols, minBytes)
	if ws, ok := coldCache[key]; ok {
		return ws
	}
	clear(coldCache) // keep at most one set alive
	w := randMatrix(rand.New(rand.NewPCG(uint64(rows), uint64(cols))), dt, rows, cols)
	if dt == tensor.MXFP4 {
		// Scales as a model's (randMatrix's subnormal ones, for the tests,
		// make every float32 step of their groups take a microcode assist).
		for b := 0; b < len(w.Data); b += dt.BlockBytes() {
			w.Data[b] = max(w.Data[b], 120)
		}
	}
	copies := max(1, (minBytes+w.Bytes()-1)/w.Bytes())
	ws := []tensor.Matrix{w}
	for len(ws) < copies {
		c := w
		c.Data = append([]byte(nil), w.Data...)
		ws = append(ws, c)
	}
	coldCache[key] = ws
	return ws
}

func benchMatMul(b *testing.B, dt tensor.DType, rows, cols, n, threads int) {
	benchMatMulOn(b, coldWeights(dt, rows, cols, 600<<20), n, threads)
}

// benchMatMulOn measures MatMul with n input rows, cycling through ws (copies
// of one matrix, so that the weights come from memory).
func benchMatMulOn(b *testing.B, ws []tensor.Matrix, n, threads int) {
	rows, cols := ws[0].Rows, ws[0].Cols
	x := randVec(rand.New(rand.NewPCG(1, 1)), n*cols)
	out := make([]float32, n*rows)
	bw, fma := peaks(threads)
	withThreads(threads, func() {
		for _, w := range ws {
			MatMul(out, w, x, n)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			MatMul(out, ws[i%len(ws)], x, n)
		}
		b.StopTimer()
	})
	sec := b.Elapsed().Seconds() / float64(b.N)
	gbs := float64(ws[0].Bytes()) / sec
	flops := 2 * float64(rows) * float64(cols) * float64(n) / sec
	b.SetBytes(int64(ws[0].Bytes()))
	b.ReportMetric(gbs/1e9, "GB/s")
	b.ReportMetric(100*gbs/bw, "%bw")
	b.ReportMetric(flops/1e9, "GFLOP/s")
	b.ReportMetric(100*flops/fma, "%fma")
}

// BenchmarkMatMulDecode: Granite 4.0-H-Tiny shapes at decode batch sizes.
func BenchmarkMatMulDecode(b *testing.B) {
	shapes := []struct {
		name       string
		rows, cols int
	}{
		{"in_proj_6448x1536", 6448, 1536},
		{"1536x3072", 1536, 3072},
		{"lm_head_100352x1536", 100352, 1536},
	}
	for _, dt := range []tensor.DType{tensor.BF16, tensor.Q8_0} {
		for _, sh := range shapes {
			for _, n := range []int{1, 8, 32} {
				for _, th := range []int{1, 2} {
					b.Run(fmt.Sprintf("%v/%s/n=%d/threads=%d", dt, sh.name, n, th), func(b *testing.B) {
						benchMatMul(b, dt, sh.rows, sh.cols, n, th)
					})
				}
			}
		}
	}
}

// BenchmarkMatMulDecodeQuant: the types of llama.cpp's Q4_K_M/Q5_K_M files
// (Q4_K, Q5_K, and Q6_K for the tied embedding / LM head, attn_v and half the
// ffn_down tensors) on the decode shapes at n=1.
func BenchmarkMatMulDecodeQuant(b *testing.B) {
	shapes := []struct {
		name       string
		rows, cols int
	}{
		{"in_proj_6448x1536", 6448, 1536},
		{"1536x3072", 1536, 3072},
		{"lm_head_100352x1536", 100352, 1536},
	}
	for _, dt := range []tensor.DType{tensor.Q4_K, tensor.Q5_K, tensor.Q6_K} {
		for _, sh := range shapes {
			for _, th := range []int{1, 2} {
				b.Run(fmt.Sprintf("%v/%s/n=1/threads=%d", dt, sh.name, th), func(b *testing.B) {
					benchMatMul(b, dt, sh.rows, sh.cols, 1, th)
				})
			}
		}
	}
}

// BenchmarkMatMulDecodeAll: every dtype on the in_proj shape at n=1.
func BenchmarkMatMulDecodeAll(b *testing.B) {
	for _, dt := range allDTypes {
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("%v/n=1/threads=%d", dt, th), func(b *testing.B) {
				benchMatMul(b, dt, 6448, 1536, 1, th)
			})
		}
	}
}

// BenchmarkMatMulPrefill: n=512 on the in_proj shape.
func BenchmarkMatMulPrefill(b *testing.B) {
	for _, dt := range allDTypes {
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("%v/in_proj_6448x1536/n=512/threads=%d", dt, th), func(b *testing.B) {
				benchMatMul(b, dt, 6448, 1536, 512, th)
			})
		}
	}
}

func BenchmarkDot(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{128, 4096} {
		x, y := randVec(rng, n), randVec(rng, n)
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.SetBytes(int64(8 * n))
			for i := 0; i < b.N; i++ {
				Dot(x, y)
			}
		})
	}
}

func BenchmarkAxpy(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{128, 4096} {
		x, y := randVec(rng, n), randVec(rng, n)
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.SetBytes(int64(12 * n))
			for i := 0; i < b.N; i++ {
				Axpy(1e-3, x, y)
			}
		})
	}
}

// BenchmarkMatMulHot: a 512x1536 matrix that stays in L2/L3 on one thread,
// i.e. the kernels' arithmetic throughput without DRAM.
func BenchmarkMatMulHot(b *testing.B) {
	for _, dt := range allDTypes {
		w := randMatrix(rand.New(rand.NewPCG(1, 1)), dt, 512, 1536)
		for _, n := range []int{1, 2, 4, 6, 8, 16, 64} {
			x := randVec(rand.New(rand.NewPCG(1, 1)), n*w.Cols)
			out := make([]float32, n*w.Rows)
			b.Run(fmt.Sprintf("%v/n=%d", dt, n), func(b *testing.B) {
				withThreads(1, func() {
					b.SetBytes(int64(w.Bytes()))
					for i := 0; i < b.N; i++ {
						MatMul(out, w, x, n)
					}
				})
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*float64(w.Rows*w.Cols*n)/sec/1e9, "GFLOP/s")
			})
		}
	}
}

// BenchmarkMatMulSmall: back-to-back small decode products (L3-resident),
// i.e. the pool's dispatch overhead against the work.
func BenchmarkMatMulSmall(b *testing.B) {
	for _, rows := range []int{64, 256, 1536} {
		w := randMatrix(rand.New(rand.NewPCG(1, 1)), tensor.BF16, rows, 1536)
		x := randVec(rand.New(rand.NewPCG(1, 1)), w.Cols)
		out := make([]float32, w.Rows)
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("BF16/%dx1536/n=1/threads=%d", rows, th), func(b *testing.B) {
				prev := Threads()
				SetThreads(th)
				defer SetThreads(prev)
				b.SetBytes(int64(w.Bytes()))
				for i := 0; i < b.N; i++ {
					MatMul(out, w, x, 1)
				}
			})
		}
	}
}

// BenchmarkMatMulDecodeStep: the matmuls of one Mamba layer at n=1 back to
// back (in_proj, out_proj, a shared-expert-sized pair), bf16, cold weights:
// the pool must stay warm between calls of different sizes.
func BenchmarkMatMulDecodeStep(b *testing.B) {
	shapes := [][2]int{{6448, 1536}, {1536, 3072}, {1024, 1536}, {1536, 512}}
	const layers = 24 // distinct weight sets, > L3 in total
	rng := rand.New(rand.NewPCG(7, 7))
	ws := make([][]tensor.Matrix, layers)
	proto := make([]tensor.Matrix, len(shapes))
	var bytes int
	for i, sh := range shapes {
		proto[i] = randMatrix(rng, tensor.BF16, sh[0], sh[1])
		bytes += proto[i].Bytes()
	}
	for l := range ws {
		for _, p := range proto {
			c := p
			c.Data = append([]byte(nil), p.Data...)
			ws[l] = append(ws[l], c)
		}
	}
	x := randVec(rng, 3072)
	out := make([]float32, 6448)
	for _, th := range []int{1, 2} {
		b.Run(fmt.Sprintf("BF16/threads=%d", th), func(b *testing.B) {
			prev := Threads()
			SetThreads(th)
			defer SetThreads(prev)
			b.SetBytes(int64(bytes))
			for i := 0; i < b.N; i++ {
				for _, w := range ws[i%layers] {
					MatMul(out, w, x, 1)
				}
			}
			bw, _ := peaks(th)
			gbs := float64(bytes) / (b.Elapsed().Seconds() / float64(b.N))
			b.ReportMetric(gbs/1e9, "GB/s")
			b.ReportMetric(100*gbs/bw, "%bw")
		})
	}
}

// BenchmarkBatchInvariantCost: the batch-invariant one- and two-row kernels
// (--deterministic) against the faster default ones that round differently, on the
// in_proj decode shape with cold weights, one thread. Compare the inv/fast
// pairs of one run (make bench runs it with the other kernel benchmarks).
func BenchmarkBatchInvariantCost(b *testing.B) {
	for _, dt := range []tensor.DType{tensor.F32, tensor.F16, tensor.BF16, tensor.Q8_0, tensor.Q4_K, tensor.Q6_K, tensor.Q5_K, tensor.Q4_0} {
		for _, n := range []int{1, 2} {
			for _, inv := range []bool{true, false} {
				name := map[bool]string{true: "inv", false: "fast"}[inv]
				b.Run(fmt.Sprintf("%v/n=%d/%s", dt, n, name), func(b *testing.B) {
					prev := SetBatchInvariant(inv)
					defer SetBatchInvariant(prev)
					benchMatMul(b, dt, 6448, 1536, n, 1)
				})
			}
		}
	}
}

// BenchmarkQ8Activations: 8-bit activations with the integer kernels (q8)
// against widening the weights to float32 (f32), for the types of
// llama.cpp's Q4_K_M files, cold weights, decode sizes. Compare the q8/f32
// pairs of one run.
func BenchmarkQ8Activations(b *testing.B) {
	for _, dt := range []tensor.DType{tensor.Q4_K, tensor.Q5_K, tensor.Q6_K} {
		for _, sh := range [][2]int{{6448, 1536}, {1536, 3072}} {
			for _, n := range []int{1, 8} {
				for _, th := range []int{1, 2} {
					for _, q8 := range []bool{true, false} {
						name := map[bool]string{true: "q8", false: "f32"}[q8]
						b.Run(fmt.Sprintf("%v/%dx%d/n=%d/threads=%d/%s", dt, sh[0], sh[1], n, th, name), func(b *testing.B) {
							prev := SetQ8Activations(q8)
							defer SetQ8Activations(prev)
							benchMatMul(b, dt, sh[0], sh[1], n, th)
						})
					}
				}
			}
		}
	}
}

// BenchmarkBF16Activations: bf16 weights with activations rounded to bf16
// and VDPBF16PS (bf16) against widening the weights to float32 (f32), cold
// weights, on the in_proj shape. Compare the pairs of one run.
func BenchmarkBF16Activations(b *testing.B) {
	for _, n := range []int{1, 8, 512} {
		for _, th := range []int{1, 2} {
			for _, on := range []bool{true, false} {
				name := map[bool]string{true: "bf16", false: "f32"}[on]
				b.Run(fmt.Sprintf("6448x1536/n=%d/threads=%d/%s", n, th, name), func(b *testing.B) {
					prev := SetBF16Activations(on)
					defer SetBF16Activations(prev)
					benchMatMul(b, tensor.BF16, 6448, 1536, n, th)
				})
			}
		}
	}
}

// BenchmarkQ80Activations: Q8_0 weights with 8-bit activations against
// widening the weights to float32 (f32), on the in_proj and an expert's
// down_proj shapes, from decode to prefill row counts: "rows" is the
// one-input-row kernel (q80rows512, per input row), "group" the lane-group
// kernel (q80dot512R); MatMul takes rows below q80MinRows and group from it.
// Compare the variants of one run.
func BenchmarkQ80Activations(b *testing.B) {
	for _, sh := range [][2]int{{6448, 1536}, {1536, 512}} {
		for _, n := range []int{1, 2, 4, 6, 8, 16, 64, 512} {
			for _, th := range []int{1, 2} {
				for _, v := range []string{"rows", "group", "f32"} {
					if (v == "rows" && n > 8) || (v == "group" && n < 4) {
						continue
					}
					b.Run(fmt.Sprintf("%dx%d/n=%d/threads=%d/%s", sh[0], sh[1], n, th, v), func(b *testing.B) {
						prev := SetQ8Activations(v != "f32")
						defer SetQ8Activations(prev)
						pm := q80MinRows
						q80MinRows = map[string]int{"rows": 1 << 30, "group": 1, "f32": pm}[v]
						defer func() { q80MinRows = pm }()
						benchMatMul(b, tensor.Q8_0, sh[0], sh[1], n, th)
					})
				}
			}
		}
	}
}

// BenchmarkPacked: products with weights of each packed type (packedDTypes)
// packed in 16-row groups (Pack, what the loader does when it copies
// weights) against the same weights row-major, both with 8-bit activations:
// in_proj and an expert's shape, one-row (decode) to prefill-sized inputs.
func BenchmarkPacked(b *testing.B) {
	for _, dt := range packedDTypes {
		if !hasPackedKernels(dt) {
			continue
		}
		for _, sh := range [][2]int{{6448, 1536}, {1536, 512}} {
			for _, n := range []int{1, 2, 4, 8, 64, 512} {
				for _, th := range []int{1, 2} {
					for _, packed := range []bool{false, true} {
						name := map[bool]string{false: "rowmajor", true: "x16"}[packed]
						b.Run(fmt.Sprintf("%v/%dx%d/n=%d/threads=%d/%s", dt, sh[0], sh[1], n, th, name), func(b *testing.B) {
							ws := coldWeights(dt, sh[0], sh[1], 600<<20)
							if packed {
								ws = append([]tensor.Matrix(nil), ws...) // the cache keeps the row-major ones
								for i, w := range ws {
									ws[i] = Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
								}
							}
							benchMatMulOn(b, ws, n, th)
						})
					}
				}
			}
		}
	}
}

// BenchmarkQ80AVX2: Q8_0 products at the AVX2 level (what an AVX2-only CPU
// runs), in_proj and an expert's shape, one thread: "f32" widens the weights
// to float32 (the path before the AVX2 integer kernels), "rows" is
// q80rows256 (one input row) or q80rows8x256 per input row, "packing" packs 16-row groups as the product
// goes (q80PackingBlock, what MatMul takes from q80PackMinRows256 input
// rows on row-major weights), "x16" runs weights packed beforehand (the loader's
// default). Compare the variants of one run.
func BenchmarkQ80AVX2(b *testing.B) {
	if !hasQ80KernelsAt(LevelAVX2) {
		b.Skip("no AVX2 on this CPU or build")
	}
	for _, sh := range [][2]int{{6448, 1536}, {1536, 512}} {
		for _, n := range []int{1, 4, 8, 16, 64, 512} {
			for _, v := range []string{"f32", "rows", "packing", "x16"} {
				if (v == "rows" && n > 16) || (v == "packing" && n < 4) {
					continue
				}
				b.Run(fmt.Sprintf("%dx%d/n=%d/%s", sh[0], sh[1], n, v), func(b *testing.B) {
					prev, _ := SetKernelLevel(LevelAVX2)
					defer SetKernelLevel(prev)
					defer SetQ8Activations(SetQ8Activations(v != "f32"))
					pm := q80PackMinRows256
					q80PackMinRows256 = map[string]int{"rows": 1 << 30, "packing": 1, "f32": pm, "x16": pm}[v]
					defer func() { q80PackMinRows256 = pm }()
					ws := coldWeights(tensor.Q8_0, sh[0], sh[1], 600<<20)
					if v == "x16" {
						ws = append([]tensor.Matrix(nil), ws...)
						for i, w := range ws {
							ws[i] = Pack(make([]byte, PackedBytes(tensor.Q8_0, w.Rows, w.Cols)), w)
						}
					}
					benchMatMulOn(b, ws, n, 1)
				})
			}
		}
	}
}

// BenchmarkPackedStream: one-row products (decode) on an LM-head-sized
// packed matrix (100352x1536, larger than any cache), one thread, against
// the read probe over the same bytes in the same run: "probe" reads them,
// "x16" multiplies them; %probe is the product's share of the probe's rate
// (the decode bandwidth goal is 80%).
func BenchmarkPackedStream(b *testing.B) {
	for _, dt := range []tensor.DType{tensor.Q4_K, tensor.Q6_K, tensor.Q5_K, tensor.Q8_0, tensor.Q3_K, tensor.Q2_K, tensor.IQ4_XS} {
		if !hasPackedKernels(dt) {
			continue
		}
		w := randMatrix(rand.New(rand.NewPCG(1, 1)), dt, 100352, 1536)
		p := Pack(make([]byte, PackedBytes(dt, w.Rows, w.Cols)), w)
		w = tensor.Matrix{}
		x := randVec(rand.New(rand.NewPCG(1, 1)), p.Cols)
		out := make([]float32, p.Rows)
		for _, threads := range []int{1, 2} {
			var probe float64
			b.Run(fmt.Sprintf("%v/threads=%d/probe", dt, threads), func(b *testing.B) {
				b.SetBytes(int64(p.Bytes()))
				var rate float64
				for i := 0; i < b.N; i++ {
					rate += readRate(p.Data, threads)
				}
				probe = rate / float64(b.N)
			})
			b.Run(fmt.Sprintf("%v/threads=%d/x16", dt, threads), func(b *testing.B) {
				withThreads(threads, func() {
					MatMul(out, p, x, 1)
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						MatMul(out, p, x, 1)
					}
				})
				b.SetBytes(int64(p.Bytes()))
				if probe > 0 {
					b.ReportMetric(100*float64(p.Bytes())/(b.Elapsed().Seconds()/float64(b.N))/probe, "%probe")
				}
			})
		}
	}
}

// BenchmarkPack: packing a matrix into 16-row groups (what the loader does
// for every matrix it copies), one goroutine, per type, in_proj shape.
func BenchmarkPack(b *testing.B) {
	rng := rand.New(rand.NewPCG(34, 34))
	for _, dt := range []tensor.DType{tensor.Q8_0, tensor.Q4_K, tensor.Q6_K, tensor.Q4_0} {
		b.Run(dt.String(), func(b *testing.B) {
			w := randMatrix(rng, dt, 6448, 1536)
			dst := make([]byte, PackedBytes(dt, w.Rows, w.Cols))
			s := specOf(dt, tensor.RowMajor)
			b.SetBytes(int64(len(w.Data)))
			b.ResetTimer()
			for range b.N {
				s.packGroups(dst, w, 0, (w.Rows+packRows-1)/packRows)
			}
		})
	}
}

// BenchmarkReadStreams: the read probe (readProbe: four streams a quarter
// of its buffer apart) over a 256 MiB buffer whole, and in pieces of 4 KiB
// to 1 MiB, one after the other (a piece's four streams a quarter of it
// apart: 4 KiB pieces read as one sequential stream). One thread. This is
// why the products of one input row read two runs of groups at once
// (planStreams).
func BenchmarkReadStreams(b *testing.B) {
	buf := make([]byte, 256<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for _, piece := range []int{4 << 10, 64 << 10, 1 << 20, len(buf)} {
		b.Run(fmt.Sprintf("piece=%dKiB", piece>>10), func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			for range b.N {
				for o := 0; o < len(buf); o += piece {
					readProbe(buf[o : o+piece])
				}
			}
		})
	}
}

// BenchmarkScaleTo: a 32-session step's logits (32 rows of Granite's
// 100,352) scaled into the sequences' own slices: Scale in place then a
// copy (before) against ScaleTo (one pass), one thread.
func BenchmarkScaleTo(b *testing.B) {
	const rows, v = 32, 100352
	src := randVec(rand.New(rand.NewPCG(5, 5)), rows*v)
	dst := make([][]float32, rows)
	for i := range dst {
		dst[i] = make([]float32, v)
	}
	b.Run("scale+copy", func(b *testing.B) {
		b.SetBytes(4 * rows * v)
		for b.Loop() {
			Scale(0.5, src)
			for i := range dst {
				copy(dst[i], src[i*v:(i+1)*v])
			}
		}
	})
	b.Run("scaleto", func(b *testing.B) {
		b.SetBytes(4 * rows * v)
		for b.Loop() {
			for i := range dst {
				ScaleTo(dst[i], src[i*v:(i+1)*v], 0.5)
			}
		}
	})
}
