package grammar

import (
	"bytes"
	"container/list"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
)

// Matcher follows one generation through a Grammar: Mask before each sample,
// Accept after. It satisfies the decode loop's Constraint interface
// (model/engine). Not safe for concurrent use; make one per generation.
type Matcher struct {
	g     *Grammar
	v     *Vocab
	cache *maskCache
	m     machine
	tops  []int32 // the current state: tops of the stacks in m.arena
	spare []slot  // the other arena, for compaction
	ended bool    // end of text accepted
	key   []byte  // the state's cache key
	entry *maskEntry
	saved []float32 // scratch for maskEntry.apply
}

// The decode loop's engine.Constraint, restated: this package imports nothing
// of the module.
var _ interface {
	Mask(logits []float32)
	Accept(tok int) error
} = (*Matcher)(nil)

// NewMatcher starts a generation at the beginning of the document.
func (g *Grammar) NewMatcher(v *Vocab) *Matcher {
	mt := &Matcher{g: g, v: v, cache: g.cacheFor(v)}
	mt.m.g = g
	mt.commit([]int32{mt.m.initial()})
	return mt
}

// Done reports whether a complete document has been produced (end of text is
// allowed now).
func (mt *Matcher) Done() bool { return mt.ended || mt.m.canEnd(mt.tops) }

// Mask sets the logits of the tokens not allowed next to -Inf: those whose
// bytes would not keep the output a prefix of a document of the grammar,
// special tokens, and end of text unless the document is complete. Logits
// past the vocabulary are masked too.
func (mt *Matcher) Mask(logits []float32) {
	if mt.ended {
		for i := range logits {
			if i != mt.v.eos {
				logits[i] = negInf
			}
		}
		return
	}
	mt.current().apply(logits, &mt.saved)
}

// AllowedCount is the number of tokens Mask allows now.
func (mt *Matcher) AllowedCount() int {
	if mt.ended {
		return 1
	}
	return mt.current().allowed
}

// Accept advances past tok. It fails (wrapping ErrRejected, the state kept) if
// Mask would not have allowed tok.
func (mt *Matcher) Accept(tok int) error {
	v := mt.v
	switch {
	case mt.ended:
		return fmt.Errorf("%w: token %d after end of text", ErrRejected, tok)
	case tok < 0 || tok >= v.n:
		return fmt.Errorf("%w: token %d outside the vocabulary", ErrRejected, tok)
	case tok == v.eos:
		if !mt.m.canEnd(mt.tops) {
			return fmt.Errorf("%w: end of text before the document is complete", ErrRejected)
		}
		mt.ended, mt.entry = true, nil
		return nil
	case v.special[tok]:
		return fmt.Errorf("%w: special token %d", ErrRejected, tok)
	case len(v.tokens[tok]) == 0:
		return fmt.Errorf("%w: empty token %d", ErrRejected, tok)
	}
	mark := len(mt.m.arena)
	next, at := mt.m.feed(mt.tops, v.tokens[tok])
	if next == nil {
		mt.m.arena = mt.m.arena[:mark]
		return fmt.Errorf("%w: token %d %q at its byte %d", ErrRejected, tok, v.tokens[tok], at)
	}
	mt.commit(next)
	return nil
}

// commit makes the stacks of tops the state: in a canonical order (by their
// encoding), at most maxStacks of them, compacted into a fresh arena, with the
// cache key computed.
func (mt *Matcher) commit(tops []int32) {
	m := &mt.m
	mt.key = mt.key[:0]
	ordered := tops
	if len(tops) > 1 {
		type enc struct {
			top int32
			b   []byte
		}
		encs := make([]enc, len(tops))
		for i, t := range tops {
			encs[i] = enc{t, m.appendKey(nil, t)}
		}
		slices.SortFunc(encs, func(x, y enc) int { return bytes.Compare(x.b, y.b) })
		encs = slices.CompactFunc(encs, func(x, y enc) bool { return bytes.Equal(x.b, y.b) })
		encs = encs[:min(len(encs), maxStacks)]
		ordered = make([]int32, len(encs))
		for i, e := range encs {
			ordered[i] = e.top
			mt.key = append(mt.key, e.b...)
		}
	} else {
		mt.key = m.appendKey(mt.key, tops[0])
	}
	old := m.arena
	mt.tops = m.compact(ordered, mt.spare, mt.tops[:0])
	mt.spare = old
	mt.entry = nil
}

// current returns the mask of the current state, from the cache or computed.
func (mt *Matcher) current() *maskEntry {
	if mt.entry != nil {
		return mt.entry
	}
	if e := mt.cache.get(mt.key); e != nil {
		mt.entry = e
		return e
	}
	e := mt.compute()
	mt.cache.put(string(mt.key), e)
	mt.entry = e
	return e
}

