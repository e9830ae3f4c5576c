package trunknode

import (
	"container/list"
	"encoding/binary"
	"hash/maphash"
	"slices"

	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// The prefix cache: state checkpoints at shared prompt prefixes that stateless
// requests resume from.
//
// A Transformer server reuses the KV blocks of a shared prefix. A hybrid
// cannot: the Mamba layers' state at a position is not rebuilt from part of a
// prefix. So the cache keeps checkpoints of the whole session state at chosen
// positions: the conv and SSM states (copies) and the KV pages up to there
// (shared copy-on-write with the session that made them and with every session
// resumed from them; see hybrid.KVCache).
//
// Keys. A prompt is cut into blocks of B = hybrid.PageTokens tokens (so a
// checkpoint's KV pages are all full and are never copied), and block i is
// keyed by the hash chain h_i = hash(h_{i-1}, tokens of block i): h_i names
// the prefix of (i+1)·B tokens. A lookup walks the chain of the prompt and
// resumes from the deepest checkpoint whose prefix it starts with, keeping at
// least the prompt's last token to prefill (its logits give the first sampled
// token). Each checkpoint also keeps its prefix's tokens, compared on lookup,
// so a hash collision can never resume a wrong state.
//
// Policy. The prefill of a stateless request leaves a checkpoint
//   - at the end of the prompt's longest block-aligned prefix (⌊L/B⌋·B): the
//     next turn of a conversation sent statelessly (history + reply + new
//     message) resumes there;
//   - at the block boundary just before the end of a prefix that an earlier
//     prompt had too (a shared system prompt): the deepest block of the prompt
//     whose chain hash was seen before. Hashes of past prompts' blocks are
//     remembered, without state, in a bounded set (seenKeys); so the second
//     request with a shared prefix leaves the checkpoint and the third on
//     resume from it, whatever the prefix's length;
//   - every Every blocks when Every > 0 (long prompts: later prompts that
//     share a part of them resume from the nearest one before they diverge).
//
// Boundaries that are already cached, or at or before the resume point, are
// skipped. The scheduler ends a prefill chunk at each boundary (so no extra
// forward work is done) and copies the state there (checkpoint): the cost of
// a checkpoint is one copy of the recurrent state, on the scheduler's
// goroutine (H-Tiny: 55 MiB), and its memory.
//
// Memory. A checkpoint costs the recurrent state (RecurrentBytes of a session)
// plus the KV pages that no other checkpoint holds; pages shared with live
// sessions are counted once in the store's page account. The cache holds at
// most Bytes of both, evicting least recently used checkpoints, and is
// counted in the store's budgets: a session that needs room evicts
// checkpoints first (the cache yields to sessions). A checkpoint being copied
// for a resume is pinned meanwhile.
//
// Exactness. A resumed request computes the same function as a full prefill:
// with float32 weights and the trunk's recurrent scan the logits are bitwise
// those of the full prefill (the scan, the attention and float32 products are
// the same whatever the chunking); with bf16 weights the products' rounding
// depends on how many rows a step holds, so they agree to float rounding
// (README: Prefix cache).

// PrefixConfig configures the prefix cache.
type PrefixConfig struct {
	Bytes int64 // memory of the checkpoints (recurrent + KV); 0: off
	Block int   // tokens per block, a multiple of hybrid.PageTokens (0: hybrid.PageTokens)
	Every int   // also checkpoint every this many blocks (0: off)
}

// seenKeys bounds how many block hashes of past prompts are remembered
// (8 bytes each in a ring, plus a map entry).
const seenKeys = 1 << 16

// PrefixStats are the prefix cache's counters and sizes.
type PrefixStats struct {
	Lookups     uint64 // stateless prompts longer than a block (they could resume)
	Hits        uint64 // of which resumed from a checkpoint
	SavedTokens uint64 // prompt tokens not prefilled thanks to a checkpoint
	Inserts     uint64 // checkpoints stored
	Evictions   uint64 // checkpoints evicted for the cache's own budget
	Yielded     uint64 // checkpoints evicted to make room for sessions
	Entries     int
	// RecurrentBytes and KVBytes are the memory the checkpoints hold (KV: the
	// distinct pages, some of them shared with running sessions); LimitBytes
	// bounds their sum.
	RecurrentBytes, KVBytes, LimitBytes int64
}

// prefixCache is guarded by the Store's mutex (its budget is the store's).
type prefixCache struct {
	cfg    PrefixConfig
	recPer int64 // recurrent bytes of one checkpoint
	seed   maphash.Seed

	entries map[uint64]*prefixEntry
	lru     list.List // of *prefixEntry, most recently used first
	pages   hybrid.PageSet
	rec     int64
	seen    seenSet
	stats   PrefixStats
}

// prefixEntry is one checkpoint: the state after the prefix tokens.
type prefixEntry struct {
	key    uint64
	tokens []int32 // the prefix (len = state.Pos)
	state  *hybrid.State
	elem   *list.Element
	pins   int // resumes copying the state right now
}

// prefixPlan is what a stateless generation does with the cache: the prompt
// tokens its state already holds (skip), and where its prefill leaves
// checkpoints (marks, ascending positions).
type prefixPlan struct {
	skip   int
	marks  []int
	keys   []uint64 // chain hashes of the prompt's full blocks
	tokens []int    // the prompt
}

func newPrefixCache(cfg PrefixConfig, recPer int64) *prefixCache {
	if cfg.Block <= 0 {
		cfg.Block = hybrid.PageTokens
	}
	cfg.Block = (cfg.Block + hybrid.PageTokens - 1) / hybrid.PageTokens * hybrid.PageTokens
	return &prefixCache{cfg: cfg, recPer: recPer, seed: maphash.MakeSeed(), entries: map[uint64]*prefixEntry{}}
}

// chain returns the hash chain of the first n full blocks of tokens.
func (c *prefixCache) chain(tokens []int, n int) []uint64 {
	B := c.cfg.Block
	buf := make([]byte, 8+4*B)
	keys := make([]uint64, n)
	var prev uint64
	for i := range keys {
		binary.LittleEndian.PutUint64(buf, prev)
		for j, t := range tokens[i*B : (i+1)*B] {
			binary.LittleEndian.PutUint32(buf[8+4*j:], uint32(t))
		}
		prev = maphash.Bytes(c.seed, buf)
		keys[i] = prev
	}
	return keys
}

func (c *prefixCache) bytes() int64 { return c.rec + c.pages.Bytes() }

// find returns the checkpoint of key if it holds exactly tokens[:pos].
func (c *prefixCache) find(key uint64, tokens []int, pos int) *prefixEntry {
	e := c.entries[key]
	if e == nil || len(e.tokens) != pos {
		return nil
	}
	for i, t := range e.tokens {
		if int(t) != tokens[i] {
			return nil
		}
	}
	return e
}

// marks applies the policy (see the file comment) to a prompt of L tokens
// whose state starts at position p.
func (c *prefixCache) marks(keys []uint64, L, p int) []int {
	B := c.cfg.Block
	var out []int
	add := func(blocks int) {
		pos := blocks * B
		if pos > p && pos <= L && c.entries[keys[blocks-1]] == nil && !slices.Contains(out, pos) {
			out = append(out, pos)
		}
	}
	nb := len(keys)
	if nb > 0 {
		add(nb)
	}
	for i := nb; i >= 1; i-- {
		if c.seen.has(keys[i-1]) {
			add(i)
			break
		}
	}
	if c.cfg.Every > 0 {
		for i := c.cfg.Every; i <= nb; i += c.cfg.Every {
			add(i)
		}
	}
	slices.Sort(out)
	return out
}

// evictOne drops the least recently used checkpoint that is not pinned; it
// reports whether there was one.
func (c *prefixCache) evictOne() bool {
	for el := c.lru.Back(); el != nil; el = el.Prev() {
		e := el.Value.(*prefixEntry)
		if e.pins > 0 {
			continue
		}
		c.remove(e)
		return true
	}
	return false
}

func (c *prefixCache) remove(e *prefixEntry) {
	delete(c.entries, e.key)
	c.lru.Remove(e.elem)
	c.pages.Remove(e.state)
	c.rec -= c.recPer
	e.state.Free() // unpinned: no resume is copying it
}

func (c *prefixCache) snapshot() PrefixStats {
	st := c.stats
	st.Entries = len(c.entries)
	st.RecurrentBytes, st.KVBytes, st.LimitBytes = c.rec, c.pages.Bytes(), c.cfg.Bytes
	return st
}

// seenSet remembers up to seenKeys block hashes, forgetting the oldest first.
type seenSet struct {
	keys map[uint64]struct{}
	ring []uint64
	next int
}

func (s *seenSet) has(k uint64) bool {
	_, ok := s.keys[k]
	return ok
}

func (s *seenSet) add(k uint64) {
	if s.keys == nil {
		s.keys = map[uint64]struct{}{}
	}
	if s.has(k) {
		return
	}
	if len(s.ring) < seenKeys {
		s.ring = append(s.ring, k)
	} else {
		delete(s.keys, s.ring[s.next])
		s.ring[s.next] = k
		s.next = (s.next + 1) % seenKeys
	}
	s.keys[k] = struct{}{}
}

// EnablePrefixCache turns the prefix cache on (cfg.Bytes > 0) or off. Call it
// before the store is used.
func (s *Store) EnablePrefixCache(cfg PrefixConfig) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cfg.Bytes <= 0 {
		s.prefix = nil
		return
	}
	s.prefix = newPrefixCache(cfg, s.recPer)
}

