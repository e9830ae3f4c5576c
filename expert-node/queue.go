package expertnode

import (
	"sync"
	"time"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// job is one chunk waiting for the compute loop.
type job struct {
	b *pb.ExpertBatch
	// out is the owning stream's result channel. The stream reserved room for
	// this job's result before submitting it, so sending on out never blocks.
	out chan<- *pb.ExpertResult
	// done is closed when the owning stream has ended; its jobs are skipped.
	done <-chan struct{}
}

func (j *job) cancelled() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// deliver hands r to the owning stream's send loop.
func (j *job) deliver(r *pb.ExpertResult) { j.out <- r }

// fail answers the job with err.
func (j *job) fail(err error) { j.deliver(errorResult(j.b, err)) }

// queue holds the chunks of all streams waiting for the compute loop, in arrival
// order. It is unbounded by itself; each stream bounds its share (see
// Config.MaxInflightPerStream).
type queue struct {
	mu     sync.Mutex
	jobs   []*job // guarded by mu
	rows   int    // guarded by mu: rows of jobs
	closed bool   // guarded by mu

	// wake holds a token when jobs may have been pushed since the compute loop
	// last looked (capacity 1: pushes never block and no wake-up is lost).
	wake chan struct{}
}

func (q *queue) init() { q.wake = make(chan struct{}, 1) }

// push appends j; it reports false when the queue is closed.
func (q *queue) push(j *job) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.jobs = append(q.jobs, j)
	q.rows += int(j.b.GetRows())
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

func (q *queue) state() (jobs, rows int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.jobs), q.rows
}

// wait blocks until something is queued and then, when window > 0, until
// maxRows rows are queued or window has passed. It reports false when stop is
// closed first.
func (q *queue) wait(stop <-chan struct{}, window time.Duration, maxRows int) bool {
	for {
		if n, _ := q.state(); n > 0 {
			break
		}
		select {
		case <-q.wake:
		case <-stop:
			return false
		}
	}
	if window <= 0 {
		return true
	}
	t := time.NewTimer(window)
	defer t.Stop()
	for {
		if _, rows := q.state(); rows >= maxRows {
			return true
		}
		select {
		case <-q.wake:
		case <-t.C:
			return true
		case <-stop:
			return false
		}
	}
}

// take removes the oldest jobs totalling at most maxRows rows (at least one job
// when any is queued, however many rows it has).
func (q *queue) take(maxRows int) []*job {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, rows := 0, 0
	for n < len(q.jobs) {
		r := int(q.jobs[n].b.GetRows())
		if n > 0 && rows+r > maxRows {
			break
		}
		rows += r
		n++
	}
	out := append([]*job(nil), q.jobs[:n]...)
	rest := copy(q.jobs, q.jobs[n:])
	clear(q.jobs[rest:])
	q.jobs = q.jobs[:rest]
	q.rows -= rows
	return out
}

// close refuses further pushes and returns the jobs still queued.
func (q *queue) close() []*job {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	out := q.jobs
	q.jobs, q.rows = nil, 0
	return out
}
