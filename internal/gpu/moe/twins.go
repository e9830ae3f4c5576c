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
		"gemv_up":       func(m *cuda.FakeMem, g, b [3]uint32, a []uint64) error { return twinGEMV(m, g, b, a, false) },
		"gemv_down":     func(m *cuda.FakeMem, g, b [3]uint32, a []uint64) error { return twinGEMV(m, g, b, a, true) },
		"silu_mul_bf16": twinSiLUMulBF16,
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
		src, err := m.Float32s(cuda.ArgPtr(a[0])+cuda.DevPtr(4*int(rows[p])*H), H)
		if err != nil {
			return err
		}
		dst, err := m.Uint16s(cuda.ArgPtr(a[5])+cuda.DevPtr(2*(p-p0)*H), H)
		if err != nil {
			return err
		}
		for c, v := range src {
			dst[c] = bf16(v)
		}
	}
	return nil
}

// twinGEMV: gemv_up(tasks, X, pairRow, GU, K, N) and gemv_down(tasks, GU, Y, K, N).
func twinGEMV(m *cuda.FakeMem, grid, block [3]uint32, a []uint64, down bool) error {
	name, nargs := "gemv_up", 6
	if down {
		name, nargs = "gemv_down", 5
	}
	if err := argc(a, nargs, name); err != nil {
		return err
	}
	if block[0] != gemvThreads {
		return fmt.Errorf("%s: block of %d threads, the kernel needs %d", name, block[0], gemvThreads)
	}
	in, out := cuda.ArgPtr(a[1]), cuda.ArgPtr(a[nargs-3])
	K, N := int(cuda.ArgInt32(a[nargs-2])), int(cuda.ArgInt32(a[nargs-1]))
	if K%8 != 0 {
		return fmt.Errorf("%s: K=%d is not a multiple of 8", name, K)
	}
	tasks, err := m.Uint64s(cuda.ArgPtr(a[0]), taskWords*int(grid[0]))
	if err != nil {
		return err
	}
	x := make([]float32, K)
	for b := 0; b < int(grid[0]); b++ {
		t := tasks[taskWords*b:]
		p0, rows, n0 := int(uint32(t[1])), int(t[1]>>32), int(t[2])
		if rows > MaxGroupRows {
			return fmt.Errorf("%s: task of %d rows, at most %d", name, rows, MaxGroupRows)
		}
		for i := 0; i < rows; i++ {
			// The task's input row i, as the kernel forms it.
			if down {
				g, err := m.Float32s(in+cuda.DevPtr(4*(p0+i)*2*K), 2*K)
				if err != nil {
					return err
				}
				for k := range x {
					x[k] = siluMul(g[k], g[K+k])
				}
			} else {
				pr, err := m.Int32s(cuda.ArgPtr(a[2])+cuda.DevPtr(4*(p0+i)), 1)
				if err != nil {
					return err
				}
				src, err := m.Float32s(in+cuda.DevPtr(4*int(pr[0])*K), K)
				if err != nil {
					return err
				}
				copy(x, src)
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

// twinSiLUMulBF16: silu_mul_bf16(GU, p0, P, I, Ab).
func twinSiLUMulBF16(m *cuda.FakeMem, _, _ [3]uint32, a []uint64) error {
	if err := argc(a, 5, "silu_mul_bf16"); err != nil {
		return err
	}
	p0, P, I := int(cuda.ArgInt32(a[1])), int(cuda.ArgInt32(a[2])), int(cuda.ArgInt32(a[3]))
	if P <= p0 {
		return nil
	}
	gu, err := m.Float32s(cuda.ArgPtr(a[0])+cuda.DevPtr(4*p0*2*I), (P-p0)*2*I)
	if err != nil {
		return err
	}
	dst, err := m.Uint16s(cuda.ArgPtr(a[4]), (P-p0)*I)
	if err != nil {
		return err
	}
	for q := 0; q < P-p0; q++ {
		row := gu[q*2*I:]
		for j := 0; j < I; j++ {
			dst[q*I+j] = bf16(siluMul(row[j], row[I+j]))
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