// PrefixStats reports the prefix cache's counters (zero when it is off).
func (s *Store) PrefixStats() PrefixStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.prefix == nil {
		return PrefixStats{}
	}
	return s.prefix.snapshot()
}

// ResumePrefix prepares a fresh ephemeral session for a stateless prompt. When
// the prompt starts with a cached prefix, the session's state becomes a copy
// of the deepest such checkpoint (recurrent state copied, KV pages shared) and
// the generation submitted next prefills only the rest; the plan also says
// where this prompt's prefill leaves checkpoints (Scheduler.Submit takes it).
// It returns the prompt tokens the state holds. With the cache off, or for a
// session that is not fresh, it does nothing.
func (s *Store) ResumePrefix(sess *Session, prompt []int) int {
	s.mu.Lock()
	c := s.prefix
	s.mu.Unlock()
	if c == nil || sess.State.Pos != 0 || len(sess.Unfed) > 0 || len(prompt) < c.cfg.Block {
		return 0
	}
	B, L := c.cfg.Block, len(prompt)
	keys := c.chain(prompt, L/B) // the seed never changes: no lock needed

	s.mu.Lock()
	var hit *prefixEntry
	if L > B {
		c.stats.Lookups++
		for i := (L - 1) / B; i >= 1 && hit == nil; i-- {
			hit = c.find(keys[i-1], prompt, i*B)
		}
	}
	p := 0
	if hit != nil {
		hit.pins++
		c.lru.MoveToFront(hit.elem)
		p = hit.state.Pos
		c.stats.Hits++
		c.stats.SavedTokens += uint64(p)
	}
	plan := &prefixPlan{skip: p, marks: c.marks(keys, L, p), keys: keys, tokens: prompt}
	for _, k := range keys {
		c.seen.add(k)
	}
	s.mu.Unlock()

	if hit != nil {
		// Copy outside the lock (the recurrent state can be tens of MiB); the
		// pin keeps the checkpoint from being evicted meanwhile.
		st := hit.state.Clone()
		s.mu.Lock()
		hit.pins--
		s.mu.Unlock()
		old := sess.State
		sess.State = st
		old.Free() // the fresh state nobody else has seen
	}
	sess.prefix = plan
	return p
}

