package hybrid

import (
	"sync"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
)

// The recurrent buffers of freed states, kept for new ones.
//
// A state's recurrent part is one buffer (newRecurrent): 10.5 MiB for the
// 8-layer H-Tiny file, 55 MiB for H-Tiny's 36 Mamba layers. Allocated from
// Go's heap, a new buffer often lands on memory the runtime has given back
// to the kernel in the meantime (its background scavenger returns freed
// spans once the heap shrinks), and the first scan that writes it then
// faults it in again 4 KiB at a time: a 4-token prefill's scan took 13-19 ms
// instead of 0.5-0.8 ms that way in `bench` (perf: the faults in
// ssmrows512N128), and a serving trunk showed it as a slower first token
// after an idle spell. A state dropped for good (Free) hands its buffer to
// this pool, which stays resident because it is referenced, and the next
// state of the same size takes it and zeroes it (a memset, no faults). As
// vLLM keeps its Mamba states in slots of a buffer allocated once.
//
// The pool holds at most recPoolLimit bytes (SetRecurrentPoolLimit); a
// buffer that does not fit is left to the garbage collector.
type recPool struct {
	mu    sync.Mutex
	free  map[int][][]float32 // by length, most recently freed last
	bytes int64
	limit int64
}

// DefaultRecurrentPoolLimit is the default of SetRecurrentPoolLimit: a few
// freed states of the largest models, enough for sessions that come and go
// one after another.
const DefaultRecurrentPoolLimit = 256 << 20

var recurrentPool = recPool{free: map[int][][]float32{}, limit: DefaultRecurrentPoolLimit}

// SetRecurrentPoolLimit sets how many bytes of freed states' recurrent
// buffers are kept for new states (0: none; negative values count as 0),
// dropping buffers beyond it, and returns the previous limit. Kept buffers
// are memory no session budget counts.
func SetRecurrentPoolLimit(bytes int64) (prev int64) {
	p := &recurrentPool
	p.mu.Lock()
	defer p.mu.Unlock()
	prev, p.limit = p.limit, max(bytes, 0)
	for n, list := range p.free {
		for len(list) > 0 && p.bytes > p.limit {
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			p.bytes -= 4 * int64(n)
		}
		if len(list) == 0 {
			delete(p.free, n)
		} else {
			p.free[n] = list
		}
	}
	return prev
}

// RecurrentPoolBytes is the memory the pool holds now.
func RecurrentPoolBytes() int64 {
	p := &recurrentPool
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// take returns a pooled buffer of n values, not zeroed, or nil.
func (p *recPool) take(n int) []float32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.free[n]
	if len(list) == 0 {
		return nil
	}
	b := list[len(list)-1]
	list[len(list)-1] = nil
	p.free[n] = list[:len(list)-1]
	p.bytes -= 4 * int64(n)
	return b
}

// put keeps b for a later take if it fits the limit.
func (p *recPool) put(b []float32) {
	if len(b) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+4*int64(len(b)) > p.limit {
		return
	}
	p.free[len(b)] = append(p.free[len(b)], b[:len(b):len(b)])
	p.bytes += 4 * int64(len(b))
}

// newRecurrent returns n zeroed float32s for the recurrent parts of one
// state (every Mamba layer's conv and SSM state, sliced with their capacity
// capped): a freed state's buffer from the pool, cleared, or else a new one
// whose whole 2 MiB pages are advised as huge pages (a new session's first
// prefill writes all of it; fileio.AdviseHugePages; TestRecurrentOneBuffer).
func newRecurrent(n int) []float32 {
	if n == 0 {
		return nil
	}
	if rec := recurrentPool.take(n); rec != nil {
		clear(rec)
		return rec
	}
	rec := make([]float32, n)
	fileio.AdviseHugePages(unsafe.Slice((*byte)(unsafe.Pointer(&rec[0])), 4*n))
	return rec
}
