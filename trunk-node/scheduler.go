package trunknode

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/sample"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// ErrDraining means the node no longer admits work (graceful shutdown).
var ErrDraining = errors.New("trunknode: node is draining, retry on another trunk node")

// SchedConfig bounds the continuous-batching scheduler.
type SchedConfig struct {
	MaxRunning       int // sessions advanced together per step
	MaxTokensPerStep int // token budget per step (decode rows + prefill chunk rows)
	MaxQueue         int // waiting requests before admission answers RESOURCE_EXHAUSTED
	// PingPong splits a step of at least PingPongMinRows rows into two
	// micro-batches whose expert dispatches overlap the other's trunk compute.
	PingPong        bool
	PingPongMinRows int
}

// Job is one generation request inside the scheduler.
type Job struct {
	ctx         context.Context
	sess        *Session
	pending     []int // tokens to feed next: the remaining prompt, or the last sample
	prefill     bool  // pending holds prompt tokens (logits needed only after the last)
	params      sample.Params
	maxTokens   int
	stopIDs     map[int]bool
	stops       *sample.StopMatcher
	dec         *tokenizer.StreamDecoder
	sampler     *sample.Sampler
	history     []int
	logprobs    bool
	prefillOnly bool

	generated    int
	promptTokens int
	cached       int
	enqueued     time.Time
	lastToken    time.Time
	api          string     // "generate" or "chat" (metric label)
	prefillSpan  trace.Span // open while the prompt is being prefilled

	// Output, drained by the RPC goroutine.
	mu     sync.Mutex
	events []Event
	final  *Final
	notify chan struct{}
}

// Event is a generated token delivered to the client.
type Event struct {
	Token   int
	Text    string
	LogProb float32
}

// Final ends a job.
type Final struct {
	Reason           string // engine.Finish*
	Err              error
	PromptTokens     int
	CompletionTokens int
	CachedTokens     int
}

func (j *Job) push(ev Event) {
	j.mu.Lock()
	j.events = append(j.events, ev)
	j.mu.Unlock()
	select {
	case j.notify <- struct{}{}:
	default:
	}
}

func (j *Job) finish(f Final) {
	j.mu.Lock()
	if j.final == nil {
		f.PromptTokens, f.CompletionTokens, f.CachedTokens = j.promptTokens, j.generated, j.cached
		j.final = &f
	}
	j.mu.Unlock()
	select {
	case j.notify <- struct{}{}:
	default:
	}
}

// Drain returns the events so far and the final message once there is one.
func (j *Job) Drain() ([]Event, *Final) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ev := j.events
	j.events = nil
	return ev, j.final
}

// Notify is signalled whenever events or the final message are added.
func (j *Job) Notify() <-chan struct{} { return j.notify }

// Scheduler advances all running jobs together, one forward step at a time,
// admitting new jobs between steps and chunking prefill under a token budget so a
// long prompt does not stall decoding sessions. One goroutine owns the model.
type Scheduler struct {
	cfg   SchedConfig
	model *hybrid.Model
	tok   *tokenizer.Tokenizer
	store *Store

	mu       sync.Mutex
	queue    []*Job
	draining bool
	wake     chan struct{}

	running  []*Job // owned by the Run goroutine
	nRunning atomic.Int32
	m        *metrics
	tracer   trace.Tracer
	disp     *Dispatcher // remote experts (nil when local): gets each step's trace context
	tracing  StepTracing
}

// NewScheduler returns a scheduler; call Run to start it.
func NewScheduler(cfg SchedConfig, m *hybrid.Model, tok *tokenizer.Tokenizer, store *Store) *Scheduler {
	if cfg.MaxRunning <= 0 {
		cfg.MaxRunning = 64
	}
	if cfg.MaxTokensPerStep <= 0 {
		cfg.MaxTokensPerStep = 512
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 1024
	}
	return &Scheduler{cfg: cfg, model: m, tok: tok, store: store, wake: make(chan struct{}, 1)}
}

// JobSpec describes a generation to submit.
type JobSpec struct {
	Session     *Session // acquired by Submit; released when the job ends
	Prompt      []int    // new tokens (appended after the session's unfed token)
	Params      sample.Params
	MaxTokens   int
	StopIDs     []int
	StopStrings []string
	IgnoreEOS   bool
	LogProbs    bool
	// PrefillOnly feeds the prompt and ends without sampling (session creation).
	PrefillOnly bool
	API         string // metric label
}