// compute walks the vocabulary trie with the automaton from the current state
// (see walk) and returns the mask. The walk marks allowed tokens by trie
// position, where every subtree is a range; the result is then translated to
// token ids, setting the allowed ids or, when most are allowed, clearing the
// others, whichever is fewer.
func (mt *Matcher) compute() *maskEntry {
	v := mt.v
	m := &mt.m
	pos := make([]uint64, (len(v.order)+63)/64)
	mark := len(m.arena)
	m.sets = append(m.sets[:0], mt.tops...)
	mt.walk(0, 0, pos)
	m.arena = m.arena[:mark]

	e := &maskEntry{bits: make([]uint64, v.words)}
	n := 0
	for _, w := range pos {
		n += bits.OnesCount64(w)
	}
	if n > len(v.order)/2 {
		copy(e.bits, v.inTrie)
		for wi, w := range pos {
			x := ^w
			if wi == len(pos)-1 && len(v.order)%64 != 0 {
				x &= 1<<(len(v.order)%64) - 1
			}
			for ; x != 0; x &= x - 1 {
				id := v.order[wi*64+bits.TrailingZeros64(x)]
				e.bits[id>>6] &^= 1 << (id & 63)
			}
		}
	} else {
		for wi, w := range pos {
			for x := w; x != 0; x &= x - 1 {
				id := v.order[wi*64+bits.TrailingZeros64(x)]
				e.bits[id>>6] |= 1 << (id & 63)
			}
		}
	}
	e.allowed = n
	if m.canEnd(mt.tops) {
		e.bits[v.eos>>6] |= 1 << (v.eos & 63)
		e.allowed++
	}
	if e.allowed <= v.n/8 {
		e.ids = make([]int32, 0, e.allowed)
		for wi, w := range e.bits {
			for ; w != 0; w &= w - 1 {
				e.ids = append(e.ids, int32(wi*64+bits.TrailingZeros64(w)))
			}
		}
		e.bits = nil
	}
	return e
}

// walk visits the children of trie node nd; m.sets[lo:] holds the stacks alive
// after nd's prefix. Each child's byte is stepped through them; a child no
// stack accepts is pruned with its subtree, a child some stack accepts allows
// the tokens ending there and is walked in turn, and a child below which a
// string state accepts everything (tnode.safe) allows its whole subtree.
// pos is the mask by trie position.
func (mt *Matcher) walk(nd int32, lo int, pos []uint64) {
	m, trie := &mt.m, mt.v.trie
	hi := len(m.sets)
	mark := len(m.arena)
	first := trie[nd].first
	for ch := first; ch < first+int32(trie[nd].n); ch++ {
		n := &trie[ch]
		m.sets = m.sets[:hi]
		m.arena = m.arena[:mark]
		c := int(n.by)
		for i := lo; i < hi; i++ {
			m.sets = m.step(m.sets[i], c, m.sets)
		}
		k := len(m.sets) - hi
		if k == 0 {
			continue
		}
		if k > 1 {
			k = min(m.dedup(m.sets[hi:]), maxInToken)
			m.sets = m.sets[:hi+k]
		}
		ss := m.stringStates(m.sets[hi:])
		if ss&n.safe != 0 {
			setRange(pos, n.lo, n.hi)
			continue
		}
		setRange(pos, n.lo, n.end)
		if n.n == 0 {
			continue
		}
		if k == 1 && ss != 0 {
			closed := m.closeString(m.sets[hi])
			mt.walkString(ch, closed, uint8(bits.TrailingZeros16(ss)), pos)
		} else {
			mt.walk(ch, hi, pos)
		}
	}
	m.sets = m.sets[:hi]
	m.arena = m.arena[:mark]
}

// walkString is walk for a single stack that is inside a string (a value or a
// map key) in lexer state s: the bytes inside the string only move the lexer
// state, so they are looked up in the lexer table with no frames made, until
// a closing quote hands the rest of the subtree back to walk with closed, the
// top the stack has after the string (the same wherever the string ends).
func (mt *Matcher) walkString(nd int32, closed int32, s uint8, pos []uint64) {
	m, trie := &mt.m, mt.v.trie
	first, last := trie[nd].first, trie[nd].first+int32(trie[nd].n)
	if s == lexNormal {
		setRange(pos, trie[nd].end, trie[nd].safeHi)
		first += int32(trie[nd].nSafe)
	}
	for ch := first; ch < last; ch++ {
		n := &trie[ch]
		ns, r := lex(s, int(n.by))
		switch r {
		case lexIn:
			if n.safe&(1<<ns) != 0 {
				setRange(pos, n.lo, n.hi)
				continue
			}
			setRange(pos, n.lo, n.end)
			if n.n > 0 {
				mt.walkString(ch, closed, ns, pos)
			}
		case lexClosed:
			setRange(pos, n.lo, n.end)
			if n.n > 0 {
				hi := len(m.sets)
				m.sets = append(m.sets, closed)
				mt.walk(ch, hi, pos)
				m.sets = m.sets[:hi]
			}
		}
	}
}

