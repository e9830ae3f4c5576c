package trunknode

import (
	"context"
	"errors"
	"fmt"
	"runtime"
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

// ErrSessionReset ends a generation whose sequence could not be computed while
// the rest of its step was (a corrupt state, or its routed experts failed):
// the session's state was reset to empty, and the error says why.
var ErrSessionReset = errors.New("trunknode: the generation failed and the session's state was reset")

// DefaultPingPongMinRows is the default SchedConfig.PingPongMinRows. On one
// 2-core machine (bench-cluster, 8-layer H-Tiny BF16, one trunk and two
// expert nodes, alternated runs) splitting the decode steps of 8 sessions
// made the cluster 15% slower (53-61 against 64-71 tokens/s), of 16
// sessions 7-11% slower (82-84 against 88-95), and of 32 sessions 5-9%
// faster (88 against 81-85): a small step is bound by reading the trunk's
// weights, and two micro-batches read them twice.
const DefaultPingPongMinRows = 32

// ErrDraining means the node no longer admits work (graceful shutdown).
var ErrDraining = errors.New("trunknode: node is draining, retry on another trunk node")

// SchedConfig bounds the continuous-batching scheduler.
type SchedConfig struct {
	MaxRunning       int // sessions advanced together per step
	MaxTokensPerStep int // token budget per step (decode rows + prefill chunk rows)
	MaxQueue         int // waiting requests before admission answers RESOURCE_EXHAUSTED
	// PingPong splits a step of at least PingPongMinRows rows (at least 2)
	// into two micro-batches whose expert dispatches overlap the other's
	// trunk compute. Each micro-batch reads the trunk's weights again, so
	// small steps, bound by reading them, lose more than they overlap.
	PingPong        bool
	PingPongMinRows int
	// DecodePrefillTokens caps the prompt tokens prefilled in a step that also
	// decodes (0: no cap beyond MaxTokensPerStep). A step's time grows with its
	// rows, so this bounds what a long prompt adds to the inter-token latency
	// of the sessions decoding beside it: at most this many prefill rows per
	// token they generate. Without decoding sessions a step prefills up to
	// MaxTokensPerStep.
	DecodePrefillTokens int
}

// Job is one generation request inside the scheduler.
type Job struct {
	ctx     context.Context
	sess    *Session
	pending []int // tokens to feed next: the remaining prompt, or the last sample
	prefill bool  // pending holds prompt tokens (logits needed only after the last)
	// logits is the job's LM-head output, kept from step to step and handed
	// to the next job when it ends (Scheduler.spare): a new buffer each step
	// (400 KiB for a 100K vocabulary) mostly landed on memory that was not
	// resident, faulted in 4 KiB at a time while the head wrote it (two
	// thirds of a serving trunk's page faults).
	logits      []float32
	dec         *engine.Decoder
	logprobs    bool
	prefillOnly bool

	promptTokens int
	cached       int
	// prefix is the generation's use of the prefix cache (nil: none); marks
	// are the positions where its prefill still leaves checkpoints.
	prefix      *prefixPlan
	marks       []int
	enqueued    time.Time
	lastToken   time.Time
	api         string                  // "generate" or "chat" (metric label)
	stop        context.CancelCauseFunc // releases the job's context when it ends
	prefillSpan trace.Span              // open while the prompt is being prefilled
	decodeSpan  trace.Span              // open from the first token to the end

	// Output, drained by the RPC goroutine.
	mu     sync.Mutex
	events []Event
	final  *Final
	notify chan struct{}
}

// Event is a generated token delivered to the client (Token -1: text only).
type Event = engine.Event

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
		f.PromptTokens, f.CompletionTokens, f.CachedTokens = j.promptTokens, j.dec.Generated(), j.cached
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
// long prompt does not stall decoding sessions. One goroutine (Run) owns the
// model, the running jobs and their sessions' states.
type Scheduler struct {
	cfg  SchedConfig
	deps SchedDeps

	mu       sync.Mutex
	queue    []*Job // guarded by mu
	draining bool   // guarded by mu
	wake     chan struct{}

	running  []*Job // owned by the Run goroutine
	nRunning atomic.Int32
	spare    [][]float32 // owned by the Run goroutine: logits buffers of ended jobs, for new ones
}

// Forwarder is the model as the scheduler drives it (*hybrid.Model; a fake in
// tests): one forward step over a batch, with that step's expert backend.
type Forwarder interface {
	ForwardOn(experts hybrid.ExpertBackend, batch []hybrid.Seq) error
	ForwardPingPongOn(experts hybrid.ExpertBackend, a, b []hybrid.Seq) error
}

// StepExperts opens each forward step's expert backend: the Dispatcher for
// remote experts, LocalSteps for the model's own.
type StepExperts interface {
	Step(ctx context.Context) StepBackend
}

// LocalSteps serves every step from one in-process backend (local experts).
type LocalSteps struct{ Backend hybrid.ExpertBackend }

// Step implements StepExperts.
func (l LocalSteps) Step(context.Context) StepBackend { return localStep{l.Backend} }

type localStep struct{ hybrid.ExpertBackend }

func (localStep) Calls() []CallInfo { return nil }

// SchedDeps are what the scheduler drives and reports to.
type SchedDeps struct {
	Model   Forwarder
	EOS     int // the model's end-of-sequence id (< 0: none)
	Tok     *tokenizer.Tokenizer
	Store   *Store
	Experts StepExperts
	Metrics *metrics     // nil: none
	Tracer  trace.Tracer // nil: no step spans
	Tracing StepTracing
}

// NewScheduler returns a scheduler; call Run to start it.
func NewScheduler(cfg SchedConfig, deps SchedDeps) *Scheduler {
	if cfg.MaxRunning <= 0 {
		cfg.MaxRunning = 64
	}
	if cfg.MaxTokensPerStep <= 0 {
		cfg.MaxTokensPerStep = 512
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 1024
	}
	return &Scheduler{cfg: cfg, deps: deps, wake: make(chan struct{}, 1)}
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
	// Constraint, when set, restricts the sampled tokens (constrained
	// decoding: a JSON schema's grammar). It is used by the job alone.
	Constraint engine.Constraint
	// TopLogProbs lists that many most likely tokens with each event.
	TopLogProbs int
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
	// The job runs under its own cancellable context: the client going away or
	// the session being deleted (ErrSessionDeleted) ends it.
	ctx, stop := context.WithCancelCause(ctx)
	feed := append(append([]int(nil), sp.Session.Unfed...), sp.Prompt...)
	dec := engine.NewDecoder(s.deps.Tok, engine.Spec{Params: sp.Params, MaxTokens: max(sp.MaxTokens, 1), StopIDs: sp.StopIDs,
		StopStrings: sp.StopStrings, IgnoreEOS: sp.IgnoreEOS, EOS: s.deps.EOS, Constraint: sp.Constraint, TopLogProbs: sp.TopLogProbs, LogProbs: sp.LogProbs}, feed)
	// A session resumed from a prefix-cache checkpoint holds the prompt's
	// first tokens already: only the rest is fed (the decoder still has the
	// whole prompt as its sampling history).
	plan := sp.Session.prefix
	if plan != nil {
		feed = feed[len(sp.Session.Unfed)+plan.skip:]
	}
	j := &Job{ctx: ctx, sess: sp.Session, pending: feed, prefill: true, dec: dec, logprobs: sp.LogProbs, prefillOnly: sp.PrefillOnly,
		promptTokens: len(sp.Prompt), cached: sp.Session.State.Pos, enqueued: time.Now(), notify: make(chan struct{}, 1), api: sp.API}
	if plan != nil {
		j.prefix, j.marks = plan, plan.marks
	}
	if j.api == "" {
		j.api = "generate"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		stop(nil)
		return nil, ErrDraining
	}
	if len(s.queue) >= s.cfg.MaxQueue {
		stop(nil)
		return nil, ErrQueueFull
	}
	s.deps.Store.setStop(sp.Session, stop)
	j.stop = stop
	sp.Session.Unfed = nil
	sp.Session.prefix = nil
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
		s.step(ctx)
		s.nRunning.Store(int32(len(s.running)))
		// The requests' pumps the step woke (with tokens, or ended on an
		// error) are queued on this goroutine's P, and the next step's
		// compute would hold it (the pool's threads holding the others)
		// until a scheduling point: one step or more later, behind the
		// network readers. Yield once so they send first (an execution
		// trace of one session, bench-cluster --trace: the pumps waited
		// 253-300 µs at p50 and 6-7 ms at p99 for a P, 5-6 µs and 2-3 ms
		// with the yield).
		runtime.Gosched()
	}
}

