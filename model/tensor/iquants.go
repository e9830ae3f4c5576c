package tensor

// The i-quants of 1 to 3 bits (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S,
// IQ1_S, IQ1_M): llama.cpp's lattice codes, which unsloth's "UD-IQ" and
// IBM's low-bit Granite files use for the routed experts. Every block holds
// 256 values in 8 sub-blocks of 32; each group of 8 (IQ3: 4) values is one
// index into a lattice table (iqgrids.go, measured from llama.cpp's own
// decoding by scripts/llamacpp-golden/iq_grids.c) and, for the IQ2/IQ3
// types, 8 sign bits. The values are integers times a per-sub-block scale:
//
//	type    bytes  layout (byte offsets)                                          value
//	IQ2_XXS   66   d @0; per sub-block ib, 4 index bytes @2+8ib and a u32 @6+8ib  d·(2s+1)/8·g·±1
//	               of four 7-bit sign indices (iqSigns) and the 4-bit scale s (bits 28..31)
//	IQ2_XS    74   d @0; 32 u16 @2 (9-bit index, 7-bit sign index); 8 bytes of    d·(2s+1)/8·g·±1
//	               two 4-bit scales @66 (low nibble: the sub-block's first 16 values)
//	IQ2_S     82   d @0; 32 low index bytes @2; 32 sign bytes @34; qh[8] @66 (two  d·(2s+1)/8·g·±1
//	               high index bits per group); scales @74 as IQ2_XS
//	IQ3_XXS   98   d @0; 64 index bytes @2 (one per 4 values); 8 u32 @66 as        d·(2s+1)/4·g·±1
//	               IQ2_XXS's signs and scale
//	IQ3_S    110   d @0; 64 low index bytes @2; qh[8] @66 (9th bits); 32 sign     d·(2s+1)·g·±1
//	               bytes @74; 4 bytes of two 4-bit scales @106 (one per 32 values)
//	IQ1_S     50   d @0; 32 low index bytes @2; 8 u16 qh @34 (3 high bits per     d·(2s+1)·(g ± 1/8)
//	               group, the scale s in bits 12..14, the sign of 1/8 in bit 15)
//	IQ1_M     56   32 low index bytes @0; qh[16] @32 (per group of 8, 3 high bits  d·(2s+1)·(g ± 1/8)
//	               and the sign of 1/8); 4 u16 @48: 3-bit scales per 16 values, d
//	               (f16) in their top nibbles
//
// g is a lattice entry's value: IQ2 magnitudes 8, 25 or 43; IQ3_XXS 4..62;
// IQ3_S 1..15; IQ1 −1, 0 or 1.

// dequantIQ returns the reference decoding of an i-quant type: the block's
// integer form (IQInts) turned into the float32 values llama.cpp's
// dequantize_row_* computes, with its operations in its order (each
// rounding on its own): for the IQ2 types db = d·(ls/2)·1/4 (llama.cpp's
// d·(0.5+s)·0.25: ls/2 = 0.5+s exactly), for IQ3_XXS d·(ls/2)·1/2, then
// db·|w| with w's sign; for IQ3_S d·ls·|w|; for IQ1_S and IQ1_M
// (d·ls)·(w/8), w/8 being g ± 1/8 exactly. TestGoldenLlamaCpp checks the
// bits.
func dequantIQ(dt DType) func(blk []byte, y []float32) {
	return func(blk []byte, y []float32) {
		var w [256]int8
		var ls [16]int32
		d, _ := IQInts(dt, blk, &w, &ls)
		for j := range 256 {
			l := float32(ls[j/16])
			switch dt {
			case IQ1_S, IQ1_M:
				y[j] = mul(mul(d, l), float32(w[j])*0.125)
				continue
			}
			var db float32
			switch dt {
			case IQ3_XXS:
				db = mul(mul(d, l*0.5), 0.5)
			case IQ3_S:
				db = mul(d, l)
			default:
				db = mul(mul(d, l*0.5), 0.25)
			}
			v := w[j]
			if v < 0 {
				y[j] = -mul(db, float32(-v))
			} else {
				y[j] = mul(db, float32(v))
			}
		}
	}
}

// IQ2SIndex is the lattice index of group l (0..3) of sub-block ib of an
// IQ2_S block.
func IQ2SIndex(blk []byte, ib, l int) int {
	return int(blk[2+4*ib+l]) | int(blk[66+ib])<<(8-2*l)&0x300
}

// IQ3SIndex is the lattice index of group p (0..63, 4 values each) of an
// IQ3_S block.
func IQ3SIndex(blk []byte, p int) int {
	return int(blk[2+p]) | int(blk[66+p/8]>>(p%8)&1)<<8
}

// IQ1MScale is the f16 scale of an IQ1_M block, kept in the top nibbles of
// its four u16 scale words.
func IQ1MScale(blk []byte) uint16 {
	sc := blk[48:56]
	return le16(sc)>>12 | le16(sc[2:])>>8&0x00F0 | le16(sc[4:])>>4&0x0F00 | le16(sc[6:])&0xF000
}