// stringStates is the set (bit per lexer state) of string states the stacks'
// tops are in.
func (m *machine) stringStates(tops []int32) uint16 {
	var s uint16
	for _, t := range tops {
		f := &m.arena[t].f
		switch m.g.nodes[f.node].kind {
		case kString:
			s |= 1 << f.phase
		case kMap:
			if f.phase == phKey {
				s |= 1 << f.b
			}
		}
	}
	return s
}

// setRange sets bits [lo, hi) of b.
func setRange(b []uint64, lo, hi int32) {
	if lo >= hi {
		return
	}
	wl, wh := lo>>6, (hi-1)>>6
	first := ^uint64(0) << (lo & 63)
	lastW := ^uint64(0) >> (63 - (hi-1)&63)
	if wl == wh {
		b[wl] |= first & lastW
		return
	}
	b[wl] |= first
	for w := wl + 1; w < wh; w++ {
		b[w] = ^uint64(0)
	}
	b[wh] |= lastW
}

var (
	negInf      = float32(math.Inf(-1))
	negInfBlock [64]float32
)

func init() {
	for i := range negInfBlock {
		negInfBlock[i] = negInf
	}
}

// maskEntry is the mask of one automaton state: when few tokens are allowed
// (at most an eighth), their ids; otherwise a bitset, bit i set when token i
// is allowed. Immutable once cached.
type maskEntry struct {
	bits    []uint64
	ids     []int32
	allowed int
}

func (e *maskEntry) size() int { return 8*len(e.bits) + 4*len(e.ids) + 64 }

// apply masks logits. A sparse mask saves the allowed logits, fills
// everything with -Inf (memmove speed) and puts them back; a dense one goes
// word by word: all allowed, skipped; none, a block copy of -Inf; mixed, the
// disallowed bits one by one. saved is scratch.
func (e *maskEntry) apply(logits []float32, saved *[]float32) {
	if e.ids != nil {
		sv := (*saved)[:0]
		for _, id := range e.ids {
			if int(id) < len(logits) {
				sv = append(sv, logits[id])
			}
		}
		if len(logits) > 0 {
			logits[0] = negInf
			for done := 1; done < len(logits); done *= 2 {
				copy(logits[done:], logits[:done])
			}
		}
		for i, id := range e.ids[:len(sv)] {
			logits[id] = sv[i]
		}
		*saved = sv
		return
	}
	full := min(len(logits)/64, len(e.bits))
	for i := 0; i < full; i++ {
		w := e.bits[i]
		switch w {
		case math.MaxUint64:
		case 0:
			copy(logits[i*64:i*64+64], negInfBlock[:])
		default:
			blk := (*[64]float32)(logits[i*64:])
			for x := ^w; x != 0; x &= x - 1 {
				blk[bits.TrailingZeros64(x)&63] = negInf
			}
		}
	}
	for i := full * 64; i < len(logits); i++ {
		if w := i >> 6; w >= len(e.bits) || e.bits[w]&(1<<(i&63)) == 0 {
			logits[i] = negInf
		}
	}
}

// maskCacheBytes bounds each (Grammar, Vocab) mask cache: some 2,500 masks of
// a 100K-token vocabulary.
const maskCacheBytes = 32 << 20

// maskCache is an LRU of masks by automaton state key, shared by the matchers
// of one (Grammar, Vocab), bounded by the bytes of its masks.
type maskCache struct {
	mu     sync.Mutex
	limit  int                      // bytes
	bytes  int                      // held
	items  map[string]*list.Element // of *cacheItem
	lru    list.List                // front: most recently used
	hits   atomic.Int64
	misses atomic.Int64
}

type cacheItem struct {
	key string
	e   *maskEntry
}

func (g *Grammar) cacheFor(v *Vocab) *maskCache {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.caches[v]; c != nil {
		return c
	}
	if g.caches == nil {
		g.caches = map[*Vocab]*maskCache{}
	}
	c := &maskCache{limit: maskCacheBytes, items: map[string]*list.Element{}}
	g.caches[v] = c
	return c
}

func (c *maskCache) get(key []byte) *maskEntry {
	c.mu.Lock()
	el, ok := c.items[string(key)]
	if ok {
		c.lru.MoveToFront(el)
	}
	c.mu.Unlock()
	if !ok {
		c.misses.Add(1)
		return nil
	}
	c.hits.Add(1)
	return el.Value.(*cacheItem).e
}

func (c *maskCache) put(key string, e *maskEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[key]; ok {
		return // computed concurrently by another matcher
	}
	c.items[key] = c.lru.PushFront(&cacheItem{key: key, e: e})
	c.bytes += len(key) + e.size()
	for c.bytes > c.limit && c.lru.Len() > 1 {
		old := c.lru.Back()
		it := old.Value.(*cacheItem)
		c.lru.Remove(old)
		delete(c.items, it.key)
		c.bytes -= len(it.key) + it.e.size()
	}
}
