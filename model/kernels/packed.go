package kernels

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Weights repacked in groups of 16 rows (tensor.Q80x16, Q4Kx16, Q5Kx16,
// Q6Kx16, Q3Kx16, Q2Kx16, IQ4XSx16, Q40x16, IQ4NLx16, Q50x16, Q41x16,
// Q51x16, MXFP4x16).
//
// The row-major integer kernels walk each row on its own and must reduce
// every block's partial sums across a register before scaling them:
// q80rows512 spends about 75 instructions per 16 blocks of a Q8_0 row on
// that (30-33 GB/s on an LM-head-sized product at one thread, against 42-45
// GB/s for a plain read), and the Q4_K kernels decode each row's scales and
// reduce each block on their own (25 GB/s). Repacked, a block of 16 rows
// holds their scales and then each 4-byte word of the 16 rows side by side,
// so one VPDPBUSD multiplies 64 weight bytes with the input's 4 bytes
// broadcast, the lanes being the weight rows, with nothing to reduce, and
// the scales of 16 rows are decoded at once. The packed kernels (q80x16N,
// q4kx16N, q5kx16N, q6kx16N, q3kx16N, q2kx16N, iq4xsx16N, q40x16N,
// iq4nlx16N, q50x16N, q41x16N, q51x16N) take the
// float32 steps per (row, block) of the row-major kernels (matMulQ80Ref,
// dotQ81Ref, q8BlockScalar, q6BlockScalar), so the results are the same bits
// (TestPackedMatchesRowMajor), for any number of input rows.
//
// The hybrid loader packs matrices when it copies weights into memory (the
// default; not when it reads the file's map) and the CPU has the kernels.
// Products with packed weights on another kernel level, without 8-bit
// activations, or with an input row holding an infinity or a NaN unpack
// each group to row-major rows and run the row-major path on them (slower,
// same results).

// EnvPack names the environment variable that chooses which types CanPack
// packs: a comma-separated list of dtypes (q8_0, q4_k, q5_k, q6_k, q3_k,
// q2_k, iq4_xs, q4_0, q5_0, iq4_nl, q4_1, q5_1, mxfp4; the
// default is all those with packed kernels at the kernel level, but for
// q5_k and q6_k on AVX2, which are packed there only when listed:
// packOnlyAsked), or
// 0 for none (for comparisons).
const EnvPack = "SWITCHYARD_PACK"

// packOff[dt]: EnvPack leaves dt row-major; packAsked[dt]: EnvPack names
// dt.
var packOff, packAsked [tensor.NumDTypes]bool

// packOnlyAsked[dt]: at the AVX2 level dt is packed only when EnvPack names
// it. Q5_K's packed AVX2 kernel gave +16% prefill 128 but 5-12% slower
// one-session decode on the Q5_K_M model (bench --threads 1, two alternated
// runs each), and decode is what a session feels. Q6_K's (q6kx16AVX2N,
// session 26) is level with the row-major kernel at one input row
// (BenchmarkPacked, in_proj 373-379 against 367-383 µs) and 10-30% faster
// at four (831/826 against 923/960 µs; an expert's 68/62 against 96/73),
// but one-thread decode of the Q4_K_M model measured 73.3/78.9/71.6
// against 75.7/77.8/77.5 tokens/s and prefill 128 +3% (three alternated
// pairs, SWITCHYARD_PACK=q4_k,q6_k against q4_k).
var packOnlyAsked = [tensor.NumDTypes]bool{tensor.Q5_K: true, tensor.Q6_K: true}

func init() {
	v, ok := os.LookupEnv(EnvPack)
	if !ok {
		return
	}
	for i := range packSpecs {
		packOff[packSpecs[i].dt] = true
	}
	for _, name := range strings.Split(v, ",") {
		name = strings.TrimSpace(name)
		known := name == "" || name == "0"
		for i := range packSpecs {
			if strings.EqualFold(name, packSpecs[i].dt.String()) {
				packOff[packSpecs[i].dt] = false
				packAsked[packSpecs[i].dt] = true
				known = true
			}
		}
		if !known {
			fmt.Fprintf(os.Stderr, "kernels: %s: %q is not a type that can be packed (q8_0, q4_k, q5_k, q6_k, q3_k, q2_k, iq4_xs, q4_0, q5_0, iq4_nl, q4_1, q5_1, mxfp4); ignored\n", EnvPack, name)
		}
	}
}

// packRows is the number of rows in a packed group.
const packRows = 16

// packedFn is the signature of the packed kernels: groups consecutive
// 16-row groups against the kernel's input rows (xstride bytes apart),
// group g's results for input row i at out + i·ostride + 64·g bytes.
type packedFn func(w *byte, groups, nblocks int, xq *byte, xstride int, out *float32, ostride int)

// packSpec describes how a layout rearranges one block of a group's 16
// rows: each row's 2-byte fields at halves go to 32·f + 2r, its 1-byte
// fields at singles after them to 32·len(halves) + 16·f + r, then the
// row's nwords words (4 bytes from words on) to wordBase() + 64j + 4r,
// xored with xor. Every layout keeps the block's size: 16 row blocks in,
// one group block out.
type packSpec struct {
	dt      tensor.DType
	layout  tensor.Layout
	bytes   int   // one row's block
	halves  []int // offsets of the 2-byte fields
	singles []int // offsets of the 1-byte fields (MXFP4's E8M0 scale)
	words   int   // offset of the first word
	nwords  int
	xor     uint32
}

// wordBase is the offset of the words in a group's block.
func (s *packSpec) wordBase() int { return 32*len(s.halves) + 16*len(s.singles) }

// packFields copies row r's 2- and 1-byte fields from its block src to the
// group block blk (zeros for a padding row: src nil).
func (s *packSpec) packFields(blk, src []byte, r int) {
	for f, off := range s.halves {
		if src == nil {
			blk[32*f+2*r], blk[32*f+2*r+1] = 0, 0
			continue
		}
		blk[32*f+2*r], blk[32*f+2*r+1] = src[off], src[off+1]
	}
	for f, off := range s.singles {
		i := 32*len(s.halves) + 16*f + r
		if src == nil {
			blk[i] = 0
			continue
		}
		blk[i] = src[off]
	}
}

// unpackFields copies row r's 2- and 1-byte fields from the group block blk
// back to its block out.
func (s *packSpec) unpackFields(out, blk []byte, r int) {
	for f, off := range s.halves {
		out[off], out[off+1] = blk[32*f+2*r], blk[32*f+2*r+1]
	}
	for f, off := range s.singles {
		out[off] = blk[32*len(s.halves)+16*f+r]
	}
}

var packSpecs = [...]packSpec{
	// Q8_0: d; the 32 values as q+128 (unsigned, for VPDPBUSD).
	{dt: tensor.Q8_0, layout: tensor.Q80x16, bytes: tensor.Q8_0BlockBytes, halves: []int{0}, words: 2, nwords: 8, xor: 0x80808080},
	// Q4_K: d, dmin; the 12 bytes of scales and mins, then the nibbles.
	{dt: tensor.Q4_K, layout: tensor.Q4Kx16, bytes: 144, halves: []int{0, 2}, words: 4, nwords: 35},
	// Q5_K: d, dmin; the scales and mins, the fifth bits, the nibbles.
	{dt: tensor.Q5_K, layout: tensor.Q5Kx16, bytes: 176, halves: []int{0, 2}, words: 4, nwords: 43},
	// Q6_K: d (at the block's end); ql, qh, the scales.
	{dt: tensor.Q6_K, layout: tensor.Q6Kx16, bytes: 210, halves: []int{208}, words: 0, nwords: 52},
	// Q4_0 and IQ4_NL: d; the 16 bytes of nibbles.
	{dt: tensor.Q4_0, layout: tensor.Q40x16, bytes: 18, halves: []int{0}, words: 2, nwords: 4},
	{dt: tensor.IQ4_NL, layout: tensor.IQ4NLx16, bytes: 18, halves: []int{0}, words: 2, nwords: 4},
	// Q5_0: d; the fifth bits, the 16 bytes of nibbles.
	{dt: tensor.Q5_0, layout: tensor.Q50x16, bytes: 22, halves: []int{0}, words: 2, nwords: 5},
	// Q3_K: d (at the block's end); hmask, the 2-bit fields, the scales.
	{dt: tensor.Q3_K, layout: tensor.Q3Kx16, bytes: 110, halves: []int{108}, words: 0, nwords: 27},
	// Q2_K: d, dmin (at the block's end); the scales and mins, the 2-bit fields.
	{dt: tensor.Q2_K, layout: tensor.Q2Kx16, bytes: 84, halves: []int{80, 82}, words: 0, nwords: 20},
	// IQ4_XS: d, scales_h; scales_l, the nibbles.
	{dt: tensor.IQ4_XS, layout: tensor.IQ4XSx16, bytes: 136, halves: []int{0, 2}, words: 4, nwords: 33},
	// Q4_1: d, m; the 16 bytes of nibbles. Q5_1: d, m; the fifth bits, the nibbles.
	{dt: tensor.Q4_1, layout: tensor.Q41x16, bytes: 20, halves: []int{0, 2}, words: 4, nwords: 4},
	{dt: tensor.Q5_1, layout: tensor.Q51x16, bytes: 24, halves: []int{0, 2}, words: 4, nwords: 5},
	// MXFP4: the E8M0 scale byte; the 16 bytes of nibbles.
	{dt: tensor.MXFP4, layout: tensor.MXFP4x16, bytes: 17, singles: []int{0}, words: 1, nwords: 4},
}

// specOf returns the packing of dtype dt or layout l (whichever is set).
func specOf(dt tensor.DType, l tensor.Layout) *packSpec {
	for i := range packSpecs {
		if s := &packSpecs[i]; (l != tensor.RowMajor && s.layout == l) || (l == tensor.RowMajor && s.dt == dt) {
			return s
		}
	}
	return nil
}

// groupBytes is the size of one block of a packed group.
func (s *packSpec) groupBytes() int { return packRows * s.bytes }

// PackedBytes is the size of a [rows, cols] matrix of dtype dt packed
// (Pack), 0 if dt has no packed layout.
func PackedBytes(dt tensor.DType, rows, cols int) int {
	s := specOf(dt, tensor.RowMajor)
	if s == nil {
		return 0
	}
	return (rows + packRows - 1) / packRows * (cols / dt.BlockValues()) * s.groupBytes()
}

// CanPack reports whether w is a row-major matrix that this CPU multiplies
// faster packed (Pack): a type of packSpecs, with the kernels for it
// at the current kernel level and 8-bit activations on (else a packed
// matrix would be unpacked for every product), unless EnvPack says
// otherwise.
func CanPack(w tensor.Matrix) bool {
	s := specOf(w.DType, tensor.RowMajor)
	lvl := KernelLevel()
	if s == nil || packOff[w.DType] || (lvl < LevelAVX512 && packOnlyAsked[w.DType] && !packAsked[w.DType]) {
		return false
	}
	return w.Layout == tensor.RowMajor && w.Rows > 0 && w.Cols > 0 &&
		w.Cols%w.DType.BlockValues() == 0 &&
		hasPackedKernels(w.DType) && packedFast(s.layout, lvl)
}

// Pack packs the row-major matrix w (CanPack's types) into dst
// (PackedBytes(w.DType, w.Rows, w.Cols) bytes) and returns the packed
// matrix, which aliases dst. Large matrices are packed on several
// goroutines.
func Pack(dst []byte, w tensor.Matrix) tensor.Matrix {
	s := specOf(w.DType, tensor.RowMajor)
	if s == nil || w.Layout != tensor.RowMajor {
		panic("kernels: Pack of a " + w.DType.String() + " matrix in layout " + w.Layout.String())
	}
	dst = dst[:PackedBytes(w.DType, w.Rows, w.Cols)]
	groups := (w.Rows + packRows - 1) / packRows
	parts := min(runtime.GOMAXPROCS(0), w.Bytes()/(1<<20)) // at least ~1 MiB each
	if parts <= 1 {
		s.packGroups(dst, w, 0, groups)
	} else {
		var wg sync.WaitGroup
		for p := range parts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.packGroups(dst, w, p*groups/parts, (p+1)*groups/parts)
			}()
		}
		wg.Wait()
	}
	return tensor.Matrix{DType: w.DType, Rows: w.Rows, Cols: w.Cols, Data: dst, Layout: s.layout}
}