func (s *Scheduler) admit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 && len(s.running) < s.cfg.MaxRunning {
		j := s.queue[0]
		s.running = append(s.running, j)
		s.queue = s.queue[1:]
		if s.deps.Metrics != nil {
			s.deps.Metrics.admitted(j)
		}
		if s.deps.Tracer != nil && trace.SpanContextFromContext(j.ctx).IsSampled() {
			// The request's time in the queue, as a span of its trace.
			_, q := s.deps.Tracer.Start(j.ctx, "queue", trace.WithTimestamp(j.enqueued),
				trace.WithAttributes(attribute.Int("queue_depth_at_admission", len(s.queue))))
			q.End()
		}
	}
}

// step runs one forward pass over every running job. The step's context
// carries ctx's values but not its cancellation: a step that has started runs
// to its end (the dispatcher's timeouts bound it), so shutdown never leaves
// sessions half-advanced; the jobs still running then end with ErrDraining.
func (s *Scheduler) step(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if !s.dropCancelled() {
		return
	}
	batch, jobs, rows := s.plan()
	start := time.Now()
	stepCtx, span := s.startStep(ctx, jobs, rows)
	calls, err := s.forward(stepCtx, batch, rows)
	dur := time.Since(start)
	s.finishStep(ctx, span, start, dur, jobs, rows, calls, err)
	if s.deps.Metrics != nil {
		s.deps.Metrics.step(rows, dur)
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
		j.logits = batch[i].Logits // grown by the head if it had to be
		if err := batch[i].Err; err != nil {
			// This sequence alone could not be computed: its state is invalid.
			// Say so; the others of the step go on untouched.
			j.sess.State.Reset()
			j.sess.Unfed = nil
			s.end(j, Final{Reason: engine.FinishCancel, Err: fmt.Errorf("%w: %w", ErrSessionReset, err)})
			finished = append(finished, j)
			continue
		}
		if s.advance(j, batch[i]) {
			finished = append(finished, j)
		}
	}
	s.remove(finished)
}

