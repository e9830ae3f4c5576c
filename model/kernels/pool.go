package kernels

import (
	"runtime"
	"sync/atomic"
	"time"
)

// The worker pool: persistent goroutines that MatMul hands work to, so no
// goroutine is started per call. The calling goroutine works as participant 0.
// One call uses the pool at a time. A call that finds it busy waits for it
// when the pool's threads fill every P (there is no idle P to run on: a call
// running alone would only take turns with the pool's participants, and both
// run slower; this is what happens when several nodes share one process, as
// in `switchyard up` and bench-cluster); with spare Ps it runs on its own
// goroutine instead of waiting.
//
// Waking a parked goroutine costs 50 µs to 1 ms on a virtualised host (the
// idle vCPU has to be woken), far more than a decode matmul's share of work.
// So after each job a worker keeps polling for the next one (SetSpinWait)
// without yielding its P before it parks on its channel: back-to-back
// matmuls, as in decode, start on all threads within a microsecond.
//
// A woken worker is queued on the caller's P until an idle P picks it up. The
// caller does not yield to it: it runs its share, then waits by spinning if
// every worker has started (they run on other Ps) or else blocks on done, so
// that a worker still queued on its P runs there. A worker whose caller
// blocked parks instead of spinning afterwards (it would otherwise spin on
// the P the caller is queued on). At worst a call thus runs at single-thread
// speed; once a worker runs beside the caller it stays on its own P.

// DefaultSpinWait is how long an idle worker polls for new work before
// parking, unless SetSpinWait says otherwise: long enough for back-to-back
// products, short enough not to hold a P that other goroutines of the
// process want for long.
const DefaultSpinWait = 200 * time.Microsecond

var spinWait atomic.Int64

// SetSpinWait sets how long an idle worker polls for new work before it
// parks (d <= 0: DefaultSpinWait) and returns the previous setting. A node
// that does nothing but compute between requests a few milliseconds apart
// (an expert node waiting for the trunks' next layer) sets it above that
// gap, as OpenMP runtimes spin for 200 ms: a parked worker takes 50 µs to
// 1 ms to wake on a virtual machine, and products estimated under a
// millisecond do not wait for it (they run on the caller alone). The cost
// is a core polling for up to d after each product.
func SetSpinWait(d time.Duration) (prev time.Duration) {
	if d <= 0 {
		d = DefaultSpinWait
	}
	return time.Duration(spinWait.Swap(int64(d)))
}

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
	started atomic.Bool // the current job is running
	job     task        // written by the dispatcher before state becomes wHandoff
	wake    chan task
	scratch scratch
}

type workerPool struct {
	tok           chan struct{} // holds a token while no call uses the workers
	workers       []*worker
	pending       atomic.Int32  // dispatched jobs not yet finished
	done          chan struct{} // a token when pending drops to 0
	callerBlocked atomic.Bool   // the caller is blocked on done
	inFor         atomic.Int32  // participants running ParallelFor tasks (their fn may call MatMul: no waiting then)
}

// maxThreads bounds SetThreads.
const maxThreads = 256

var (
	pool       = workerPool{done: make(chan struct{}, 1), tok: make(chan struct{}, 1)}
	numThreads atomic.Int32
)

func init() {
	spinWait.Store(int64(DefaultSpinWait))
	pool.tok <- struct{}{}
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

// busyWait bounds how long a call waits for a busy pool before it runs
// alone. Waiting calls are served in arrival order (the token goes straight
// to the first waiter). The bound is a safety net, not a deadline calls are
// expected to meet: a call made from inside a pool task would otherwise
// wait for itself (calls made while a ParallelFor runs do not wait at all).
const busyWait = 5 * time.Millisecond

// acquire takes the pool; with wait it waits up to busyWait for a busy one.
func (p *workerPool) acquire(wait bool) bool {
	select {
	case <-p.tok:
		return true
	default:
	}
	if !wait {
		return false
	}
	if testHookPoolWait != nil {
		testHookPoolWait()
	}
	t := time.NewTimer(busyWait)
	defer t.Stop()
	select {
	case <-p.tok:
		return true
	case <-t.C:
		return false
	}
}

// release returns the pool (to the first waiting call, if any).
func (p *workerPool) release() { p.tok <- struct{}{} }

// ensureWorkers starts background workers until there are n. The caller holds the pool.
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
			w.started.Store(true)
			t.run(&w.scratch)
			if p.pending.Add(-1) == 0 {
				if hook := testHookBeforeDone.Load(); hook != nil {
					(*hook)()
				}
				select {
				case p.done <- struct{}{}:
				default:
				}
			}
			// If the caller blocked waiting for this job, the job probably
			// ran on the caller's P, and waking the caller queued it on this
			// P: park instead of spinning, or it would wait behind the spin.
			t = nil
			if !p.callerBlocked.Load() {
				t = w.spin()
			}
		}
		w.state.Store(wParked)
	}
}