// packGroups packs groups [g0, g1) of w into dst.
func (s *packSpec) packGroups(dst []byte, w tensor.Matrix, g0, g1 int) {
	nb := w.Cols / w.DType.BlockValues()
	rb := w.RowStride()
	gb := s.groupBytes()
	wbase := s.wordBase()
	nw := s.nwords
	if s.words+4*nw > s.bytes || wbase+64*(nw-1)+4*packRows > gb {
		panic("kernels: inconsistent packSpec for " + s.dt.String())
	}
	for g := g0; g < g1; g++ {
		gdst := dst[g*nb*gb : (g+1)*nb*gb]
		// Row by row, each read front to back; the words go to their
		// group block, 64 bytes apart (the checks above and the slicing of
		// gdst and src bound every access through dp and sp).
		for r := 0; r < packRows; r++ {
			row := g*packRows + r
			for b := 0; b < nb; b++ {
				blk := gdst[b*gb : (b+1)*gb]
				dp := unsafe.Pointer(&blk[wbase+4*r])
				if row >= w.Rows {
					// Padding rows: scales 0, values 0.
					s.packFields(blk, nil, r)
					for j := 0; j < nw; j++ {
						binary.LittleEndian.PutUint32((*[4]byte)(unsafe.Add(dp, 64*j))[:], s.xor)
					}
					continue
				}
				src := w.Data[row*rb+b*s.bytes : row*rb+(b+1)*s.bytes]
				s.packFields(blk, src, r)
				sp := unsafe.Pointer(&src[s.words])
				// 4-byte arrays (alignment 1: no misaligned pointer for
				// checkptr); the checks above bound every access.
				if s.xor == 0 {
					for j := 0; j < nw; j++ {
						*(*[4]byte)(unsafe.Add(dp, 64*j)) = *(*[4]byte)(unsafe.Add(sp, 4*j))
					}
					continue
				}
				for j := 0; j < nw; j++ {
					a := *(*[4]byte)(unsafe.Add(sp, 4*j))
					binary.LittleEndian.PutUint32(a[:], binary.LittleEndian.Uint32(a[:])^s.xor)
					*(*[4]byte)(unsafe.Add(dp, 64*j)) = a
				}
			}
		}
	}
}

