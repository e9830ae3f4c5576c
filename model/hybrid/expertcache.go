package hybrid

import (
	"fmt"
	"os"
	"sync"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// ExpertCache shares the routed experts that loads with NoMmap copy into
// memory (only those: with a cache the other matrices stay mapped) between
// the models loaded from the same checkpoint: an expert node loads a model
// per assignment, and with a cache its next assignment takes the experts it
// keeps from the previous one instead of copying them again, so a
// re-placement copies only the experts that move in, and holds at most the
// union of the two assignments until the old one closes (as the page cache
// does for mapped weights).
//
// Each load copies its new experts into one arena of its own (a slab:
// anonymous memory in 2 MiB-aligned chunks advised for transparent huge
// pages, so that small experts, 1.3-4.5 MiB in H-Tiny, still sit on huge
// pages: on 4 KiB pages a cluster decoded about 10% slower). A slab is freed
// when no model holds any of its experts. So that slabs emptied by moves do
// not pin memory, a load takes an expert from the cache only if the new
// assignment keeps at least three quarters of that expert's slab, and copies
// it again otherwise: live slabs are at least 3/4 used once the old model
// closes. Safe for concurrent use.
type ExpertCache struct {
	mu sync.Mutex
	m  map[expertKey]*cachedExpert // the newest copy of each expert
}

type expertKey struct {
	src           string // the checkpoint: path, size and modification time
	layer, expert int
}

type cachedExpert struct {
	key   expertKey
	parts []tensor.Matrix
	slab  *slab
	refs  int // models holding it
}

// slab is the memory one load copied its new experts into.
type slab struct {
	arena       *fileio.Arena // filled by its load outside the cache's lock
	total, live int           // experts copied into it, those still held
	bytes       int64         // the size of those copies (counted under the lock)
}

// NewExpertCache returns an empty cache.
func NewExpertCache() *ExpertCache { return &ExpertCache{m: map[expertKey]*cachedExpert{}} }

// Len is the number of experts held (an expert copied twice, in an old slab
// and a new one, counts twice).
func (c *ExpertCache) Len() int {
	n, _ := c.usage()
	return n
}

// Bytes is the size of the experts held in the slabs.
func (c *ExpertCache) Bytes() int64 {
	_, b := c.usage()
	return b
}

func (c *ExpertCache) usage() (experts int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	slabs := map[*slab]bool{}
	for _, x := range c.m {
		slabs[x.slab] = true
	}
	for s := range slabs {
		experts += s.live
		bytes += s.bytes
	}
	return experts, bytes
}

// sourceID names a checkpoint path as it is now (size and modification
// time), so that a file replaced under the same name is not served from
// copies of the old one.
func sourceID(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return path
	}
	return fmt.Sprintf("%s\x00%d\x00%d", path, st.Size(), st.ModTime().UnixNano())
}

// expertPart is rows [r0, r1) of a stacked experts' matrix.
type expertPart struct {
	name   string
	stack  tensor.Matrix
	r0, r1 int
}

// cacheLoad is one model's use of the cache: the experts it may take from
// it, the slab its new copies go to, and what it holds.
type cacheLoad struct {
	c     *ExpertCache
	src   string
	reuse map[expertKey]*cachedExpert
	slab  *slab
	held  []*cachedExpert
	bytes int64 // size of the experts held
}

// begin starts a load of src keeping the experts in keep: it picks the
// cached experts the load will take (those whose slab the assignment keeps
// at least three quarters of) and takes their references at once, so that
// a model closing meanwhile cannot free them.
func (c *ExpertCache) begin(src string, keep map[[2]int]bool) *cacheLoad {
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := map[*slab]int{}
	for le := range keep {
		if x := c.m[expertKey{src, le[0], le[1]}]; x != nil {
			kept[x.slab]++
		}
	}
	cl := &cacheLoad{c: c, src: src, reuse: map[expertKey]*cachedExpert{}, slab: &slab{arena: &fileio.Arena{}}}
	for le := range keep {
		k := expertKey{src, le[0], le[1]}
		if x := c.m[k]; x != nil && 4*kept[x.slab] >= 3*x.slab.total {
			cl.reuse[k] = x
			cl.hold(x)
		}
	}
	return cl
}

// hold takes a reference on x for the load (c.mu held).
func (cl *cacheLoad) hold(x *cachedExpert) {
	x.refs++
	cl.held = append(cl.held, x)
	for _, m := range x.parts {
		cl.bytes += int64(m.Bytes())
	}
}

// get returns the expert's parts: the cached copy begin chose (and holds),
// or a new copy in the load's slab, which the load then holds.
func (cl *cacheLoad) get(layer, expert int, parts []expertPart) ([]tensor.Matrix, error) {
	k := expertKey{cl.src, layer, expert}
	if x := cl.reuse[k]; x != nil {
		return x.parts, nil
	}
	out := make([]tensor.Matrix, len(parts))
	for i, p := range parts {
		m, err := copyMatrix(cl.slab.arena, p.stack.Slice(p.r0, p.r1))
		if err != nil {
			return nil, fmt.Errorf("%s: copying expert %d of layer %d out of the map: %w", p.name, expert, layer, err)
		}
		out[i] = m
	}
	cl.c.mu.Lock()
	defer cl.c.mu.Unlock()
	x := &cachedExpert{key: k, parts: out, slab: cl.slab}
	cl.slab.total++
	cl.slab.live++
	for _, m := range out {
		cl.slab.bytes += int64(m.Bytes())
	}
	cl.c.m[k] = x // the newest copy; an older one lives on while a model holds it
	cl.hold(x)
	return x.parts, nil
}

// release drops the load's references; a slab left without a held expert is
// freed.
func (cl *cacheLoad) release() error {
	cl.c.mu.Lock()
	defer cl.c.mu.Unlock()
	var first error
	for _, x := range cl.held {
		if x.refs--; x.refs > 0 {
			continue
		}
		if cl.c.m[x.key] == x {
			delete(cl.c.m, x.key)
		}
		if x.slab.live--; x.slab.live == 0 {
			if err := x.slab.arena.Close(); err != nil && first == nil {
				first = err
			}
		}
	}
	cl.held = nil
	return first
}