// checkpoint stores a copy of st (at one of plan's marks) in the cache, unless
// that prefix is cached already or it does not fit: the cache's budget and
// the recurrent-state budget are made room for by evicting older checkpoints
// only. Its KV pages need no room: they are the session's, counted already.
func (s *Store) checkpoint(plan *prefixPlan, st *hybrid.State) {
	s.mu.Lock()
	c := s.prefix
	if c == nil {
		s.mu.Unlock()
		return
	}
	pos := st.Pos
	key := plan.keys[pos/c.cfg.Block-1]
	_, exists := c.entries[key]
	s.mu.Unlock()
	if exists || c.recPer > c.cfg.Bytes {
		return // cached already, or no checkpoint can ever fit: do not copy
	}
	ck := st.Clone() // outside the lock: the scheduler owns st

	s.mu.Lock()
	defer s.mu.Unlock()
	fits := func() bool {
		return c.bytes()+c.recPer+c.pages.NewBytes(ck) <= c.cfg.Bytes &&
			s.recUsed+c.rec+c.recPer <= s.cfg.RecurrentBytes
	}
	if _, ok := c.entries[key]; ok || c.recPer+c.pages.NewBytes(ck) > c.cfg.Bytes {
		ck.Free()
		return
	}
	for !fits() {
		if !c.evictOne() {
			ck.Free()
			return
		}
		c.stats.Evictions++
	}
	tokens := make([]int32, pos)
	for i, t := range plan.tokens[:pos] {
		tokens[i] = int32(t)
	}
	e := &prefixEntry{key: key, tokens: tokens, state: ck}
	e.elem = c.lru.PushFront(e)
	c.entries[key] = e
	c.pages.Add(ck)
	c.rec += c.recPer
	c.stats.Inserts++
}