// unpackRow writes row r of the packed w to dst (w.RowStride() bytes) in
// row-major blocks.
func (s *packSpec) unpackRow(dst []byte, w tensor.Matrix, r int) {
	nb := w.Cols / w.DType.BlockValues()
	gb := s.groupBytes()
	wbase := s.wordBase()
	nw := s.nwords
	g, i := r/packRows, r%packRows
	for b := 0; b < nb; b++ {
		blk := w.Data[(g*nb+b)*gb : (g*nb+b+1)*gb]
		out := dst[b*s.bytes : (b+1)*s.bytes]
		s.unpackFields(out, blk, i)
		for j := 0; j < nw; j++ {
			binary.LittleEndian.PutUint32(out[s.words+4*j:], binary.LittleEndian.Uint32(blk[wbase+64*j+4*i:])^s.xor)
		}
	}
}

// unpackGroup writes rows [g·16, g·16+16) of the packed w (fewer in the
// last group) to dst in row-major blocks and returns how many it wrote.
func (s *packSpec) unpackGroup(dst []byte, w tensor.Matrix, g int) int {
	rb := w.RowStride()
	rows := min(packRows, w.Rows-g*packRows)
	for r := 0; r < rows; r++ {
		s.unpackRow(dst[r*rb:(r+1)*rb], w, g*packRows+r)
	}
	return rows
}