// dropCancelled ends the jobs whose callers went away; it reports whether any
// job is left.
func (s *Scheduler) dropCancelled() bool {
	live := s.running[:0]
	for _, j := range s.running {
		if j.ctx.Err() != nil {
			s.end(j, Final{Reason: engine.FinishCancel, Err: context.Cause(j.ctx)})
			continue
		}
		live = append(live, j)
	}
	clear(s.running[len(live):])
	s.running = live
	return len(live) > 0
}

// plan builds the step's batch: decode rows first (one token each), then
// prefill chunks within the token budget.
func (s *Scheduler) plan() (batch []hybrid.Seq, jobs []*Job, rows int) {
	budget := s.cfg.MaxTokensPerStep
	decoding := 0
	for _, j := range s.running {
		if j.logits == nil && len(s.spare) > 0 {
			j.logits = s.spare[len(s.spare)-1]
			s.spare[len(s.spare)-1] = nil
			s.spare = s.spare[:len(s.spare)-1]
		}
	}
	for _, j := range s.running {
		if !j.prefill {
			batch = append(batch, hybrid.Seq{State: j.sess.State, Tokens: j.pending, Logits: j.logits})
			jobs = append(jobs, j)
			budget--
			decoding++
		}
	}
	if decoding > 0 && s.cfg.DecodePrefillTokens > 0 {
		budget = min(budget, s.cfg.DecodePrefillTokens)
	}
	for _, j := range s.running {
		if j.prefill && budget > 0 {
			n := min(len(j.pending), budget)
			if len(j.marks) > 0 {
				// End the chunk at the next checkpoint position.
				if pos := j.sess.State.Pos; j.marks[0] > pos && pos+n > j.marks[0] {
					n = j.marks[0] - pos
				}
			}
			budget -= n
			batch = append(batch, hybrid.Seq{State: j.sess.State, Tokens: j.pending[:n], NoLogits: n < len(j.pending) || j.prefillOnly, Logits: j.logits})
			jobs = append(jobs, j)
			if j.prefillSpan == nil && s.deps.Tracer != nil {
				_, j.prefillSpan = s.deps.Tracer.Start(j.ctx, "prefill", trace.WithAttributes(
					attribute.String("session", j.sess.ID), attribute.Int("prompt_tokens", len(j.pending))))
			}
			if j.prefillSpan != nil {
				j.prefillSpan.AddEvent("prefill_chunk", trace.WithAttributes(attribute.Int("tokens", n), attribute.Int("step_rows_budget", s.cfg.MaxTokensPerStep)))
			}
		}
	}
	for _, b := range batch {
		rows += len(b.Tokens)
	}
	return batch, jobs, rows
}

