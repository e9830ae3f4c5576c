package moe

import (
	"fmt"
	"math"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
)

// FakeKernels returns the Go twins of kernels.cu, for cuda.NewFake. Each does
// for the whole grid what the kernel does, in the same order of operations
// where that matters (the fused multiply-adds of the GEMV and the combine).
func FakeKernels() map[string]cuda.FakeKernel {
	return map[string]cuda.FakeKernel{
		"gather_rows":   twinGather,
		"grouped_gemv":  twinGroupedGEMV,
		"silu_mul_rows": twinSiLUMul,
		"combine_rows":  twinCombine,
		"bf16_from_f32": twinBF16FromF32,
	}
}

func argc(args []uint64, n int, name string) error {
	if len(args) != n {
		return fmt.Errorf("%s: %d arguments, want %d", name, len(args), n)
	}
	return nil
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// twinGather: gather_rows(X, pairRow, P, nSmall, H, Xs, Xb).
func twinGather(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 7, "gather_rows"); err != nil {
		return err
	}
	P, nSmall, H := int(cuda.ArgInt32(a[2])), int(cuda.ArgInt32(a[3])), int(cuda.ArgInt32(a[4]))
	rows, err := m.Int32s(cuda.ArgPtr(a[1]), P)
	if err != nil {
		return err
	}
	for p := 0; p < P; p++ {
		src, err := m.Float32s(cuda.ArgPtr(a[0])+cuda.DevPtr(4*int(rows[p])*H), H)
		if err != nil {
			return err
		}
		if p < nSmall {
			dst, err := m.Float32s(cuda.ArgPtr(a[5])+cuda.DevPtr(4*p*H), H)
			if err != nil {
				return err
			}
			copy(dst, src)
			continue
		}
		dst, err := m.Uint16s(cuda.ArgPtr(a[6])+cuda.DevPtr(2*(p-nSmall)*H), H)
		if err != nil {
			return err
		}
		for c, v := range src {
			dst[c] = bf16(v)
		}
	}
	return nil
}

// twinGroupedGEMV: grouped_gemv(tasks, in, out, K, N), one task per block.
func twinGroupedGEMV(m *cuda.FakeMem, grid, block [3]uint32, a []uint64) error {
	if err := argc(a, 5, "grouped_gemv"); err != nil {
		return err
	}
	if block[0] != 32*gemvRowsPerBlock {
		return fmt.Errorf("grouped_gemv: block of %d threads, the kernel needs %d", block[0], 32*gemvRowsPerBlock)
	}
	K, N := int(cuda.ArgInt32(a[3])), int(cuda.ArgInt32(a[4]))
	if K%8 != 0 {
		return fmt.Errorf("grouped_gemv: K=%d is not a multiple of 8", K)
	}
	tasks, err := m.Uint64s(cuda.ArgPtr(a[0]), taskWords*int(grid[0]))
	if err != nil {
		return err
	}
	for b := 0; b < int(grid[0]); b++ {
		t := tasks[taskWords*b:]
		p0, rows, n0 := int(uint32(t[1])), int(t[1]>>32), int(t[2])
		if rows > MaxGroupRows {
			return fmt.Errorf("grouped_gemv: task of %d rows, at most %d", rows, MaxGroupRows)
		}
		for warp := 0; warp < gemvRowsPerBlock; warp++ {
			n := n0 + warp
			if n >= N {
				continue
			}
			w, err := m.Uint16s(cuda.DevPtr(t[0])+cuda.DevPtr(2*n*K), K)
			if err != nil {
				return err
			}
			for i := 0; i < rows; i++ {
				x, err := m.Float32s(cuda.ArgPtr(a[1])+cuda.DevPtr(4*(p0+i)*K), K)
				if err != nil {
					return err
				}
				// Lane l accumulates k = 8l + 256j .. +8 with fused multiply-adds; the
				// warp then sums the lanes by butterfly.
				var lanes [32]float32
				for l := 0; l < 32; l++ {
					s := float32(0)
					for k := 8 * l; k < K; k += 256 {
						for j := 0; j < 8; j++ {
							s = float32(math.FMA(float64(bf16ToF32(w[k+j])), float64(x[k+j]), float64(s)))
						}
					}
					lanes[l] = s
				}
				for off := 16; off >= 1; off /= 2 {
					var nx [32]float32
					for l := range lanes {
						nx[l] = lanes[l] + lanes[l^off]
					}
					lanes = nx
				}
				out, err := m.Float32s(cuda.ArgPtr(a[2])+cuda.DevPtr(4*((p0+i)*N+n)), 1)
				if err != nil {
					return err
				}
				out[0] = lanes[0]
			}
		}
	}
	return nil
}

