package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The worker pool: persistent goroutines that MatMul hands work to, so no
// goroutine is started per call. The calling goroutine works as participant 0.
// One call uses the pool at a time; a call that finds it busy runs on its own
// goroutine instead of waiting.
//
// Waking a parked goroutine costs 50 µs to 1 ms on a virtualised host (the
// idle vCPU has to be woken), far more than a decode matmul's share of work.
// So after each job a worker keeps polling for the next one for spinFor
// (yielding its P regularly) before it parks on its channel. Back-to-back
// matmuls, as in decode, therefore start on all threads within a microsecond.

// spinFor is how long an idle worker polls for new work before parking.
const spinFor = 300 * time.Microsecond

// task is one parallel job: every participant calls run with its own scratch
// until the shared work is exhausted.
type task interface {
	run(s *scratch)
}

// Worker states.
const (
	wParked   = iota // blocked on wake
	wSpinning        // polling state
	wHandoff         // a task was stored in job for the spinning worker
)

type worker struct {
	state   atomic.Int32
	job     task // written by the dispatcher before state becomes wHandoff
	wake    chan task
	scratch scratch
}

type workerPool struct {
	mu      sync.Mutex // held by the call using the workers
	workers []*worker
	pending atomic.Int32 // dispatched jobs not yet finished
}

// maxThreads bounds SetThreads.
const maxThreads = 256

var (
	pool       workerPool
	numThreads atomic.Int32
)

func init() {
	SetThreads(0)
}

// SetThreads sets how many threads (the caller included) MatMul uses; n <= 0
// means runtime.GOMAXPROCS(0). Workers are started lazily and kept.
func SetThreads(n int) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	numThreads.Store(int32(min(n, maxThreads)))
}

// Threads reports the number of threads MatMul uses.
func Threads() int { return int(numThreads.Load()) }

// ensureWorkers starts background workers until there are n. The caller holds pool.mu.
func (p *workerPool) ensureWorkers(n int) {
	for len(p.workers) < n {
		w := &worker{wake: make(chan task, 1)}
		w.state.Store(wParked)
		p.workers = append(p.workers, w)
		go w.loop(p)
	}
}

func (w *worker) loop(p *workerPool) {
	for t := range w.wake {
		for t != nil {
			t.run(&w.scratch)
			p.pending.Add(-1)
			t = w.spin()
		}
	}
}

// spin polls for a handed-off task for spinFor; nil means the worker parked.
// It does not yield: a spinning worker keeps its P (and OS thread) awake, so
// that a handoff is picked up at once and the caller keeps its own P.
func (w *worker) spin() task {
	w.state.Store(wSpinning)
	deadline := time.Now().Add(spinFor)
	for i := 0; ; i++ {
		if w.state.Load() == wHandoff {
			t := w.job
			w.job = nil
			return t
		}
		if i%256 == 255 && time.Now().After(deadline) && w.state.CompareAndSwap(wSpinning, wParked) {
			return nil
		}
	}
}

// dispatch hands t to w and reports whether w was parked (and had to be woken).
func (w *worker) dispatch(t task) (woken bool) {
	w.job = t
	if w.state.CompareAndSwap(wSpinning, wHandoff) {
		return false
	}
	w.job = nil
	w.wake <- t
	return true
}

// parallel runs t on up to threads participants: the caller (with scratch s)
// and threads-1 pool workers. With threads <= 1, or when another call holds
// the pool, it runs t on the caller alone.
func parallel(t task, threads int, s *scratch) {
	threads = min(threads, runtime.GOMAXPROCS(0))
	if threads <= 1 || !pool.mu.TryLock() {
		t.run(s)
		return
	}
	nw := threads - 1
	pool.ensureWorkers(nw)
	pool.pending.Store(int32(nw))
	woken := false
	for i := 0; i < nw; i++ {
		woken = pool.workers[i].dispatch(t) || woken
	}
	if woken {
		// A woken worker is queued on this P. Yield so it starts at once here;
		// this goroutine continues on the next P the runtime wakes.
		runtime.Gosched()
	}
	t.run(s)
	for pool.pending.Load() != 0 {
		runtime.Gosched()
	}
	pool.mu.Unlock()
}
