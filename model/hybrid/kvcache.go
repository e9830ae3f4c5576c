package hybrid

import (
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// PageTokens is the number of tokens in one KV-cache page. A session's cache grows
// a page at a time per attention layer, so memory is allocated (and accounted) in
// pages: nothing is copied as a context grows and at most one partly filled page
// per layer is held beyond the tokens.
const PageTokens = 256

// KVCache is one attention layer's cache of one session, in pages.
//
// A page holds PageTokens tokens as two blocks:
//   - K: [kvHeads][PageTokens][headDim], so a head's keys in a page form a
//     [PageTokens, headDim] matrix (the scores are one matrix product);
//   - V, transposed: [kvHeads][headDim][PageTokens], so a head's values form a
//     [headDim, PageTokens] matrix (the weighted sum is one matrix product).
//
// Slots past the held tokens are zero (pages are never reused across contexts).
type KVCache struct {
	kvHeads, headDim int
	n                int         // tokens held
	pages            [][]float32 // PagesInUse() pages
}

func newKVCache(kvHeads, headDim int) KVCache {
	return KVCache{kvHeads: kvHeads, headDim: headDim}
}

// Len is the number of tokens held.
func (c *KVCache) Len() int { return c.n }

// pageFloats is the number of float32 values of one page (K and V).
func (c *KVCache) pageFloats() int { return 2 * c.kvHeads * c.headDim * PageTokens }

// PagesInUse is the number of pages that hold tokens.
func (c *KVCache) PagesInUse() int { return (c.n + PageTokens - 1) / PageTokens }

// Bytes is the memory of the pages in use.
func (c *KVCache) Bytes() int64 { return int64(c.PagesInUse()) * int64(c.pageFloats()) * 4 }

// Append adds T tokens: k and v are [T, kvHeads*headDim], token-major.
func (c *KVCache) Append(k, v []float32, T int) {
	kvd, hd := c.kvHeads*c.headDim, c.headDim
	for t := range T {
		p, s := c.n/PageTokens, c.n%PageTokens
		if p == len(c.pages) {
			c.pages = append(c.pages, make([]float32, c.pageFloats()))
		}
		kp, vp := c.kBlock(p), c.vBlock(p)
		for h := range c.kvHeads {
			copy(kp[(h*PageTokens+s)*hd:(h*PageTokens+s+1)*hd], k[t*kvd+h*hd:t*kvd+(h+1)*hd])
			vt := vp[h*hd*PageTokens:]
			for d, x := range v[t*kvd+h*hd : t*kvd+(h+1)*hd] {
				vt[d*PageTokens+s] = x
			}
		}
		c.n++
	}
}

func (c *KVCache) kBlock(p int) []float32 { return c.pages[p][:c.kvHeads*c.headDim*PageTokens] }
func (c *KVCache) vBlock(p int) []float32 { return c.pages[p][c.kvHeads*c.headDim*PageTokens:] }

// keys is head h's keys in page p as a [PageTokens, headDim] matrix.
func (c *KVCache) keys(p, h int) tensor.Matrix {
	n := PageTokens * c.headDim
	return f32Matrix(c.kBlock(p)[h*n:(h+1)*n], PageTokens, c.headDim)
}

// values is head h's values in page p, transposed: a [headDim, PageTokens] matrix.
func (c *KVCache) values(p, h int) tensor.Matrix {
	n := PageTokens * c.headDim
	return f32Matrix(c.vBlock(p)[h*n:(h+1)*n], c.headDim, PageTokens)
}

// Row copies token t's keys and values ([kvHeads*headDim] each) into k and v.
func (c *KVCache) Row(t int, k, v []float32) {
	hd := c.headDim
	p, s := t/PageTokens, t%PageTokens
	kp, vp := c.kBlock(p), c.vBlock(p)
	for h := range c.kvHeads {
		copy(k[h*hd:(h+1)*hd], kp[(h*PageTokens+s)*hd:])
		vt := vp[h*hd*PageTokens:]
		for d := range hd {
			v[h*hd+d] = vt[d*PageTokens+s]
		}
	}
}

// reset forgets the tokens and frees the pages (so a reset session holds, and is
// charged for, no KV memory, and no old values linger in a page).
func (c *KVCache) reset() { c.n, c.pages = 0, nil }

// clone copies the pages in use.
func (c *KVCache) clone() KVCache {
	out := KVCache{kvHeads: c.kvHeads, headDim: c.headDim, n: c.n}
	for p := range c.PagesInUse() {
		out.pages = append(out.pages, append([]float32(nil), c.pages[p]...))
	}
	return out
}

// f32Matrix views float32 values as a row-major F32 matrix (no copy).
func f32Matrix(v []float32, rows, cols int) tensor.Matrix {
	b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*rows*cols)
	return tensor.Matrix{DType: tensor.F32, Rows: rows, Cols: cols, Data: b}
}