// PackedRow copies row r of the packed matrix w to dst (w.RowStride()
// bytes) as its row-major layout holds it.
func PackedRow(dst []byte, w tensor.Matrix, r int) {
	s := specOf(w.DType, w.Layout)
	if s == nil || w.Layout == tensor.RowMajor || r < 0 || r >= w.Rows {
		panic(fmt.Sprintf("kernels: PackedRow of row %d of a %d-row %v matrix in layout %v", r, w.Rows, w.DType, w.Layout))
	}
	s.unpackRow(dst[:w.RowStride()], w, r)
}

// SetPackedRow writes row r of the packed matrix w from src, the row's
// blocks as its row-major layout holds them: a matrix that grows a row at a
// time in a packed layout (a Q8_0 KV cache's keys, packed so that the
// packed kernels score every query head of a KV head in one pass).
func SetPackedRow(w tensor.Matrix, r int, src []byte) {
	s := specOf(w.DType, w.Layout)
	if s == nil || w.Layout == tensor.RowMajor || r < 0 || r >= w.Rows {
		panic(fmt.Sprintf("kernels: SetPackedRow of row %d of a %d-row %v matrix in layout %v", r, w.Rows, w.DType, w.Layout))
	}
	src = src[:w.RowStride()]
	nb := w.Cols / w.DType.BlockValues()
	g, i := r/packRows, r%packRows
	gb := s.groupBytes()
	wbase := s.wordBase()
	for b := 0; b < nb; b++ {
		blk, in := w.Data[(g*nb+b)*gb:(g*nb+b+1)*gb], src[b*s.bytes:(b+1)*s.bytes]
		s.packFields(blk, in, i)
		for j := 0; j < s.nwords; j++ {
			v := binary.LittleEndian.Uint32(in[s.words+4*j:]) ^ s.xor
			binary.LittleEndian.PutUint32(blk[wbase+4*i+64*j:], v)
		}
	}
}

