package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// The worker pool: persistent goroutines that MatMul wakes for each call, so no
// goroutine is started per call. The calling goroutine works as worker 0. One
// call uses the pool at a time; a call that finds it busy runs on its own
// goroutine instead of waiting.

// task is one parallel job: every participant calls run with its own scratch
// until the shared work is exhausted.
type task interface {
	run(s *scratch)
}

type worker struct {
	wake    chan task
	scratch scratch
}

type workerPool struct {
	mu      sync.Mutex // held by the call using the workers
	workers []*worker  // background workers (threads-1 are used)
	done    chan struct{}
}

var (
	pool       workerPool
	numThreads atomic.Int32
	spawnMu    sync.Mutex
)

func init() {
	numThreads.Store(int32(runtime.GOMAXPROCS(0)))
}

// SetThreads sets how many threads (the caller included) MatMul uses; n <= 0
// means runtime.GOMAXPROCS(0). Workers are started lazily and kept.
func SetThreads(n int) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	numThreads.Store(int32(n))
}

// Threads reports the number of threads MatMul uses.
func Threads() int { return int(numThreads.Load()) }

// ensureWorkers starts background workers until there are n. The caller holds pool.mu.
func (p *workerPool) ensureWorkers(n int) {
	if len(p.workers) >= n {
		return
	}
	if p.done == nil || cap(p.done) < n {
		// Only grown while no worker is running (pool.mu is held and every
		// previous call has drained done).
		p.done = make(chan struct{}, max(n, 8))
	}
	for len(p.workers) < n {
		w := &worker{wake: make(chan task, 1)}
		p.workers = append(p.workers, w)
		go w.loop(p)
	}
}

func (w *worker) loop(p *workerPool) {
	for t := range w.wake {
		t.run(&w.scratch)
		p.done <- struct{}{}
	}
}

// parallel runs t on up to threads participants: the caller (with scratch s)
// and threads-1 pool workers. With threads <= 1, or when another call holds
// the pool, it runs t on the caller alone.
func parallel(t task, threads int, s *scratch) {
	if threads <= 1 || !pool.mu.TryLock() {
		t.run(s)
		return
	}
	nw := threads - 1
	pool.ensureWorkers(nw)
	done := pool.done
	for i := 0; i < nw; i++ {
		pool.workers[i].wake <- t
	}
	t.run(s)
	for i := 0; i < nw; i++ {
		<-done
	}
	pool.mu.Unlock()
}
