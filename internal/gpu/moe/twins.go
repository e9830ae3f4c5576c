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
		"gather_bf16":   twinGatherBF16,
		"grouped_gemv":  twinGEMV,
		"silu_mul_rows": twinSiLUMul,
		"combine_rows":  twinCombine,
	}
}

func argc(args []uint64, n int, name string) error {
	if len(args) != n {
		return fmt.Errorf("%s: %d arguments, want %d", name, len(args), n)
	}
	return nil
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func fma32(a, b, c float32) float32 { return float32(math.FMA(float64(a), float64(b), float64(c))) }

// twinGatherBF16: gather_bf16(X, pairRow, p0, P, H, Xb).
func twinGatherBF16(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 6, "gather_bf16"); err != nil {
		return err
	}
	p0, P, H := int(cuda.ArgInt32(a[2])), int(cuda.ArgInt32(a[3])), int(cuda.ArgInt32(a[4]))
	rows, err := m.Int32s(cuda.ArgPtr(a[1]), P)
	if err != nil {
		return err
	}
	for p := p0; p < P; p++ {
		dst, err := m.Uint16s(cuda.ArgPtr(a[5])+cuda.DevPtr(2*(p-p0)*H), H)
		if err != nil {
			return err
		}
		if rows[p] < 0 {
			clear(dst)
			continue
		}
		src, err := m.Float32s(cuda.ArgPtr(a[0])+cuda.DevPtr(4*int(rows[p])*H), H)
		if err != nil {
			return err
		}
		for c, v := range src {
			dst[c] = bf16(v)
		}
	}
	return nil
}

// twinGEMV: grouped_gemv(tasks, in, pairRow, out, K, N); pairRow 0 means the
// input rows are the pairs themselves.
func twinGEMV(m *cuda.FakeMem, grid, block [3]uint32, a []uint64) error {
	if err := argc(a, 6, "grouped_gemv"); err != nil {
		return err
	}
	if block[0] != gemvThreads {
		return fmt.Errorf("grouped_gemv: block of %d threads, the kernel needs %d", block[0], gemvThreads)
	}
	in, pairRow, out := cuda.ArgPtr(a[1]), cuda.ArgPtr(a[2]), cuda.ArgPtr(a[3])
	K, N := int(cuda.ArgInt32(a[4])), int(cuda.ArgInt32(a[5]))
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
		for i := 0; i < rows; i++ {
			row := p0 + i
			if pairRow != 0 {
				pr, err := m.Int32s(pairRow+cuda.DevPtr(4*(p0+i)), 1)
				if err != nil {
					return err
				}
				row = int(pr[0])
			}
			x, err := m.Float32s(in+cuda.DevPtr(4*row*K), K)
			if err != nil {
				return err
			}
			for n := n0; n < min(n0+gemvRowsPerBlock, N); n++ {
				w, err := m.Uint16s(cuda.DevPtr(t[0])+cuda.DevPtr(2*n*K), K)
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
							s = fma32(bf16ToF32(w[k+j]), x[k+j], s)
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
				o, err := m.Float32s(out+cuda.DevPtr(4*((p0+i)*N+n)), 1)
				if err != nil {
					return err
				}
				o[0] = lanes[0]
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

// twinSiLUMul: silu_mul_rows(GU, p0, S, P, I, A, Ab).
func twinSiLUMul(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 7, "silu_mul_rows"); err != nil {
		return err
	}
	p0, S, P, I := int(cuda.ArgInt32(a[1])), int(cuda.ArgInt32(a[2])), int(cuda.ArgInt32(a[3])), int(cuda.ArgInt32(a[4]))
	for p := p0; p < P; p++ {
		gu, err := m.Float32s(cuda.ArgPtr(a[0])+cuda.DevPtr(4*p*2*I), 2*I)
		if err != nil {
			return err
		}
		if p < S {
			dst, err := m.Float32s(cuda.ArgPtr(a[5])+cuda.DevPtr(4*p*I), I)
			if err != nil {
				return err
			}
			for j := range dst {
				dst[j] = siluMul(gu[j], gu[I+j])
			}
			continue
		}
		dst, err := m.Uint16s(cuda.ArgPtr(a[6])+cuda.DevPtr(2*(p-S)*I), I)
		if err != nil {
			return err
		}
		for j := range dst {
			dst[j] = bf16(siluMul(gu[j], gu[I+j]))
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
				dst[c] = fma32(float32(wt), y[c], dst[c])
			}
		}
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
