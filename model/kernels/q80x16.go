package kernels

import (
	"encoding/binary"
	"runtime"
	"sync"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Q8_0 repacked in groups of 16 rows (tensor.Q80x16), for one-row products.
//
// q80rows512 walks each Q8_0 row on its own and must reduce every block's
// partial sums across a register, gather the block scales and transpose the
// results: about 75 instructions per 16 blocks of a row, which held it to
// 30-33 GB/s on an LM-head-sized product at one thread, against 42-45 GB/s
// for a plain read. Repacked, a block of 16 rows holds their scales and then
// each 4-byte group of the 16 rows side by side, as unsigned bytes, so
// q80x16N multiplies 64 weight bytes with one VPDPBUSD (the input's 4 bytes
// broadcast), the lanes being the weight rows, with nothing to reduce: 38-43
// GB/s on the same bytes. Its float32 steps per (row, block) are those of
// matMulQ80Ref, so the results are the same bits as the row-major kernels'
// (TestQ80x16MatchesRowMajor), for any number of input rows.
//
// The hybrid loader packs Q8_0 matrices when it copies weights into memory
// (the default; not when it reads the file's map) and the CPU has the
// kernels. Products with packed weights on another kernel level, without
// 8-bit activations, or with an input row holding an infinity or a NaN
// unpack each group to row-major rows and run the row-major path on them
// (slower, same results).

const (
	q80x16Rows  = 16
	q80x16Block = 16 * tensor.Q8_0BlockBytes // 544: 32 bytes of scales, 512 of values
)

// PackedQ80x16Bytes is the size of a [rows, cols] Q8_0 matrix packed.
func PackedQ80x16Bytes(rows, cols int) int {
	return (rows + q80x16Rows - 1) / q80x16Rows * (cols / tensor.Q8_0BlockValues) * q80x16Block
}

// CanPackQ80x16 reports whether w is a row-major Q8_0 matrix that this CPU
// multiplies faster packed (PackQ80x16).
func CanPackQ80x16(w tensor.Matrix) bool {
	return w.DType == tensor.Q8_0 && w.Layout == tensor.RowMajor && w.Rows > 0 && w.Cols > 0 &&
		w.Cols%tensor.Q8_0BlockValues == 0 && hasQ80x16Kernels()
}

// PackQ80x16 packs the row-major Q8_0 matrix w into dst
// (PackedQ80x16Bytes(w.Rows, w.Cols) bytes) and returns the packed matrix,
// which aliases dst. Large matrices are packed on several goroutines.
func PackQ80x16(dst []byte, w tensor.Matrix) tensor.Matrix {
	dst = dst[:PackedQ80x16Bytes(w.Rows, w.Cols)]
	groups := (w.Rows + q80x16Rows - 1) / q80x16Rows
	parts := min(runtime.GOMAXPROCS(0), groups/64) // at least 64 groups (~1.6 MiB at H-Tiny widths) each
	if parts <= 1 {
		packQ80x16Groups(dst, w, 0, groups)
	} else {
		var wg sync.WaitGroup
		for p := range parts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				packQ80x16Groups(dst, w, p*groups/parts, (p+1)*groups/parts)
			}()
		}
		wg.Wait()
	}
	return tensor.Matrix{DType: tensor.Q8_0, Rows: w.Rows, Cols: w.Cols, Data: dst, Layout: tensor.Q80x16}
}

