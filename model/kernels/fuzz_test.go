package kernels

import (
	"math/rand/v2"
	"testing"
)

// FuzzMatMul checks every supported level, on 1 and 2 threads, against
// MatMulRef for random shapes: any column count for the plain types (tails),
// row counts that are not multiples of the 4-row tile, and n = 1..70 (every
// tile height and the panel path).
//
//	go test ./model/kernels -run '^$' -fuzz FuzzMatMul -fuzztime 30s
func FuzzMatMul(f *testing.F) {
	f.Add(uint64(1), uint8(0), uint16(5), uint16(17), uint8(1))
	f.Add(uint64(2), uint8(1), uint16(13), uint16(33), uint8(7))
	f.Add(uint64(3), uint8(2), uint16(9), uint16(100), uint8(16))
	f.Add(uint64(4), uint8(3), uint16(6), uint16(3), uint8(33))
	f.Add(uint64(5), uint8(4), uint16(7), uint16(1), uint8(69))
	f.Fuzz(func(t *testing.T, seed uint64, dtSel uint8, rows16, cols16 uint16, n8 uint8) {
		dt := allDTypes[int(dtSel)%len(allDTypes)]
		rows := 1 + int(rows16)%80
		n := 1 + int(n8)%70
		var cols int
		switch dt.BlockValues() {
		case 32:
			cols = 32 * (1 + int(cols16)%12)
		case 256:
			cols = 256 * (1 + int(cols16)%3)
		default:
			cols = 1 + int(cols16)%300
		}
		rng := rand.New(rand.NewPCG(seed, uint64(rows)<<32|uint64(cols)))
		w := randMatrix(rng, dt, rows, cols)
		x := randVec(rng, n*cols)
		abs := absRef(w, x, n)
		prev := KernelLevel()
		defer SetKernelLevel(prev)
		for _, l := range SupportedLevels() {
			if l == LevelRef {
				continue
			}
			SetKernelLevel(l)
			for _, th := range []int{1, 2} {
				withThreads(th, func() { checkAgainstRef(t, w, x, n, abs) })
			}
		}
	})
}
