package hybrid

import (
	"fmt"
	"os"
	"sync"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// ExpertCache shares the routed experts that loads with NoMmap copy into
// memory between the models loaded from the same checkpoint: an expert node
// loads a model per assignment, and with a cache its next assignment takes
// the experts it keeps from the previous one instead of copying them again,
// so a re-placement copies only the experts that move in, and holds at most
// the union of the two assignments (as the page cache does for mapped
// weights). Each expert is copied into its own anonymous memory (rounded to
// 4 KiB, advised for transparent huge pages), released when the last model
// holding it closes. Safe for concurrent use.
type ExpertCache struct {
	mu sync.Mutex
	m  map[expertKey]*cachedExpert
}

type expertKey struct {
	src           string // the checkpoint: path, size and modification time
	layer, expert int
}

type cachedExpert struct {
	parts []tensor.Matrix
	arena *fileio.Arena
	refs  int
}

// NewExpertCache returns an empty cache.
func NewExpertCache() *ExpertCache { return &ExpertCache{m: map[expertKey]*cachedExpert{}} }

// Len is the number of experts held.
func (c *ExpertCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Bytes is the size of the experts held.
func (c *ExpertCache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, x := range c.m {
		n += x.arena.Bytes()
	}
	return n
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

// acquire returns the expert's parts, copied from the stacks unless the
// cache holds them already, with a reference taken for the caller.
func (c *ExpertCache) acquire(src string, layer, expert int, parts []expertPart) ([]tensor.Matrix, error) {
	k := expertKey{src, layer, expert}
	c.mu.Lock()
	defer c.mu.Unlock()
	if x := c.m[k]; x != nil {
		x.refs++
		return x.parts, nil
	}
	size := 0
	for _, p := range parts {
		size += (p.r1-p.r0)*p.stack.RowStride() + 63
	}
	a := fileio.NewArena((size + 4095) &^ 4095)
	out := make([]tensor.Matrix, len(parts))
	for i, p := range parts {
		m := p.stack.Slice(p.r0, p.r1)
		data, err := a.Copy(m.Data)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("%s: copying expert %d of layer %d out of the map: %w", p.name, expert, layer, err)
		}
		m.Data = data
		out[i] = m
	}
	c.m[k] = &cachedExpert{parts: out, arena: a, refs: 1}
	return out, nil
}

// release drops a reference taken by acquire; the last one frees the expert.
func (c *ExpertCache) release(src string, layer, expert int) error {
	k := expertKey{src, layer, expert}
	c.mu.Lock()
	defer c.mu.Unlock()
	x := c.m[k]
	if x == nil {
		return nil
	}
	if x.refs--; x.refs > 0 {
		return nil
	}
	delete(c.m, k)
	return x.arena.Close()
}
