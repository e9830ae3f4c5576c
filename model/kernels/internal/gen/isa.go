package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// isa describes one vector flavour.
type isa struct {
	name  string // function name infix: "512" or "256"
	lanes int    // float32 lanes per vector
	z     bool   // AVX-512 (zmm, opmasks, embedded broadcast, 32 registers)
	maxN  int    // largest tile height (input rows per tile call)
}

var (
	isa512 = isa{name: "512", lanes: 16, z: true, maxN: 6}
	isa256 = isa{name: "256", lanes: 8, z: false, maxN: 2}
)

// maxN is the largest tile height generated for a dtype.
func maxN(s isa, d dtype) int {
	if s.z && d == dQ4K {
		return 4 // the lookup tables take 8 registers
	}
	return s.maxN
}

func (s isa) vec() VecVirtual {
	if s.z {
		return ZMM()
	}
	return YMM()
}

func (s isa) vbytes() int { return 4 * s.lanes }

// Constant tables shared by the kernels.
var (
	cBF16Hi  Mem // dword 0xFFFF0000: keeps the odd bf16 of each dword
	cNib     Mem // dword 0x0000000F
	cRedIdx  Mem // VPERMPS index picking element 0 of each 128-bit lane
	cQ4ShP   Mem // 16 bytes: per-dword shift counts 0,0,0,4
	cQ4ShQ   Mem // 16 bytes: 0,2,0,2
	cQ4MaskP Mem // 16 bytes: 3f3f3f3f,0f0f0f0f,3f3f3f3f,0f0f0f0f
	cQ4MaskQ Mem // 16 bytes: 0,30303030,0,30303030
	cQ4DDIdx Mem // 64 bytes: 0 x8, 1 x8 (VPERMPS index: d for scales, dmin for mins)
	cIota    Mem // float32 0, 1, ..., 15
	cD3      Mem // dword 3
	cD8      Mem // dword 8
	cD16     Mem // dword 16 (0x10)
	cD30     Mem // dword 0x30
	cD32     Mem // dword 32
	cF32     Mem // float32 32
	cIQ4     Mem // float32 IQ4_NL codebook (16 values)
	cXSShl   Mem // 8 dwords 0,4,...,28: nibble shifts of the IQ4_XS low scale bits
	cXSShh   Mem // 8 dwords 0,2,...,14: shifts of the IQ4_XS high scale bits
	cD4      Mem // dword 4
	cF4      Mem // float32 4
	cQ3Sh0   Mem // 8 dwords: bit offsets of the high bits of Q3_K scales 0..7
	cQ3Sh1   Mem // 8 dwords: bit offsets of the high bits of Q3_K scales 8..15
)

func data32(name string, vals ...uint32) Mem {
	m := GLOBL(name, RODATA|NOPTR)
	for i, v := range vals {
		DATA(4*i, U32(v))
	}
	return m
}

func rep(v uint32, n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func genConsts() {
	cBF16Hi = data32("bf16hi", 0xFFFF0000)
	cNib = data32("nibmask", 0x0F)
	var iota []uint32
	for i := 0; i < 16; i++ {
		iota = append(iota, math.Float32bits(float32(i)))
	}
	cIota = data32("iotaf32", iota...)
	cRedIdx = data32("redidx", 0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	cQ4ShP = data32("q4shp", 0, 0, 0, 4)
	cQ4ShQ = data32("q4shq", 0, 2, 0, 2)
	cQ4MaskP = data32("q4maskp", 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f)
	cQ4MaskQ = data32("q4maskq", 0, 0x30303030, 0, 0x30303030)
	cQ4DDIdx = data32("q4ddidx", append(rep(0, 8), rep(1, 8)...)...)
	cD3 = data32("dword3", 3)
	cD8 = data32("dword8", 8)
	cD16 = data32("dword16", 16)
	cD30 = data32("dword48", 0x30)
	cD32 = data32("dword32", 32)
	cF32 = data32("float32v32", math.Float32bits(32))
	var iq4 []uint32
	for _, v := range []int{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113} {
		iq4 = append(iq4, math.Float32bits(float32(v)))
	}
	cIQ4 = data32("iq4nlf32", iq4...)
	cXSShl = data32("iq4xsshl", 0, 4, 8, 12, 16, 20, 24, 28)
	cXSShh = data32("iq4xsshh", 0, 2, 4, 6, 8, 10, 12, 14)
	cD4 = data32("dword4", 4)
	cF4 = data32("float32v4", math.Float32bits(4))
	cQ3Sh0 = data32("q3sh0", 0, 8, 16, 24, 2, 10, 18, 26)
	cQ3Sh1 = data32("q3sh1", 4, 12, 20, 28, 6, 14, 22, 30)
}

func fname(base string, s isa, suffix string) string {
	return fmt.Sprintf("%s%s%s", base, s.name, suffix)
}

// ld loads an integer or pointer parameter into a new 64-bit register.
func ld(name string) GPVirtual {
	r := GP64()
	Load(Param(name), r)
	return r
}

// paddr is the memory operand of a parameter.
func paddr(name string) Mem {
	b, err := Param(name).Resolve()
	if err != nil {
		panic(err)
	}
	return b.Addr
}
