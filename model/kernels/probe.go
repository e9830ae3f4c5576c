package kernels

import (
	"encoding/binary"
	"sync"
	"time"
	"unsafe"
)

// Machine probes, so benchmarks can report achieved/peak ratios.

// Bandwidth holds the results of MeasureBandwidthDetail in bytes per second,
// counted the STREAM way (copy: 2 bytes per byte copied, triad: 3 per
// element byte, read: 1).
type Bandwidth struct {
	Copy, Triad, Read float64
}

// Best is the largest of the three rates.
func (b Bandwidth) Best() float64 { return max(b.Copy, b.Triad, b.Read) }

// bandwidthBytes is the total footprint of the probe buffers (three arrays).
const bandwidthBytes = 1 << 30

// MeasureBandwidth measures main-memory bandwidth with threads goroutines
// (threads <= 0: Threads()) over about 1 GiB of buffers and returns the best of
// the copy, triad and read rates in bytes per second. Decode matmuls only
// read weights, so the read rate is normally the one that bounds them. It
// takes about a second (the buffers are freshly allocated and touched).
func MeasureBandwidth(threads int) (bytesPerSec float64) {
	return MeasureBandwidthDetail(threads).Best()
}

// MeasureBandwidthDetail is MeasureBandwidth with every rate reported.
func MeasureBandwidthDetail(threads int) Bandwidth {
	if threads <= 0 {
		threads = Threads()
	}
	// Three float32 arrays; each part is a multiple of 64 floats (256 bytes).
	n := bandwidthBytes / 3 / 4
	unit := 64 * threads
	n = n / unit * unit
	a := make([]float32, n)
	b := make([]float32, n)
	c := make([]float32, n)
	part := n / threads
	runParts(threads, func(t int) {
		lo, hi := t*part, (t+1)*part
		for i := lo; i < hi; i++ {
			a[i], b[i], c[i] = 0, 1, 2
		}
	})
	var bw Bandwidth
	var sink uint64
	var mu sync.Mutex
	bytes := float64(4 * n)
	for rep := 0; rep < 3; rep++ {
		d := timeParts(threads, func(t int) {
			lo, hi := t*part, (t+1)*part
			copy(a[lo:hi], b[lo:hi])
		})
		bw.Copy = max(bw.Copy, 2*bytes/d)
		d = timeParts(threads, func(t int) {
			lo, hi := t*part, (t+1)*part
			triadProbe(a[lo:hi], b[lo:hi], c[lo:hi], 3)
		})
		bw.Triad = max(bw.Triad, 3*bytes/d)
		d = timeParts(threads, func(t int) {
			var s uint64
			for _, arr := range [][]float32{a, b, c} {
				p := arr[t*part : (t+1)*part]
				s ^= readProbe(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(p))), 4*len(p)))
			}
			mu.Lock()
			sink ^= s
			mu.Unlock()
		})
		bw.Read = max(bw.Read, 3*bytes/d)
	}
	_ = sink
	return bw
}

// ReadProbe measures read bandwidth quickly and repeatedly over one
// buffer allocated once, so that a benchmark can measure it beside each of
// its repetitions (on a shared machine the bandwidth moves between
// repetitions, and a ratio to a bandwidth measured minutes before moves with
// it).
type ReadProbe struct {
	buf []byte
}

// NewReadProbe allocates and touches a probe buffer of about bytes bytes
// (at least 64 MiB is needed to read past the caches).
func NewReadProbe(bytes int) *ReadProbe {
	b := make([]byte, bytes&^4095)
	for i := 0; i < len(b); i += 4096 {
		b[i] = byte(i >> 12)
	}
	return &ReadProbe{buf: b}
}

// Measure reads the buffer twice with threads goroutines (threads <= 0:
// Threads()) and returns the faster pass's rate in bytes per second.
func (p *ReadProbe) Measure(threads int) float64 {
	if threads <= 0 {
		threads = Threads()
	}
	return max(readRate(p.buf, threads), readRate(p.buf, threads))
}

// readRate reads buf once with threads goroutines, each its share (a
// multiple of 256 bytes, the rest unread), started together, and returns
// the bytes read per second.
func readRate(buf []byte, threads int) float64 {
	part := len(buf) / threads &^ 255
	d := timeParts(threads, func(t int) { readProbe(buf[t*part : (t+1)*part]) })
	return float64(threads*part) / d
}

// MeasureFMAPeak measures the float32 FMA throughput of threads goroutines
// (threads <= 0: Threads()) running independent vector FMAs of the widest
// available level, in flops (2 per multiply-add lane) per second.
func MeasureFMAPeak(threads int) (flopsPerSec float64) {
	if threads <= 0 {
		threads = Threads()
	}
	const iters = 4 << 20
	per := fmaProbe(1)
	if per == 0 {
		per = 16
	}
	best := 0.0
	for rep := 0; rep < 3; rep++ {
		d := timeParts(threads, func(int) {
			if fmaProbe(iters) == 0 {
				fmaGo(iters)
			}
		})
		best = max(best, float64(threads)*float64(iters)*float64(per)/d)
	}
	return best
}

// fmaGo is the portable FMA probe: 8 independent multiply-add chains (16 flops
// per iteration).
func fmaGo(iters int) float32 {
	var a0, a1, a2, a3, a4, a5, a6, a7 float32
	m, c := float32(0.999), float32(1e-3)
	for i := 0; i < iters; i++ {
		a0 = a0*m + c
		a1 = a1*m + c
		a2 = a2*m + c
		a3 = a3*m + c
		a4 = a4*m + c
		a5 = a5*m + c
		a6 = a6*m + c
		a7 = a7*m + c
	}
	return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7
}

func readGo(b []byte) uint64 {
	var s uint64
	for i := 0; i+8 <= len(b); i += 8 {
		s ^= binary.LittleEndian.Uint64(b[i:])
	}
	return s
}

func triadGo(a, b, c []float32, s float32) {
	b, c = b[:len(a)], c[:len(a)]
	for i := range a {
		a[i] = b[i] + s*c[i]
	}
}

func runParts(threads int, f func(t int)) {
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(t)
		}()
	}
	wg.Wait()
}

// timeParts runs f on threads goroutines that start together and returns the
// wall time in seconds.
func timeParts(threads int, f func(t int)) float64 {
	var ready, wg sync.WaitGroup
	start := make(chan struct{})
	ready.Add(threads)
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-start
			f(t)
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	wg.Wait()
	return time.Since(t0).Seconds()
}