// DequantizeMatrixRow writes row r of w, in any layout, as float32 to dst
// (w.Cols values): for lookups in a weight matrix (embeddings).
func DequantizeMatrixRow(w tensor.Matrix, r int, dst []float32) {
	if w.Layout == tensor.RowMajor {
		tensor.DequantizeRow(w.DType, w.Row(r), dst)
		return
	}
	if r < 0 || r >= w.Rows {
		panic(fmt.Sprintf("kernels: row %d of a %d-row matrix", r, w.Rows))
	}
	bp := rowBufs.Get().(*[]byte)
	defer rowBufs.Put(bp)
	if cap(*bp) < w.RowStride() {
		*bp = make([]byte, w.RowStride())
	}
	row := (*bp)[:w.RowStride()]
	specOf(w.DType, w.Layout).unpackRow(row, w, r)
	tensor.DequantizeRow(w.DType, row, dst)
}

// rowBufs holds DequantizeMatrixRow's row-major copies of a row (one per
// token looked up in a packed embedding table).
var rowBufs = sync.Pool{New: func() any { return new([]byte) }}

// matMulUnpacked runs a product with packed weights on the row-major path,
// one group of 16 rows at a time.
func matMulUnpacked(out []float32, w tensor.Matrix, x []float32, n, threads int, inv bool) {
	s := specOf(w.DType, w.Layout)
	rb := w.RowStride()
	rows := make([]byte, packRows*rb)
	gout := make([]float32, n*packRows)
	for g := 0; g*packRows < w.Rows; g++ {
		m := s.unpackGroup(rows, w, g)
		sub := tensor.Matrix{DType: w.DType, Rows: m, Cols: w.Cols, Data: rows[:m*rb]}
		matMul(gout[:n*m], sub, x, n, threads, inv)
		for i := 0; i < n; i++ {
			copy(out[i*w.Rows+g*packRows:i*w.Rows+g*packRows+m], gout[i*m:(i+1)*m])
		}
	}
}

// RowMajorBytes returns bytes [off, off+n) of w as its row-major layout
// holds them, whatever its layout (packed groups are unpacked): for
// fingerprints that do not depend on how a node holds its weights.
func RowMajorBytes(w tensor.Matrix, off, n int) []byte {
	if w.Layout == tensor.RowMajor {
		return w.Data[off : off+n]
	}
	s := specOf(w.DType, w.Layout)
	rb := w.RowStride()
	gb := packRows * rb
	out := make([]byte, 0, n)
	buf := make([]byte, gb)
	for g := off / gb; len(out) < n; g++ {
		m := s.unpackGroup(buf, w, g)
		lo := max(off-g*gb, 0)
		hi := min(m*rb, off+n-g*gb)
		out = append(out, buf[lo:hi]...)
	}
	return out
}