// siluMul is silu(g)*u as the kernel computes it (exp through 2^x).
func siluMul(g, u float32) float32 {
	e := float32(math.Exp2(float64(-g * 1.4426950408889634)))
	return g / (1 + e) * u
}

// twinSiLUMul: silu_mul_rows(GU, P, nSmall, I, A, Ab).
func twinSiLUMul(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 6, "silu_mul_rows"); err != nil {
		return err
	}
	P, nSmall, I := int(cuda.ArgInt32(a[1])), int(cuda.ArgInt32(a[2])), int(cuda.ArgInt32(a[3]))
	gu, err := m.Float32s(cuda.ArgPtr(a[0]), P*2*I)
	if err != nil {
		return err
	}
	for p := 0; p < P; p++ {
		row := gu[p*2*I:]
		if p < nSmall {
			dst, err := m.Float32s(cuda.ArgPtr(a[4])+cuda.DevPtr(4*p*I), I)
			if err != nil {
				return err
			}
			for j := range dst {
				dst[j] = siluMul(row[j], row[I+j])
			}
			continue
		}
		dst, err := m.Uint16s(cuda.ArgPtr(a[5])+cuda.DevPtr(2*(p-nSmall)*I), I)
		if err != nil {
			return err
		}
		for j := range dst {
			dst[j] = bf16(siluMul(row[j], row[I+j]))
		}
	}
	return nil
}

// twinCombine: combine_rows(Y, pos, w, R, topK, H, out).
func twinCombine(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 7, "combine_rows"); err != nil {
		return err
	}
	R, K, H := int(cuda.ArgInt32(a[3])), int(cuda.ArgInt32(a[4])), int(cuda.ArgInt32(a[5]))
	pos, err := m.Int32s(cuda.ArgPtr(a[1]), R*K)
	if err != nil {
		return err
	}
	w, err := m.Float32s(cuda.ArgPtr(a[2]), R*K)
	if err != nil {
		return err
	}
	out, err := m.Float32s(cuda.ArgPtr(a[6]), R*H)
	if err != nil {
		return err
	}
	for r := 0; r < R; r++ {
		dst := out[r*H : (r+1)*H]
		clear(dst)
		for j := 0; j < K; j++ {
			p := pos[r*K+j]
			if p < 0 {
				continue
			}
			y, err := m.Float32s(cuda.ArgPtr(a[0])+cuda.DevPtr(4*int(p)*H), H)
			if err != nil {
				return err
			}
			wt := float64(w[r*K+j])
			for c := range dst {
				dst[c] = float32(math.FMA(wt, float64(y[c]), float64(dst[c])))
			}
		}
	}
	return nil
}

// twinBF16FromF32: bf16_from_f32(src, n (int64), dst).
func twinBF16FromF32(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 3, "bf16_from_f32"); err != nil {
		return err
	}
	n := int(int64(a[1]))
	src, err := m.Float32s(cuda.ArgPtr(a[0]), n)
	if err != nil {
		return err
	}
	dst, err := m.Uint16s(cuda.ArgPtr(a[2]), n)
	if err != nil {
		return err
	}
	for i, v := range src {
		dst[i] = bf16(v)
	}
	return nil
}

// bf16 rounds f to bfloat16 bits as the kernels' f2bf does.
func bf16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return 0x7fc0
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}