// spin polls for a handed-off task for the spin wait; nil means the worker parked.
// It does not yield: a spinning worker keeps its P (and OS thread) awake, so
// that a handoff is picked up at once and the caller keeps its own P.
func (w *worker) spin() task {
	w.state.Store(wSpinning)
	deadline := time.Now().Add(time.Duration(spinWait.Load()))
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
	w.started.Store(false)
	w.job = t
	if w.state.CompareAndSwap(wSpinning, wHandoff) {
		return false
	}
	w.job = nil
	w.wake <- t
	return true
}

// Thresholds for parallel: below minParallelNs of estimated single-thread
// work a call runs on the caller alone; up to wakeWorthNs it uses the
// workers only if they are spinning (waking a parked worker takes 50 µs to
// 1 ms here, and until it runs the caller works alone).
const (
	minParallelNs = 8_000
	wakeWorthNs   = 1_000_000
)

// forceParallel makes parallel ignore the size thresholds (tests).
var forceParallel bool

// testHookPoolWait runs when a call starts waiting for a busy pool (tests).
var testHookPoolWait func()

// testHookHelped runs after a ParallelFor participant computed blocks of
// another participant's product (tests).
var testHookHelped func(blocks int)

// testHookBeforeDone runs in the worker that finished a job last, between
// its decrement of pending and its completion token (tests delay the token).
var testHookBeforeDone atomic.Pointer[func()]

// parallel runs t on up to threads participants: the caller (with scratch s)
// and threads-1 pool workers. estNs is the estimated single-thread time of t.
// With threads <= 1, small work, or when another call holds the pool, it runs
// t on the caller alone.
func parallel(t task, threads int, s *scratch, estNs int) {
	procs := runtime.GOMAXPROCS(0)
	threads = min(threads, procs)
	if forceParallel {
		estNs = wakeWorthNs
	}
	if threads <= 1 || estNs < minParallelNs {
		t.run(s)
		return
	}
	if !pool.acquire(Threads() >= procs && pool.inFor.Load() == 0) {
		t.run(s)
		return
	}
	nw := threads - 1
	pool.ensureWorkers(nw)
	ws := pool.workers[:nw]
	if estNs < wakeWorthNs {
		for _, w := range ws {
			if w.state.Load() != wSpinning {
				pool.release()
				t.run(s)
				return
			}
		}
	}
	select { // a stale token from a previous call
	case <-pool.done:
	default:
	}
	pool.pending.Store(int32(nw))
	for _, w := range ws {
		w.dispatch(t)
	}
	t.run(s)
	for pool.pending.Load() != 0 {
		running := true
		for _, w := range ws {
			running = running && w.started.Load()
		}
		if !running {
			// A worker has not started: it may be queued on this P. Block so
			// that it runs; its completion wakes this goroutine.
			pool.callerBlocked.Store(true)
			// A token can be stale: the previous call's last worker may send
			// it after that call returned (it saw pending reach 0 first). Only
			// pending == 0 means this call's workers are done.
			for pool.pending.Load() != 0 {
				<-pool.done
			}
			pool.callerBlocked.Store(false)
			break
		}
	}
	pool.release()
}

// forTask is ParallelFor's task: participants claim indices until none are
// left, then help the products the others' calls still run (helpProducts)
// until every call has returned.
type forTask struct {
	next atomic.Int64
	done atomic.Int64 // calls of fn returned
	n    int64
	fn   func(i int)
}

func (f *forTask) run(s *scratch) {
	pool.inFor.Add(1)
	defer pool.inFor.Add(-1)
	for {
		i := f.next.Add(1) - 1
		if i >= f.n {
			break
		}
		f.fn(int(i))
		f.done.Add(1)
	}
	if noHelping.Load() {
		return // as before helping: wait in parallel (the caller) or spin (a worker)
	}
	for k := 0; f.done.Load() < f.n; k++ {
		helpProducts(s)
		if k%1024 == 1023 {
			runtime.Gosched() // a call preempted off its P gets one back
		}
	}
}

