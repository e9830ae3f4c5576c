package tokenizer

import (
	"hash/maphash"
	"strings"
	"sync/atomic"
)

// mergeRule is the result of merging an adjacent pair of token ids.
type mergeRule struct {
	rank   int32
	result int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// heapEntry is a candidate merge of the symbols at left and right.
type heapEntry struct {
	rank        int32
	left, right int32
	idL, idR    int32
	result      int32
}

func (e heapEntry) less(o heapEntry) bool {
	return e.rank < o.rank || e.rank == o.rank && e.left < o.left
}

// bpeWork is per-call scratch space for bpe, recycled through a sync.Pool.
type bpeWork struct {
	ids  []int32 // token id of the symbol starting at each byte; -2 when absorbed
	next []int32
	prev []int32
	heap []heapEntry
}

// maxPooledWork bounds the scratch space kept for reuse.
const maxPooledWork = 1 << 16

func (w *bpeWork) push(e heapEntry) {
	h := append(w.heap, e)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	w.heap = h
}

func (w *bpeWork) pop() heapEntry {
	h := w.heap
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h[r].less(h[l]) {
			m = r
		}
		if !h[m].less(h[i]) {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	w.heap = h
	return top
}

// bpe appends to dst the token ids of the raw pre-token piece, applying
// merges in rank order (lowest rank first, leftmost first among equal
// ranks). It runs in O(n log n) for a piece of n bytes.
func (t *Tokenizer) bpe(dst []int32, piece string) []int32 {
	n := len(piece)
	if n == 1 {
		return t.appendSymbol(dst, t.byteTok[piece[0]])
	}
	w, _ := t.work.Get().(*bpeWork)
	if w == nil {
		w = new(bpeWork)
	}
	if cap(w.ids) < n {
		w.ids = make([]int32, n)
		w.next = make([]int32, n)
		w.prev = make([]int32, n)
	}
	ids, next, prev := w.ids[:n], w.next[:n], w.prev[:n]
	w.heap = w.heap[:0]
	for i := 0; i < n; i++ {
		ids[i] = t.byteTok[piece[i]]
		next[i] = int32(i + 1)
		prev[i] = int32(i - 1)
	}
	next[n-1] = -1
	for i := 0; i+1 < n; i++ {
		t.pushPair(w, int32(i), int32(i+1), ids[i], ids[i+1])
	}
	for len(w.heap) > 0 {
		e := w.pop()
		l, r := e.left, e.right
		if ids[l] != e.idL || ids[r] != e.idR || next[l] != r {
			continue // stale: one of the symbols has changed since the push
		}
		ids[l] = e.result
		ids[r] = -2
		nr := next[r]
		next[l] = nr
		if nr >= 0 {
			prev[nr] = l
			t.pushPair(w, l, nr, ids[l], ids[nr])
		}
		if pl := prev[l]; pl >= 0 {
			t.pushPair(w, pl, l, ids[pl], ids[l])
		}
	}
	for i := int32(0); i >= 0; i = next[i] {
		dst = t.appendSymbol(dst, ids[i])
	}
	if cap(w.ids) <= maxPooledWork {
		t.work.Put(w)
	}
	return dst
}

func (t *Tokenizer) pushPair(w *bpeWork, l, r, a, b int32) {
	if a < 0 || b < 0 {
		return
	}
	if m, ok := t.merges[pairKey(a, b)]; ok {
		w.push(heapEntry{rank: m.rank, left: l, right: r, idL: a, idR: b, result: m.result})
	}
}

// appendSymbol appends a final BPE symbol; a byte with no token in the
// vocabulary becomes the unknown token, or is dropped when there is none.
func (t *Tokenizer) appendSymbol(dst []int32, id int32) []int32 {
	if id >= 0 {
		return append(dst, id)
	}
	if t.unk >= 0 {
		return append(dst, t.unk)
	}
	return dst
}

// Cache of BPE results per pre-token: a direct-mapped table of immutable
// entries behind atomic pointers. Lookups take no lock; a store overwrites
// whatever entry shared the slot, so the size is bounded by construction.
const (
	cacheSlots     = 1 << 16
	cacheMaxKeyLen = 64 // longer pre-tokens are not cached
)

type cacheEntry struct {
	key string
	ids []int32
}

type bpeCache struct {
	seed  maphash.Seed
	slots []atomic.Pointer[cacheEntry]
}

func newBPECache() *bpeCache {
	return &bpeCache{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[cacheEntry], cacheSlots)}
}

// Each key may live in either slot of an aligned pair (2-way set
// associative), which keeps two hot words that hash to the same slot from
// evicting each other forever.
func (c *bpeCache) pair(key string) (h uint64, a, b *atomic.Pointer[cacheEntry]) {
	h = maphash.String(c.seed, key)
	i := h & (cacheSlots - 1)
	return h, &c.slots[i], &c.slots[i^1]
}

func (c *bpeCache) get(key string) ([]int32, bool) {
	_, a, b := c.pair(key)
	if e := a.Load(); e != nil && e.key == key {
		return e.ids, true
	}
	if e := b.Load(); e != nil && e.key == key {
		return e.ids, true
	}
	return nil, false
}

// put stores ids for key; ids must not be modified afterwards.
func (c *bpeCache) put(key string, ids []int32) {
	h, a, b := c.pair(key)
	dst := a
	if a.Load() != nil {
		if b.Load() == nil || h>>63 != 0 {
			dst = b
		}
	}
	// The key may point into a caller's text: copy it.
	dst.Store(&cacheEntry{key: strings.Clone(key), ids: ids})
}
