//go:build !purego

package kernels

import "github.com/switchyard-serving/switchyard/model/tensor"

// The lattice tables of the i-quants of 1 to 3 bits, from which the
// integer kernels (q8dot512IQ*, q8dot256IQ*: internal/gen/q8iq.go,
// q8iqavx2.go) load or gather entries by symbol, and the sign vectors of
// the AVX2 ones.
var (
	iq2xxsGridQ8 [256]uint64
	iq2xsGridQ8  [512]uint64
	iq2sGridQ8   [1024]uint64
	iq3xxsGridQ8 [256]uint32
	iq3sGridQ8   [512]uint32
	iq1sGridQ8   [2048]uint64
	// iqSignVecs is the sign table as VPSIGNB operands: byte j of entry i
	// is −1 where bit j of sign index i is set, else 1.
	iqSignVecs [128]uint64
	// iq1mGridH holds IQ1_M's values plus 9, halved, for its kernels:
	// entry k + 2048·s (k an IQ1_S lattice index, s the group's delta sign
	// bit) is (w + 9)/2 = 4(g+1) + 1−s for each value g of entry k (w =
	// 8g ± 1), so that the index is the block's 11 bits with the sign bit
	// above them and the kernel does no arithmetic on the values.
	iq1mGridH [4096]uint64
)

func init() {
	iq2xxsGridQ8, iq2xsGridQ8, iq2sGridQ8, iq3xxsGridQ8, iq3sGridQ8, iq1sGridQ8 = tensor.IQGrids()
	for k, e := range iq1sGridQ8 {
		for j := range 8 {
			g := int64(int8(e >> (8 * j)))
			for s := range int64(2) {
				iq1mGridH[k+2048*int(s)] |= uint64(4*(g+1)+1-s) << (8 * j)
			}
		}
	}
	for i, s := range tensor.IQSigns() {
		for j := range 8 {
			b := uint64(0x01)
			if s>>j&1 != 0 {
				b = 0xFF
			}
			iqSignVecs[i] |= b << (8 * j)
		}
	}
}