// packQ80x16Groups packs groups [g0, g1) of w into dst.
func packQ80x16Groups(dst []byte, w tensor.Matrix, g0, g1 int) {
	nb := w.Cols / tensor.Q8_0BlockValues
	rb := w.RowStride()
	for g := g0; g < g1; g++ {
		for b := 0; b < nb; b++ {
			blk := (*[q80x16Block]byte)(dst[(g*nb+b)*q80x16Block:])
			for r := 0; r < q80x16Rows; r++ {
				row := g*q80x16Rows + r
				if row >= w.Rows {
					// Padding rows: d = 0, values 0 (stored 128).
					blk[2*r], blk[2*r+1] = 0, 0
					for j := 0; j < 8; j++ {
						binary.LittleEndian.PutUint32(blk[32+64*j+4*r:], 0x80808080)
					}
					continue
				}
				src := (*[tensor.Q8_0BlockBytes]byte)(w.Data[row*rb+b*tensor.Q8_0BlockBytes:])
				blk[2*r], blk[2*r+1] = src[0], src[1]
				for j := 0; j < 8; j++ { // 4 values at a time, as q+128
					binary.LittleEndian.PutUint32(blk[32+64*j+4*r:], binary.LittleEndian.Uint32(src[2+4*j:])^0x80808080)
				}
			}
		}
	}
}

// unpackQ80x16 writes rows [g·16, g·16+16) of the packed w (fewer in the
// last group) to dst in row-major Q8_0 blocks and returns how many it wrote.
func unpackQ80x16(dst []byte, w tensor.Matrix, g int) int {
	nb := w.Cols / tensor.Q8_0BlockValues
	rb := nb * tensor.Q8_0BlockBytes
	rows := min(q80x16Rows, w.Rows-g*q80x16Rows)
	for b := 0; b < nb; b++ {
		blk := w.Data[(g*nb+b)*q80x16Block:]
		for r := 0; r < rows; r++ {
			out := dst[r*rb+b*tensor.Q8_0BlockBytes:]
			out[0], out[1] = blk[2*r], blk[2*r+1]
			for j := 0; j < 8; j++ {
				binary.LittleEndian.PutUint32(out[2+4*j:], binary.LittleEndian.Uint32(blk[32+64*j+4*r:])^0x80808080)
			}
		}
	}
	return rows
}

// DequantizeMatrixRow writes row r of w, in any layout, as float32 to dst
// (w.Cols values): for lookups in a weight matrix (embeddings).
func DequantizeMatrixRow(w tensor.Matrix, r int, dst []float32) {
	if w.Layout == tensor.RowMajor {
		tensor.DequantizeRow(w.DType, w.Row(r), dst)
		return
	}
	nb := w.Cols / tensor.Q8_0BlockValues
	g, i := r/q80x16Rows, r%q80x16Rows
	for b := 0; b < nb; b++ {
		blk := w.Data[(g*nb+b)*q80x16Block:]
		d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk[2*i:]))
		for v := 0; v < 32; v++ {
			dst[b*32+v] = float32(int8(blk[32+64*(v/4)+4*i+v%4]^0x80)) * d
		}
	}
}

// matMulUnpacked runs a product with packed weights on the row-major path,
// one group of 16 rows at a time.
func matMulUnpacked(out []float32, w tensor.Matrix, x []float32, n, threads int, inv bool) {
	rb := w.RowStride()
	rows := make([]byte, q80x16Rows*rb)
	gout := make([]float32, n*q80x16Rows)
	for g := 0; g*q80x16Rows < w.Rows; g++ {
		m := unpackQ80x16(rows, w, g)
		sub := tensor.Matrix{DType: tensor.Q8_0, Rows: m, Cols: w.Cols, Data: rows[:m*rb]}
		matMul(gout[:n*m], sub, x, n, threads, inv)
		for i := 0; i < n; i++ {
			copy(out[i*w.Rows+g*q80x16Rows:i*w.Rows+g*q80x16Rows+m], gout[i*m:(i+1)*m])
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
	rb := w.RowStride()
	gb := q80x16Rows * rb
	out := make([]byte, 0, n)
	buf := make([]byte, gb)
	for g := off / gb; len(out) < n; g++ {
		m := unpackQ80x16(buf, w, g)
		lo := max(off-g*gb, 0)
		hi := min(m*rb, off+n-g*gb)
		out = append(out, buf[lo:hi]...)
	}
	return out
}