// Helping. The calls of a ParallelFor run their products on their own
// participant (MatMulSerial), and the participant that runs out of
// indices first would wait for the last call's products at the end (at
// decode, up to a whole routed expert: about a fifth of the experts' time
// on two threads). Instead, a product run on one thread while a
// ParallelFor of several participants runs offers its row blocks
// (runHelped), and a participant with no index left claims blocks from
// those products (helpProducts), as the participants of a split product
// do. Each block is still computed by the same kernel, so the results are
// the same bits.

// helpMaxRows: products of at most this many input rows offer their
// blocks: decode's, which stream their weights and end unevenly. Prefill
// gained nothing from helping (512-token prompts on two threads, bench --ab
// helping, nine repetitions: 0.992 and 1.000 of the speed without it with
// every product offering its blocks, 0.979 and 0.989 with this bound, 0.99
// with helping compiled out: the noise), so its products do not pay for
// offering them.
const helpMaxRows = 8

// helpMinBytes: products of fewer weight bytes do not offer their blocks
// (an attention page's keys or values: 64 KiB a head in bf16): offering
// and withdrawing an offer cost more than a helper takes off them. One
// decode step's attention at 8,192 tokens (go test ./model/hybrid -bench
// PagedAttentionDecode, bf16): 315-334 µs against 428-487 with every
// product offering; eight sessions at a short context: level (see
// docs/kv-dtype.md).
const helpMinBytes = 256 << 10

var (
	helpSlots  [maxThreads]atomic.Pointer[callCtx] // products offering blocks
	forHelping atomic.Int32                        // ParallelFor tasks on several participants
	noHelping  atomic.Bool                         // SetProductHelping(false)
)

// SetProductHelping turns helping on (the default) or off and returns the
// previous setting: off, a ParallelFor participant with no index left
// waits for the others' calls instead (bench --ab helping compares the
// two).
func SetProductHelping(on bool) (prev bool) { return !noHelping.Swap(!on) }

// runHelped runs the planned one-thread product c, its blocks offered to
// ParallelFor participants with nothing else to do; it returns once every
// block is done.
func runHelped(c *callCtx) {
	slot := -1
	for i := range helpSlots[:Threads()] {
		if helpSlots[i].CompareAndSwap(nil, c) {
			slot = i
			break
		}
	}
	c.job.run(&c.s)
	if slot < 0 {
		return
	}
	helpSlots[slot].Store(nil)
	for k := 0; c.helpers.Load() != 0; k++ { // blocks claimed by helpers still running
		if k%1024 == 1023 {
			runtime.Gosched() // a helper preempted off its P gets one back
		}
	}
}

// helpProducts makes one pass over helpSlots and, with scratch s, claims
// and computes the unclaimed row blocks of each product offered there (its
// caller repeats it while calls of its ParallelFor still run). A product's owner
// withdraws its offer and then waits until no helper holds it, so a helper
// counts itself in and checks that the offer still stands before it reads
// the product.
func helpProducts(s *scratch) {
	for i := range helpSlots[:Threads()] {
		c := helpSlots[i].Load()
		if c == nil {
			continue
		}
		c.helpers.Add(1)
		if helpSlots[i].Load() == c {
			if b := c.job.runBlocks(s); b > 0 && testHookHelped != nil {
				testHookHelped(b)
			}
		}
		c.helpers.Add(-1)
	}
}

// ParallelFor calls fn(i) for every i in [0, n) on up to Threads()
// participants of MatMul's worker pool (the caller included), which claim
// indices one at a time. estNs is the estimated single-thread time of all
// the calls: small work runs on the caller alone. fn should use
// MatMulSerial: a MatMul inside finds the pool busy and runs on its
// participant alone (calls do not wait for the pool while a ParallelFor
// task runs). It is for many small independent products, e.g. one decode step's routed experts, where
// splitting each product across threads costs more in hand-offs than it
// saves.
func ParallelFor(n, estNs int, fn func(i int)) {
	if n <= 0 {
		return
	}
	if min(Threads(), n, runtime.GOMAXPROCS(0)) <= 1 || (estNs < minParallelNs && !forceParallel) {
		// What parallel does with such work (the caller alone), without a
		// task and scratch per call: decode steps make many small ones.
		pool.inFor.Add(1)
		defer pool.inFor.Add(-1)
		for i := range n {
			fn(i)
		}
		return
	}
	t := &forTask{n: int64(n), fn: fn}
	c := ctxPool.Get().(*callCtx) // the caller's scratch (for the blocks it helps with)
	forHelping.Add(1)
	parallel(t, min(Threads(), n), &c.s, estNs)
	forHelping.Add(-1)
	ctxPool.Put(c)
}
