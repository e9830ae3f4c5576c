package hybrid

import (
	"sync"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// The memory of dropped sessions, kept for new ones: recurrent buffers and
// KV pages.
//
// A state's recurrent part is one buffer (recurrentBuffer): 10.5 MiB for the
// 8-layer H-Tiny file, 55 MiB for H-Tiny's 36 Mamba layers; a KV page is
// 512 KiB at H-Tiny's widths in bf16. Allocated from Go's heap, a new buffer
// often lands on memory that is not resident (the heap grown since the last
// collection, or spans the runtime's scavenger gave back to the kernel;
// GODEBUG=madvdontneed=0 did not change it), and whoever first touches it
// faults it in 4 KiB at a time:
// a 4-token prefill's scan took 13-19 ms instead of 0.5-0.8 ms that way in
// `bench` (perf: the faults in ssmrows512N128), and in a serving trunk the
// KV pages of each new session were faulted in twice, read by the attention
// product before their slots were written and then written. A state dropped
// for good (State.Free) hands its recurrent buffer to this pool, and a page
// whose last holder lets it go hands its values; both stay resident, being
// referenced, and the next state or page of the same size takes them, zeroed
// (a memset, no faults). As vLLM keeps its Mamba states and KV blocks in
// buffers allocated once.
//
// The pool holds at most its limit in bytes (SetStatePoolLimit), the kinds
// together; what does not fit is left to the garbage collector.
type statePool struct {
	mu    sync.Mutex
	f32   map[int][][]float32 // recurrent buffers and F32 pages, by length, most recently freed last
	u16   map[int][][]uint16  // BF16 pages
	u8    map[int][][]byte    // Q8_0 pages
	bytes int64
	limit int64
}

// DefaultStatePoolLimit is the default of SetStatePoolLimit: a few freed
// states of the largest models and their pages, enough for sessions that
// come and go one after another.
const DefaultStatePoolLimit = 256 << 20

var pool = statePool{f32: map[int][][]float32{}, u16: map[int][][]uint16{}, u8: map[int][][]byte{}, limit: DefaultStatePoolLimit}

// SetStatePoolLimit sets how many bytes of dropped sessions' memory
// (recurrent buffers and KV pages) are kept for new sessions (0: none;
// negative values count as 0), dropping what is beyond it, and returns the
// previous limit. Kept memory is not counted by any session budget.
func SetStatePoolLimit(bytes int64) (prev int64) {
	p := &pool
	p.mu.Lock()
	defer p.mu.Unlock()
	prev, p.limit = p.limit, max(bytes, 0)
	trim(p, p.f32)
	trim(p, p.u16)
	trim(p, p.u8)
	return prev
}

// StatePoolBytes is the memory the pool holds now.
func StatePoolBytes() int64 {
	p := &pool
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// elemBytes is the size of one T.
func elemBytes[T float32 | uint16 | byte]() int64 {
	var z T
	return int64(unsafe.Sizeof(z))
}

// trim drops m's buffers while the pool is over its limit (p.mu held).
func trim[T float32 | uint16 | byte](p *statePool, m map[int][][]T) {
	for n, list := range m {
		for len(list) > 0 && p.bytes > p.limit {
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			p.bytes -= int64(n) * elemBytes[T]()
		}
		if len(list) == 0 {
			delete(m, n)
		} else {
			m[n] = list
		}
	}
}

// take returns a pooled buffer of n elements from m, zeroed, or nil.
func take[T float32 | uint16 | byte](m map[int][][]T, n int) []T {
	b := takeDirty(m, n)
	clear(b)
	return b
}

// takeDirty is take without the zeroing, for a caller that overwrites
// every element.
func takeDirty[T float32 | uint16 | byte](m map[int][][]T, n int) []T {
	p := &pool
	p.mu.Lock()
	list := m[n]
	if len(list) == 0 {
		p.mu.Unlock()
		return nil
	}
	b := list[len(list)-1]
	list[len(list)-1] = nil
	m[n] = list[:len(list)-1]
	p.bytes -= int64(n) * elemBytes[T]()
	p.mu.Unlock()
	return b
}

// give keeps b in m for a later take if it fits the limit.
func give[T float32 | uint16 | byte](m map[int][][]T, b []T) {
	if len(b) == 0 {
		return
	}
	p := &pool
	p.mu.Lock()
	defer p.mu.Unlock()
	sz := int64(len(b)) * elemBytes[T]()
	if p.bytes+sz > p.limit {
		return
	}
	m[len(b)] = append(m[len(b)], b[:len(b):len(b)])
	p.bytes += sz
}

// recurrentBuffer returns n float32s for the recurrent parts of one state
// (every Mamba layer's conv and SSM state, sliced with their capacity
// capped): a freed state's buffer from the pool, zeroed when zero is set
// (Clone and DecodeState write every value), or else a new, zeroed one whose
// whole 2 MiB pages are advised as huge pages (a new session's first prefill
// writes all of it; fileio.AdviseHugePages; TestRecurrentOneBuffer).
func recurrentBuffer(n int, zero bool) []float32 {
	if n == 0 {
		return nil
	}
	if rec := takeDirty(pool.f32, n); rec != nil {
		if zero {
			clear(rec)
		}
		return rec
	}
	rec := make([]float32, n)
	fileio.AdviseHugePages(unsafe.Slice((*byte)(unsafe.Pointer(&rec[0])), 4*n))
	return rec
}

// newPageValues returns a page's zeroed values for a cache of type dt (the
// one slice of data, half and q8 that dt uses), from the pool when it holds
// one.
func newPageValues(c *KVCache) (data []float32, half []uint16, q8 []byte) {
	switch c.dt {
	case tensor.BF16:
		if half = take(pool.u16, c.pageFloats()); half == nil {
			half = make([]uint16, c.pageFloats())
		}
	case tensor.Q8_0:
		if q8 = take(pool.u8, int(c.pageBytes())); q8 == nil {
			q8 = make([]byte, c.pageBytes())
		}
	default:
		if data = take(pool.f32, c.pageFloats()); data == nil {
			data = make([]float32, c.pageFloats())
		}
	}
	return data, half, q8
}

// poolPage hands the values of a page nobody holds any more to the pool.
func poolPage(p *kvPage) {
	give(pool.f32, p.data)
	give(pool.u16, p.half)
	give(pool.u8, p.q8)
	p.data, p.half, p.q8 = nil, nil, nil
}