// splits reports whether a step of seqs sequences and rows rows runs as two
// ping-pong micro-batches: at least two sequences (each stays whole) and
// PingPongMinRows rows.
func (c *SchedConfig) splits(seqs, rows int) bool {
	return c.PingPong && seqs >= 2 && rows >= max(2, c.PingPongMinRows)
}

// forward runs the model over the batch, with the step's own expert backend,
// as one pass or (ping-pong) two overlapped micro-batches.
func (s *Scheduler) forward(ctx context.Context, batch []hybrid.Seq, rows int) ([]CallInfo, error) {
	m := s.deps.Model
	step := s.deps.Experts.Step(ctx)
	var err error
	if s.cfg.splits(len(batch), rows) {
		// Split by rows into two halves, keeping each sequence whole.
		half, acc, cut := rows/2, 0, 1
		for i, b := range batch {
			acc += len(b.Tokens)
			if acc >= half {
				cut = max(1, min(i+1, len(batch)-1))
				break
			}
		}
		err = m.ForwardPingPongOn(step, batch[:cut], batch[cut:])
	} else {
		err = m.ForwardOn(step, batch)
	}
	return step.Calls(), err
}

// advance records what a job's sequence was fed and, after its last prompt
// chunk or a decode row, turns the logits into the next token through the
// job's decoder. It reports whether the job has finished.
func (s *Scheduler) advance(j *Job, seq hybrid.Seq) bool {
	j.pending = j.pending[len(seq.Tokens):]
	for len(j.marks) > 0 && j.marks[0] <= j.sess.State.Pos {
		if j.marks[0] == j.sess.State.Pos {
			s.deps.Store.checkpoint(j.prefix, j.sess.State)
		}
		j.marks = j.marks[1:]
	}
	if len(j.pending) > 0 {
		return false // more prompt to prefill
	}
	if j.prefillSpan != nil {
		j.prefillSpan.End()
		j.prefillSpan = nil
	}
	j.prefill = false
	if j.prefillOnly {
		s.end(j, Final{Reason: engine.FinishLength})
		return true
	}
	o := j.dec.Next(seq.Logits)
	if o.Emit {
		now := time.Now()
		if s.deps.Metrics != nil {
			s.deps.Metrics.token(j, now)
		}
		if j.lastToken.IsZero() {
			trace.SpanFromContext(j.ctx).AddEvent("first_token")
			if s.deps.Tracer != nil && trace.SpanContextFromContext(j.ctx).IsSampled() {
				_, j.decodeSpan = s.deps.Tracer.Start(j.ctx, "decode", trace.WithAttributes(attribute.String("session", j.sess.ID)))
			}
		} else if j.decodeSpan != nil {
			// One event per decode step (the SDK keeps the first 128 of a span).
			j.decodeSpan.AddEvent("token", trace.WithAttributes(attribute.Int("index", j.dec.Generated()),
				attribute.Float64("gap_ms", float64(now.Sub(j.lastToken).Microseconds())/1000)))
		}
		j.lastToken = now
		if !j.logprobs {
			o.Event.LogProb = 0
		}
		j.push(o.Event)
	}
	if o.Tail != "" {
		j.push(Event{Token: -1, Text: o.Tail})
	}
	if o.Finish == "" {
		j.pending = []int{o.Event.Token}
		return false
	}
	// The last emitted token is left unfed: the session's next turn feeds it.
	j.sess.Unfed = nil
	if o.Emit {
		j.sess.Unfed = []int{o.Event.Token}
	}
	s.end(j, Final{Reason: o.Finish, Err: o.Err})
	return true
}

func (s *Scheduler) end(j *Job, f Final) {
	for _, sp := range []*trace.Span{&j.prefillSpan, &j.decodeSpan} {
		if *sp == nil {
			continue
		}
		if f.Err != nil {
			(*sp).RecordError(f.Err)
		}
		if sp == &j.decodeSpan {
			(*sp).SetAttributes(attribute.Int("output_tokens", j.dec.Generated()), attribute.String("finish_reason", f.Reason))
		}
		(*sp).End()
		*sp = nil
	}
	if j.logits != nil && len(s.spare) < max(s.cfg.MaxRunning, 1) {
		s.spare = append(s.spare, j.logits) // nothing reads them once the job ends
	}
	j.logits = nil
	s.deps.Store.Release(j.sess)
	if j.stop != nil {
		j.stop(nil)
	}
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