// StepTracing chooses which forward steps get a trace: a fraction of them, and
// always those slower than SlowThreshold (traced after the fact on the trunk side).
type StepTracing struct {
	Ratio         float64       // fraction of steps traced with their dispatches (0..1)
	SlowThreshold time.Duration // steps at least this slow are always traced (0: off)
}

// Submit queues a job. The session must already be acquired by the caller.
func (s *Scheduler) Submit(ctx context.Context, sp JobSpec) (*Job, error) {
	feed := append(append([]int(nil), sp.Session.Unfed...), sp.Prompt...)
	j := &Job{ctx: ctx, sess: sp.Session, pending: feed, prefill: true, params: sp.Params, maxTokens: sp.MaxTokens,
		stopIDs: map[int]bool{}, stops: sample.NewStopMatcher(sp.StopStrings), dec: s.tok.NewStreamDecoder(),
		sampler: sample.New(sp.Params), logprobs: sp.LogProbs, prefillOnly: sp.PrefillOnly, promptTokens: len(sp.Prompt), cached: sp.Session.State.Pos,
		enqueued: time.Now(), notify: make(chan struct{}, 1), api: sp.API}
	if j.api == "" {
		j.api = "generate"
	}
	for _, id := range sp.StopIDs {
		j.stopIDs[id] = true
	}
	if !sp.IgnoreEOS && s.model.Cfg.EOS >= 0 {
		j.stopIDs[s.model.Cfg.EOS] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil, ErrDraining
	}
	if len(s.queue) >= s.cfg.MaxQueue {
		return nil, ErrQueueFull
	}
	sp.Session.Unfed = nil
	s.queue = append(s.queue, j)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return j, nil
}

// ErrQueueFull means too many requests are waiting.
var ErrQueueFull = errors.New("trunknode: request queue is full")

// Drain stops admitting new jobs; Idle reports when running work has finished.
func (s *Scheduler) Drain() {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
}

// Draining reports whether Drain was called.
func (s *Scheduler) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Load returns the running and waiting job counts.
func (s *Scheduler) Load() (running, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.nRunning.Load()), len(s.queue)
}

// Run is the scheduling loop; it returns when ctx ends (finishing nothing more:
// jobs still running are ended as cancelled).
func (s *Scheduler) Run(ctx context.Context) {
	defer func() {
		for _, j := range s.running {
			s.end(j, Final{Reason: engine.FinishCancel, Err: ErrDraining})
		}
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, j := range q {
			s.end(j, Final{Reason: engine.FinishCancel, Err: ErrDraining})
		}
	}()
	for ctx.Err() == nil {
		s.admit()
		if len(s.running) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			}
			continue
		}
		s.step()
		s.nRunning.Store(int32(len(s.running)))
	}
}

func (s *Scheduler) admit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 && len(s.running) < s.cfg.MaxRunning {
		j := s.queue[0]
		s.running = append(s.running, j)
		s.queue = s.queue[1:]
		if s.m != nil {
			s.m.admitted(j)
		}
	}
}