// IQInts decodes a block of an i-quant of 1 to 3 bits (IQ2_XXS ... IQ1_M)
// into integers: value j of the block is d·k·ls[j/16]·w[j], with w the
// signed lattice values (IQ1_S, IQ1_M: 8g ± 1, the 1/8 offset times 8),
// ls the odd sub-block scales and k a power of two (1/8 for the IQ2 and IQ1
// types, 1/4 for IQ3_XXS, 1 for IQ3_S). The integer kernels compute with
// this form (exact integer sums, then d·k). It panics on other types.
func IQInts(dt DType, blk []byte, w *[256]int8, ls *[16]int32) (d, k float32) {
	put := func(j int, g uint64, signs uint8) {
		for i := range 8 {
			v := int8(uint8(g >> (8 * i)))
			if signs>>i&1 != 0 {
				v = -v
			}
			w[j+i] = v
		}
	}
	iq1 := func(j int, g uint64, neg bool) {
		for i := range 8 {
			v := 8 * int8(uint8(g>>(8*i)))
			if neg {
				v--
			} else {
				v++
			}
			w[j+i] = v
		}
	}
	switch dt {
	case IQ2_XXS, IQ3_XXS:
		for ib := range 8 {
			var aux uint32
			if dt == IQ2_XXS {
				aux = le32(blk[6+8*ib:])
			} else {
				aux = le32(blk[66+4*ib:])
			}
			ls[2*ib], ls[2*ib+1] = int32(2*(aux>>28)+1), int32(2*(aux>>28)+1)
			for l := range 4 {
				var g uint64
				if dt == IQ2_XXS {
					g = iq2xxsGrid[blk[2+8*ib+l]]
				} else {
					g = uint64(iq3xxsGrid[blk[2+8*ib+2*l]]) | uint64(iq3xxsGrid[blk[2+8*ib+2*l+1]])<<32
				}
				put(32*ib+8*l, g, iqSigns[aux>>(7*l)&127])
			}
		}
		k = 0.125
		if dt == IQ3_XXS {
			k = 0.25
		}
		return F16ToF32(le16(blk)), k
	case IQ2_XS, IQ2_S:
		sc := blk[66:]
		if dt == IQ2_S {
			sc = blk[74:]
		}
		for ib := range 8 {
			ls[2*ib], ls[2*ib+1] = 2*int32(sc[ib]&15)+1, 2*int32(sc[ib]>>4)+1
			for l := range 4 {
				if dt == IQ2_XS {
					q := le16(blk[2+8*ib+2*l:])
					put(32*ib+8*l, iq2xsGrid[q&511], iqSigns[q>>9])
				} else {
					put(32*ib+8*l, iq2sGrid[IQ2SIndex(blk, ib, l)], blk[34+4*ib+l])
				}
			}
		}
		return F16ToF32(le16(blk)), 0.125
	case IQ3_S:
		for ib := range 8 {
			s := 2*int32(blk[106+ib/2]>>(4*(ib%2))&15) + 1
			ls[2*ib], ls[2*ib+1] = s, s
			for l := range 4 {
				p := 8*ib + 2*l
				g := uint64(iq3sGrid[IQ3SIndex(blk, p)]) | uint64(iq3sGrid[IQ3SIndex(blk, p+1)])<<32
				put(32*ib+8*l, g, blk[74+4*ib+l])
			}
		}
		return F16ToF32(le16(blk)), 1
	case IQ1_S:
		for ib := range 8 {
			qh := le16(blk[34+2*ib:])
			s := 2*int32(qh>>12&7) + 1
			ls[2*ib], ls[2*ib+1] = s, s
			for l := range 4 {
				iq1(32*ib+8*l, iq1sGrid[int(blk[2+4*ib+l])|int(qh>>(3*l)&7)<<8], qh&0x8000 != 0)
			}
		}
		return F16ToF32(le16(blk)), 0.125
	case IQ1_M:
		for t := range 16 {
			ls[t] = 2*int32(le16(blk[48+2*(t/4):])>>(3*(t%4))&7) + 1
		}
		for ib := range 8 {
			for l := range 4 {
				h := blk[32+2*ib+l/2] >> (4 * (l % 2))
				iq1(32*ib+8*l, iq1sGrid[int(blk[4*ib+l])|int(h&7)<<8], h&8 != 0)
			}
		}
		return F16ToF32(IQ1MScale(blk)), 0.125
	}
	panic("tensor: IQInts of a type other than the i-quants of 1 to 3 bits") // not dt.String(): layouts uses IQInts
}

// IsIQLattice reports whether dt is one of the i-quants of 1 to 3 bits
// (IQInts' types).
func IsIQLattice(dt DType) bool { return dt >= IQ2_XXS && dt <= IQ1_M }

// IQGrids returns copies of the lattice tables (for kernels that keep
// their own): IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S and IQ1_S/IQ1_M's,
// each entry's values as bytes, the first value lowest.
func IQGrids() (iq2xxs [256]uint64, iq2xs [512]uint64, iq2s [1024]uint64, iq3xxs [256]uint32, iq3s [512]uint32, iq1s [2048]uint64) {
	return iq2xxsGrid, iq2xsGrid, iq2sGrid, iq3xxsGrid, iq3sGrid, iq1sGrid
}

// IQSigns returns a copy of the table of 7-bit sign indices (IQ2_XXS,
// IQ2_XS, IQ3_XXS): entry i's bit j set means value j of the group is
// negative.
func IQSigns() [128]uint8 { return iqSigns }
