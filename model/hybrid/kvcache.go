package hybrid

import (
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/kernels"
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
//
// Values are stored as the cache's element type (KVDType: F32, or BF16 rounded
// to nearest even on Append, half the memory); attention reads BF16 pages with
// the same kernels as BF16 weights (widened to float32, float32 accumulation).
// Q8_0 pages (8.5 bits a value, 53% of BF16) hold a row of headDim/32 Q8_0
// blocks per token and head, keys and values alike, each quantized on Append
// as llama.cpp quantizes its q8_0 cache. A head's keys in a page are a
// [PageTokens, headDim] Q8_0 matrix packed in 16-row groups
// (tensor.Q80x16, written a row at a time: kernels.SetPackedRow), which the
// packed integer kernels score against every query row of the task in one
// pass (the queries quantized per 32 values, as llama.cpp quantizes them
// against a q8_0 K cache); a head's values are [PageTokens] row-major rows,
// summed row by row from the blocks (kernels.AddWeightedQ80Rows).
//
// Pages are shared by reference between caches (State.Clone: a fork, a prefix
// checkpoint and the sessions resumed from it) and counted: a page with more
// than one holder is never written. Only a cache's last page can be partly
// filled, so only that page is ever copied, by the first Append that writes
// into it while it is shared (copy on write); full pages stay shared for good.
type KVCache struct {
	kvHeads, headDim int
	dt               tensor.DType // F32 or BF16 (the zero value reads as F32)
	n                int          // tokens held
	pages            []*kvPage    // PagesInUse() pages
	own              *kvOwner     // the state's page accounting (nil: none)
}

// kvPage is one page of values and the number of caches that hold it. Exactly
// one of data, half and q8 is set, by the cache's element type.
type kvPage struct {
	data []float32 // F32 values
	half []uint16  // BF16 values
	q8   []byte    // Q8_0 blocks
	refs atomic.Int32
	tag  atomic.Pointer[pageTag] // the account it is counted in (nil: none)
}

// pageTag counts a page in a PageAccount until the page's last holder lets it
// go, or, should a holder be dropped without letting go, until the page is
// garbage collected. It never refers to its page (it is the page's cleanup
// argument).
type pageTag struct {
	acct  *PageAccount
	bytes int64
	live  atomic.Bool
}

func (t *pageTag) release() {
	if t.live.Swap(false) {
		t.acct.bytes.Add(-t.bytes)
	}
}

// PageAccount counts the memory of the KV pages of the states attached to it
// (State.Attach): a page is counted from its allocation until its last holder
// lets it go (State.Reset or State.Release), once however many states share it.
// A state dropped without either is caught by the garbage collector: its pages
// stop counting once they are unreachable. The zero value is ready to use.
type PageAccount struct{ bytes atomic.Int64 }

// Bytes is the memory of the live pages counted in the account.
func (a *PageAccount) Bytes() int64 { return a.bytes.Load() }

// count tags p as counted in a, unless it is counted already.
func (p *kvPage) count(a *PageAccount) {
	if a == nil || p.tag.Load() != nil {
		return
	}
	t := &pageTag{acct: a, bytes: p.bytes()}
	if !p.tag.CompareAndSwap(nil, t) {
		return
	}
	t.live.Store(true)
	a.bytes.Add(t.bytes)
	runtime.AddCleanup(p, (*pageTag).release, t)
}

// bytes is the page's memory.
func (p *kvPage) bytes() int64 { return int64(len(p.data))*4 + int64(len(p.half))*2 + int64(len(p.q8)) }

// check calls fn on the page's values as float32, in pieces (BF16 pages are
// widened a block at a time into a small buffer).
func (p *kvPage) check(fn func(v []float32) error) error {
	var buf [1024]float32
	if p.q8 != nil {
		panic("hybrid: a Q8_0 page is checked through its cache (checkPage)")
	}
	if p.half == nil {
		return fn(p.data)
	}
	for i := 0; i < len(p.half); i += len(buf) {
		v := buf[:min(len(buf), len(p.half)-i)]
		for j := range v {
			v[j] = tensor.BF16ToF32(p.half[i+j])
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return nil
}

// unref drops one holder; the last one frees the page from its account and
// hands its values to the pool (statePool): nobody holds the page any more.
func (p *kvPage) unref() {
	if p.refs.Add(-1) == 0 {
		if t := p.tag.Load(); t != nil {
			t.release()
		}
		poolPage(p)
	}
}

// kvOwner is a state's page accounting, shared by its attention layers.
type kvOwner struct {
	acct      *PageAccount // where new pages are counted (nil: nowhere)
	allocated atomic.Int64 // bytes of the pages this state allocated (new pages and copies)
}

// KVValueBytes is the bytes of n cached values of element type dt (F32,
// BF16 or Q8_0, whose n is a whole number of 32-value blocks; the zero
// DType is F32): a model's KV memory per token is KVValueBytes(dt, 2·KVDim)
// per attention layer.
func KVValueBytes(dt tensor.DType, n int) int64 {
	switch dt {
	case tensor.BF16:
		return 2 * int64(n)
	case tensor.Q8_0:
		return int64(n / tensor.Q8_0BlockValues * tensor.Q8_0BlockBytes)
	}
	return 4 * int64(n)
}

// DefaultKVDType is the KV cache element type a model gets when its
// LoadOptions name none: bfloat16, half the memory of float32. On the golden
// fixture it moves logits by at most 0.021 from float32 KV caches (greedy
// tokens unchanged) and stays within 1.4e-4 of llama.cpp's own bf16 KV cache
// once llama.cpp's extra rounding of the queries is accounted for (see
// docs/kv-dtype.md).
const DefaultKVDType = tensor.BF16

// CheckKVDType reports whether dt is an element type a KV cache can hold: F32,
// BF16, Q8_0, or the zero DType (F32).
func CheckKVDType(dt tensor.DType) error {
	switch dt {
	case 0, tensor.F32, tensor.BF16, tensor.Q8_0:
		return nil
	}
	return fmt.Errorf("%w: KV cache element type %v (want F32, BF16 or Q8_0)", ErrInput, dt)
}

// checkKVDTypeFor is CheckKVDType for a model of attention head size
// headDim: a Q8_0 cache quantizes each head's row in 32-value blocks.
func checkKVDTypeFor(dt tensor.DType, headDim int) error {
	if err := CheckKVDType(dt); err != nil {
		return err
	}
	if dt == tensor.Q8_0 && headDim%tensor.Q8_0BlockValues != 0 {
		return fmt.Errorf("%w: a Q8_0 KV cache needs an attention head size that is a multiple of %d, this model's is %d (use bf16)", ErrInput, tensor.Q8_0BlockValues, headDim)
	}
	return nil
}

// ParseKVDType reads a KV cache element type as a flag spells it: "f32",
// "bf16" or "q8_0".
func ParseKVDType(s string) (tensor.DType, error) {
	switch s {
	case "f32", "F32":
		return tensor.F32, nil
	case "bf16", "BF16":
		return tensor.BF16, nil
	case "q8_0", "Q8_0":
		return tensor.Q8_0, nil
	}
	return 0, fmt.Errorf("hybrid: KV cache element type %q (want f32, bf16 or q8_0)", s)
}

func newKVCache(kvHeads, headDim int) KVCache {
	return newKVCacheOf(kvHeads, headDim, tensor.F32)
}

// newKVCacheOf returns an empty cache holding values of type dt (F32, BF16,
// or Q8_0 for a headDim that is a multiple of 32).
func newKVCacheOf(kvHeads, headDim int, dt tensor.DType) KVCache {
	if dt != tensor.BF16 && dt != tensor.Q8_0 {
		dt = tensor.F32
	}
	if dt == tensor.Q8_0 && headDim%tensor.Q8_0BlockValues != 0 {
		panic(fmt.Sprintf("hybrid: a Q8_0 KV cache of head size %d", headDim))
	}
	return KVCache{kvHeads: kvHeads, headDim: headDim, dt: dt}
}

// DType is the element type of the cached values (F32 or BF16).
func (c *KVCache) DType() tensor.DType {
	if c.dt == tensor.BF16 || c.dt == tensor.Q8_0 {
		return c.dt
	}
	return tensor.F32
}

// Len is the number of tokens held.
func (c *KVCache) Len() int { return c.n }

// Width is the number of values of one token's K (or V) row: kv heads times
// head size (the row length of Append and Row).
func (c *KVCache) Width() int { return c.kvHeads * c.headDim }

// pageFloats is the number of values of one page (K and V).
func (c *KVCache) pageFloats() int { return 2 * c.kvHeads * c.headDim * PageTokens }

// quantizeKVQ80 writes x (whole 32-value blocks) as Q8_0 blocks at dst the
// way llama.cpp's x86 CPU backend quantizes a q8_0 K/V cache
// (quantize_row_q8_0): per block d = amax/127, stored as f16, and q =
// x·(127/amax) rounded to nearest even. tensor.QuantizeQ8_0 (the checkpoint
// writer's) divides by the f16 scale instead, which moves some values by one
// step; with llama.cpp's rule the cache holds llama.cpp's bits.
func quantizeKVQ80(dst []byte, x []float32) {
	for b := 0; b < len(x)/tensor.Q8_0BlockValues; b++ {
		xs := x[b*tensor.Q8_0BlockValues : (b+1)*tensor.Q8_0BlockValues]
		blk := dst[b*tensor.Q8_0BlockBytes : (b+1)*tensor.Q8_0BlockBytes]
		var amax float32
		for _, v := range xs {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		var id float32
		if amax != 0 {
			id = 127 / amax
		}
		dh := tensor.F32ToF16(amax / 127)
		blk[0], blk[1] = byte(dh), byte(dh>>8)
		for j, v := range xs {
			blk[2+j] = byte(int8(max(-127, min(127, math.RoundToEven(float64(v*id))))))
		}
	}
}

// rowBytes is the bytes of one head's row of a Q8_0 page (headDim values).
func (c *KVCache) rowBytes() int { return c.headDim / tensor.Q8_0BlockValues * tensor.Q8_0BlockBytes }

// pageBytes is the memory of one page.
func (c *KVCache) pageBytes() int64 { return KVValueBytes(c.dt, c.pageFloats()) }

// PagesInUse is the number of pages that hold tokens.
func (c *KVCache) PagesInUse() int { return (c.n + PageTokens - 1) / PageTokens }

// Bytes is the memory of the pages in use (shared pages included).
func (c *KVCache) Bytes() int64 { return int64(c.PagesInUse()) * c.pageBytes() }

// newPage allocates a zeroed page held by c alone, counted in c's account.
func (c *KVCache) newPage() *kvPage {
	p := &kvPage{}
	p.data, p.half, p.q8 = newPageValues(c)
	p.refs.Store(1)
	if c.own != nil {
		c.own.allocated.Add(c.pageBytes())
		p.count(c.own.acct)
	}
	return p
}

// private makes page i held by c alone, copying it if it is shared.
func (c *KVCache) private(i int) {
	old := c.pages[i]
	if old.refs.Load() == 1 {
		return
	}
	p := c.newPage()
	copy(p.data, old.data)
	copy(p.half, old.half)
	copy(p.q8, old.q8)
	c.pages[i] = p
	old.unref()
}

// slot returns the page and the slot in it of the next token, opening a
// page when the last is full; first says the token is the first of an
// append, the only one that can land in a page that existed before it (the
// last, partly filled one, maybe shared: made private here).
func (c *KVCache) slot(first bool) (p, s int) {
	p, s = c.n/PageTokens, c.n%PageTokens
	if p == len(c.pages) {
		c.pages = append(c.pages, c.newPage())
	} else if first {
		c.private(p)
	}
	return p, s
}

// Append adds T tokens: k and v are [T, kvHeads*headDim], token-major. A BF16
// cache stores them rounded to the nearest bfloat16 (ties to even), a Q8_0
// cache quantized per head and 32 values as llama.cpp quantizes its q8_0
// cache (quantizeKVQ80).
func (c *KVCache) Append(k, v []float32, T int) {
	kvd, hd := c.kvHeads*c.headDim, c.headDim
	for t := range T {
		p, s := c.slot(t == 0)
		kt, vt := k[t*kvd:(t+1)*kvd], v[t*kvd:(t+1)*kvd]
		switch c.dt {
		case tensor.Q8_0:
			rb := c.rowBytes()
			row := make([]byte, c.rowBytes())
			for h := range c.kvHeads {
				quantizeKVQ80(row, kt[h*hd:(h+1)*hd])
				kernels.SetPackedRow(c.keys(p, h), s, row)
				quantizeKVQ80(c.valueRows(p, h)[s*rb:(s+1)*rb], vt[h*hd:(h+1)*hd])
			}
		case tensor.BF16:
			pg := c.pages[p].half
			kp, vp := pg[:kvd*PageTokens], pg[kvd*PageTokens:]
			for h := range c.kvHeads {
				kd := kp[(h*PageTokens+s)*hd : (h*PageTokens+s+1)*hd]
				for d, x := range kt[h*hd : (h+1)*hd] {
					kd[d] = tensor.F32ToBF16(x)
				}
				vd := vp[h*hd*PageTokens:]
				for d, x := range vt[h*hd : (h+1)*hd] {
					vd[d*PageTokens+s] = tensor.F32ToBF16(x)
				}
			}
		default:
			kp, vp := c.kBlock(p), c.vBlock(p)
			for h := range c.kvHeads {
				copy(kp[(h*PageTokens+s)*hd:(h*PageTokens+s+1)*hd], kt[h*hd:(h+1)*hd])
				vd := vp[h*hd*PageTokens:]
				for d, x := range vt[h*hd : (h+1)*hd] {
					vd[d*PageTokens+s] = x
				}
			}
		}
		c.n++
	}
}

// growBytes is the memory Append allocates for tokens more: the pages it
// opens, plus a copy of the last page when that is partly filled and shared.
func (c *KVCache) growBytes(tokens int) int64 {
	if tokens <= 0 {
		return 0
	}
	n := (c.n+tokens+PageTokens-1)/PageTokens - len(c.pages)
	if c.n%PageTokens != 0 && c.pages[len(c.pages)-1].refs.Load() > 1 {
		n++
	}
	return int64(n) * c.pageBytes()
}

// kBlock and vBlock are page p's K and V blocks (F32 caches only).
func (c *KVCache) kBlock(p int) []float32 { return c.pages[p].data[:c.kvHeads*c.headDim*PageTokens] }
func (c *KVCache) vBlock(p int) []float32 { return c.pages[p].data[c.kvHeads*c.headDim*PageTokens:] }

// keys is head h's keys in page p as a [PageTokens, headDim] matrix of the
// cache's element type.
func (c *KVCache) keys(p, h int) tensor.Matrix {
	n := PageTokens * c.headDim
	if c.dt == tensor.Q8_0 {
		rb := c.rowBytes()
		return tensor.Matrix{DType: tensor.Q8_0, Rows: PageTokens, Cols: c.headDim, Data: c.pages[p].q8[h*PageTokens*rb : (h+1)*PageTokens*rb], Layout: tensor.Q80x16}
	}
	if c.dt == tensor.BF16 {
		return bf16Matrix(c.pages[p].half[h*n:(h+1)*n], PageTokens, c.headDim)
	}
	return f32Matrix(c.kBlock(p)[h*n:(h+1)*n], PageTokens, c.headDim)
}

// valueRows is head h's values in page p of a Q8_0 cache: PageTokens rows of
// rowBytes, token-major.
func (c *KVCache) valueRows(p, h int) []byte {
	rb := c.rowBytes()
	off := (c.kvHeads + h) * PageTokens * rb
	return c.pages[p].q8[off : off+PageTokens*rb]
}

// q80Row copies token t's keys (part 0) or values (part 1) of head h in a
// Q8_0 cache into dst (rowBytes) as row-major blocks, and returns dst.
func (c *KVCache) q80Row(dst []byte, part, t, h int) []byte {
	p, s, rb := t/PageTokens, t%PageTokens, c.rowBytes()
	if part == 0 {
		kernels.PackedRow(dst, c.keys(p, h), s)
	} else {
		copy(dst, c.valueRows(p, h)[s*rb:(s+1)*rb])
	}
	return dst[:rb]
}

// appendQ80 adds T tokens to a Q8_0 cache from their blocks as q80Row gives
// them: k and v hold, token after token, each head's row.
func (c *KVCache) appendQ80(k, v []byte, T int) {
	rb := c.rowBytes()
	for t := range T {
		p, s := c.slot(t == 0)
		c.n++
		for h := range c.kvHeads {
			o := (t*c.kvHeads + h) * rb
			kernels.SetPackedRow(c.keys(p, h), s, k[o:o+rb])
			copy(c.valueRows(p, h)[s*rb:(s+1)*rb], v[o:o+rb])
		}
	}
}

// checkPage calls fn on page p's values as float32, in pieces (Validate).
func (c *KVCache) checkPage(p int, fn func(v []float32) error) error {
	if c.dt != tensor.Q8_0 {
		return c.pages[p].check(fn)
	}
	row, vals := make([]byte, c.rowBytes()), make([]float32, c.headDim)
	for part := range 2 {
		for h := range c.kvHeads {
			for s := range PageTokens {
				tensor.DequantizeRow(tensor.Q8_0, c.q80Row(row, part, p*PageTokens+s, h), vals)
				if err := fn(vals); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// values is head h's values in page p, transposed: a [headDim, PageTokens]
// matrix of the cache's element type (F32 and BF16 caches).
func (c *KVCache) values(p, h int) tensor.Matrix {
	n := PageTokens * c.headDim
	if c.dt == tensor.BF16 {
		off := c.kvHeads * n
		return bf16Matrix(c.pages[p].half[off+h*n:off+(h+1)*n], c.headDim, PageTokens)
	}
	return f32Matrix(c.vBlock(p)[h*n:(h+1)*n], c.headDim, PageTokens)
}

// Row copies token t's keys and values ([kvHeads*headDim] each, as float32)
// into k and v.
func (c *KVCache) Row(t int, k, v []float32) {
	hd := c.headDim
	p, s := t/PageTokens, t%PageTokens
	if c.dt == tensor.Q8_0 {
		row := make([]byte, c.rowBytes())
		for h := range c.kvHeads {
			tensor.DequantizeRow(tensor.Q8_0, c.q80Row(row, 0, t, h), k[h*hd:(h+1)*hd])
			tensor.DequantizeRow(tensor.Q8_0, c.q80Row(row, 1, t, h), v[h*hd:(h+1)*hd])
		}
		return
	}
	if c.dt == tensor.BF16 {
		pg := c.pages[p].half
		n := c.kvHeads * hd * PageTokens
		kp, vp := pg[:n], pg[n:]
		for h := range c.kvHeads {
			for d, x := range kp[(h*PageTokens+s)*hd : (h*PageTokens+s+1)*hd] {
				k[h*hd+d] = tensor.BF16ToF32(x)
			}
			vt := vp[h*hd*PageTokens:]
			for d := range hd {
				v[h*hd+d] = tensor.BF16ToF32(vt[d*PageTokens+s])
			}
		}
		return
	}
	kp, vp := c.kBlock(p), c.vBlock(p)
	for h := range c.kvHeads {
		copy(k[h*hd:(h+1)*hd], kp[(h*PageTokens+s)*hd:])
		vt := vp[h*hd*PageTokens:]
		for d := range hd {
			v[h*hd+d] = vt[d*PageTokens+s]
		}
	}
}

// reset forgets the tokens and lets the pages go (so a reset session holds, and
// is charged for, no KV memory, and no old values linger in a page); a page
// another cache shares stays alive for that cache.
func (c *KVCache) reset() {
	for _, p := range c.pages {
		p.unref()
	}
	c.n, c.pages = 0, nil
}

// clone returns a cache holding the same tokens in the same pages (shared, not
// copied), accounted to own.
func (c *KVCache) clone(own *kvOwner) KVCache {
	out := KVCache{kvHeads: c.kvHeads, headDim: c.headDim, dt: c.dt, n: c.n, own: own}
	out.pages = make([]*kvPage, len(c.pages))
	for i, p := range c.pages {
		p.refs.Add(1)
		out.pages[i] = p
	}
	return out
}

// f32Matrix views float32 values as a row-major F32 matrix (no copy).
func f32Matrix(v []float32, rows, cols int) tensor.Matrix {
	b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*rows*cols)
	return tensor.Matrix{DType: tensor.F32, Rows: rows, Cols: cols, Data: b}
}

// bf16Matrix views bfloat16 values as a row-major BF16 matrix (no copy).
func bf16Matrix(v []uint16, rows, cols int) tensor.Matrix {
	b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 2*rows*cols)
	return tensor.Matrix{DType: tensor.BF16, Rows: rows, Cols: cols, Data: b}
}

// PageSet counts the distinct KV pages held by a set of states (a prefix
// cache's checkpoints): a page several of them share counts once. The states
// must not change while they are in the set. The zero value is an empty set.
type PageSet struct {
	refs  map[*kvPage]int
	bytes int64
}

// Bytes is the memory of the distinct pages in the set.
func (ps *PageSet) Bytes() int64 { return ps.bytes }

// Add puts s's pages in the set and returns the bytes of those that were not.
func (ps *PageSet) Add(s *State) int64 {
	if ps.refs == nil {
		ps.refs = map[*kvPage]int{}
	}
	var added int64
	for i := range s.KV {
		c := &s.KV[i]
		for _, p := range c.pages {
			if ps.refs[p]++; ps.refs[p] == 1 {
				added += p.bytes()
			}
		}
	}
	ps.bytes += added
	return added
}

// Remove takes s's pages out of the set and returns the bytes of those no
// other state of the set holds.
func (ps *PageSet) Remove(s *State) int64 {
	var removed int64
	for i := range s.KV {
		c := &s.KV[i]
		for _, p := range c.pages {
			if ps.refs[p]--; ps.refs[p] <= 0 {
				delete(ps.refs, p)
				removed += p.bytes()
			}
		}
	}
	ps.bytes -= removed
	return removed
}

// NewBytes is what Add(s) would add: the bytes of s's pages not in the set.
func (ps *PageSet) NewBytes(s *State) int64 {
	var n int64
	for i := range s.KV {
		c := &s.KV[i]
		for _, p := range c.pages {
			if ps.refs[p] == 0 {
				n += p.bytes()
			}
		}
	}
	return n
}
