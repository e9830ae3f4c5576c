package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- Q6_K packed in 16-row groups on AVX2: q6kx16AVX2N ----
//
// tensor.Q6Kx16's layout (see genQ6Kx16) taken as two halves of 8 rows
// (bytes 32r.. of every 64-byte line, one dword lane per row), as
// genQKx16AVX2 takes Q4_K's. Per half, value half h, sub-block kind s
// (the low nibbles of ql word q with qh bits 0-1, of ql word q+8 with bits
// 2-3, their high nibbles with bits 4-5 and 6-7: values 128h+32s+4q..) and
// word q, the 6-bit codes of 8 rows are built and multiplied with the
// input's 4 bytes broadcast by VPMADDUBSW. A pair sum is at most 2·63·127,
// so two words' sums add in int16; each two go into VPMADDWD with the
// sub-block's signed scale in both int16s of every dword, and into the
// row's int32 sum I. I starts at −32·Σ sc·(the input's 16-value sums), the
// codes' offset. I is the exact integer of every other Q6_K kernel, and
// acc += float(I)·(d·d_x) is their float32 step (q6BlockScalar).

// q6kx16AVX2MaxN is the most input rows per call.
const q6kx16AVX2MaxN = 2

func genQ6Kx16AVX2(n int) {
	name := fmt.Sprintf("q6kx16AVX2N%d", n)
	wp, idx := packedBegin(name, fmt.Sprintf("%s multiplies a 16-row group of repacked Q6_K weights with %d quantized input rows on AVX2 (see genQ6Kx16AVX2).", name, n), n)
	Pragma("noescape")
	c0F := YMM()
	VPBROADCASTD(cB0F, c0F)
	cnt, xq, xm, acc := packedLoopHead(name, n, idx, wp, q6kPrefetch, 0, true) // acc[2i+r]: input row i, weight rows 8r..8r+7
	lines := q6kx16Block/64 + 1
	for r := 0; r < 2; r++ {
		word := func(j int) Mem { return Mem{Base: wp, Disp: 32 + 64*j + 32*r} }
		// I = −32·Σ_j sc_j·(the input's 16-value sums of sub-block j), the
		// scales paired as int16 against the input's pairs of sums.
		isum := make([]VecVirtual, n)
		for p := 0; p < 8; p++ {
			pair := YMM()
			VMOVDQU(word(48+p/2), pair)
			VPSHUFB(cQ3PairY[p%2], pair, pair)
			VPSRAW(U8(8), pair, pair)
			for i := 0; i < n; i++ {
				xb := YMM()
				VPBROADCASTD(xm(i, q8xBsum16+4*p), xb)
				if p == 0 {
					isum[i] = xb
					VPMADDWD(xb, pair, isum[i])
					continue
				}
				VPMADDWD(xb, pair, xb)
				VPADDD(xb, isum[i], isum[i])
			}
		}
		for i := 0; i < n; i++ {
			negShifted256(isum[i], 5)
		}
		for h := 0; h < 2; h++ {
			for s := 0; s < 4; s++ {
				for half := 0; half < 2; half++ {
					if r == 0 {
						// The block's prefetches, spread over the first
						// row half's 16 steps (as q6kx16N spreads them).
						prefetchPart(wp, q6kPrefetch, lines, 8*h+2*s+half, 16)
					}
					// Sub-block j's signed scale in both int16s of each dword.
					j := 8*h + 2*s + half
					sc := YMM()
					VMOVDQU(word(48+j/4), sc)
					VPSHUFB(cQ3Dup[j%4], sc, sc)
					VPSRAW(U8(8), sc, sc)
					d16 := make([]VecVirtual, n)
					for qs := 0; qs < 4; qs++ {
						q := 4*half + qs
						ql := word(16*h + q + 8*(s%2))
						qh := word(32 + 8*h + q)
						code := YMM()
						if s < 2 {
							VPAND(ql, c0F, code)
						} else {
							shift256(VPSRLW, U8(4), ql, code)
							VPAND(c0F, code, code)
						}
						t := YMM()
						switch s { // qh bits 2s, 2s+1 to bits 4-5
						case 0:
							shift256(VPSLLW, U8(4), qh, t)
						case 1:
							shift256(VPSLLW, U8(2), qh, t)
						case 2:
							VMOVDQU(qh, t)
						case 3:
							shift256(VPSRLW, U8(2), qh, t)
						}
						VPAND(cB30Y, t, t)
						VPOR(t, code, code)
						for i := 0; i < n; i++ {
							p := YMM()
							VPBROADCASTD(xm(i, 128*h+32*s+4*q), p)
							VPMADDUBSW(p, code, p)
							if qs%2 == 0 {
								d16[i] = p
								continue
							}
							VPADDW(p, d16[i], d16[i])
							VPMADDWD(sc, d16[i], d16[i])
							VPADDD(d16[i], isum[i], isum[i])
						}
					}
				}
			}
		}
		dw := YMM()
		VCVTPH2PS(Mem{Base: wp, Disp: 16 * r}, dw)
		for i := 0; i < n; i++ {
			scaleStep256(VADDPS, xm(i, q8xD), dw, isum[i], acc[2*i+r])
		}
	}
	packedNextBlock(name, q6kx16Block, wp, xq, cnt)
	packedEnd(name, acc)
}
