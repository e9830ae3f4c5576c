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