// step runs one forward pass over every running job.
func (s *Scheduler) step() {
	// Drop cancelled jobs first.
	live := s.running[:0]
	for _, j := range s.running {
		if j.ctx.Err() != nil {
			s.end(j, Final{Reason: engine.FinishCancel, Err: j.ctx.Err()})
			continue
		}
		live = append(live, j)
	}
	s.running = live
	if len(live) == 0 {
		return
	}
	// Decode rows first (one token each), then prefill chunks within the budget.
	budget := s.cfg.MaxTokensPerStep
	var batch []hybrid.Seq
	var jobs []*Job
	for _, j := range live {
		if !j.prefill {
			batch = append(batch, hybrid.Seq{State: j.sess.State, Tokens: j.pending})
			jobs = append(jobs, j)
			budget--
		}
	}
	for _, j := range live {
		if j.prefill && budget > 0 {
			n := min(len(j.pending), budget)
			budget -= n
			batch = append(batch, hybrid.Seq{State: j.sess.State, Tokens: j.pending[:n], NoLogits: n < len(j.pending) || j.prefillOnly})
			jobs = append(jobs, j)
		}
	}
	rows := 0
	for _, b := range batch {
		rows += len(b.Tokens)
	}
	for _, j := range jobs {
		if j.prefill && j.prefillSpan == nil && s.tracer != nil {
			_, j.prefillSpan = s.tracer.Start(j.ctx, "prefill", trace.WithAttributes(
				attribute.String("session", j.sess.ID), attribute.Int("prompt_tokens", len(j.pending))))
		}
	}
	start := time.Now()
	stepCtx, stepSpan := s.startStep(jobs, rows)
	if s.disp != nil {
		s.disp.beginStep(stepCtx)
	}
	var err error
	if s.cfg.PingPong && len(batch) >= 2 && rows >= max(2, s.cfg.PingPongMinRows) {
		// Split by rows into two halves, keeping each sequence whole.
		half, acc, cut := rows/2, 0, 1
		for i, b := range batch {
			acc += len(b.Tokens)
			if acc >= half {
				cut = max(1, min(i+1, len(batch)-1))
				break
			}
		}
		err = s.model.ForwardPingPong(batch[:cut], batch[cut:])
	} else {
		err = s.model.Forward(batch)
	}
	var calls []CallInfo
	if s.disp != nil {
		calls = s.disp.endStep()
	}
	dur := time.Since(start)
	s.finishStep(stepSpan, start, dur, jobs, rows, calls, err)
	if s.m != nil {
		s.m.step(rows, dur)
	}
	if err != nil {
		// The states of this step's sessions are partially advanced and cannot be
		// trusted: end these jobs with the error and reset their sessions.
		for _, j := range jobs {
			j.sess.State.Reset()
			s.end(j, Final{Reason: engine.FinishCancel, Err: err})
		}
		s.remove(jobs)
		return
	}
	var finished []*Job
	for i, j := range jobs {
		fed := batch[i].Tokens
		j.history = append(j.history, fed...)
		j.pending = j.pending[len(fed):]
		if len(j.pending) > 0 {
			continue // more prompt to prefill
		}
		if j.prefillSpan != nil {
			j.prefillSpan.End()
			j.prefillSpan = nil
		}
		j.prefill = false
		if j.prefillOnly {
			s.end(j, Final{Reason: engine.FinishLength})
			finished = append(finished, j)
			continue
		}
		tok, lp := j.sampler.Sample(batch[i].Logits, j.history)
		if j.stopIDs[tok] {
			j.sess.Unfed = nil
			s.flush(j)
			s.end(j, Final{Reason: engine.FinishStop})
			finished = append(finished, j)
			continue
		}
		j.generated++
		if now := time.Now(); s.m != nil {
			s.m.token(j, now)
			j.lastToken = now
		} else {
			j.lastToken = now
		}
		text, stopped := j.stops.Push(j.dec.Add(tok))
		ev := Event{Token: tok, Text: text}
		if j.logprobs {
			ev.LogProb = lp
		}
		j.push(ev)
		switch {
		case stopped:
			j.sess.Unfed = []int{tok}
			s.end(j, Final{Reason: engine.FinishStop})
			finished = append(finished, j)
		case j.generated >= j.maxTokens:
			j.sess.Unfed = []int{tok}
			s.flush(j)
			s.end(j, Final{Reason: engine.FinishLength})
			finished = append(finished, j)
		default:
			j.pending = []int{tok}
		}
	}
	s.remove(finished)
}

func (s *Scheduler) flush(j *Job) {
	tail, _ := j.stops.Push(j.dec.Flush())
	if tail += j.stops.Flush(); tail != "" {
		j.push(Event{Token: -1, Text: tail})
	}
}

func (s *Scheduler) end(j *Job, f Final) {
	if j.prefillSpan != nil {
		if f.Err != nil {
			j.prefillSpan.RecordError(f.Err)
		}
		j.prefillSpan.End()
		j.prefillSpan = nil
	}
	s.store.Release(j.sess)
	j.finish(f)
}

func (s *Scheduler) remove(done []*Job) {
	if len(done) == 0 {
		return
	}
	gone := map[*Job]bool{}
	for _, j := range done {
		gone[j] = true
	}
	live := s.running[:0]
	for _, j := range s.running {
		if !gone[j] {
			live = append(live, j)
		}
	}
	s.running = live
}
