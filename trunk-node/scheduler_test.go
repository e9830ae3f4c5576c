package trunknode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// fakeModel stands in for the model: the token after t is t+1 (mod vocab),
// and it records every step's batch shape.
type fakeModel struct {
	vocab int

	mu     sync.Mutex
	steps  [][]int // per step, the tokens of each sequence
	fail   error   // fail the next step
	poison int     // a sequence fed this token fails alone (0: none)
	allocs int     // logits buffers made (the model's contract: a Seq's Logits are reused if large enough)
}

var _ Forwarder = (*fakeModel)(nil)

func (f *fakeModel) ForwardOn(_ hybrid.ExpertBackend, batch []hybrid.Seq) error {
	time.Sleep(time.Millisecond) // a step takes time, so sessions overlap
	f.mu.Lock()
	var shape []int
	for _, s := range batch {
		shape = append(shape, len(s.Tokens))
	}
	f.steps = append(f.steps, shape)
	err := f.fail
	f.fail = nil
	f.mu.Unlock()
	for i := range batch {
		s := &batch[i]
		s.Err = nil
		if slices.Contains(s.Tokens, f.poison) && f.poison != 0 {
			s.Err = fmt.Errorf("%w: non-finite activation", hybrid.ErrSequence)
			continue
		}
		s.State.Pos += len(s.Tokens)
		if s.NoLogits {
			continue
		}
		if cap(s.Logits) < f.vocab {
			s.Logits = make([]float32, f.vocab)
			f.mu.Lock()
			f.allocs++
			f.mu.Unlock()
		}
		s.Logits = s.Logits[:f.vocab]
		clear(s.Logits)
		s.Logits[(s.Tokens[len(s.Tokens)-1]+1)%f.vocab] = 10
	}
	return err
}

func (f *fakeModel) ForwardPingPongOn(e hybrid.ExpertBackend, a, b []hybrid.Seq) error {
	if err := f.ForwardOn(e, a); err != nil {
		return err
	}
	return f.ForwardOn(e, b)
}

func (f *fakeModel) failNext(err error) { f.mu.Lock(); f.fail = err; f.mu.Unlock() }

func (f *fakeModel) history() [][]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]int(nil), f.steps...)
}

type schedHarness struct {
	sched *Scheduler
	store *Store
	model *fakeModel
}

func newSchedHarness(t *testing.T, cfg SchedConfig) *schedHarness {
	t.Helper()
	tok, err := tokenizer.LoadHF(fixtureHF(t))
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeModel{vocab: 200}
	store := NewStore(MemoryConfig{RecurrentBytes: 1 << 30, KVBytes: 1 << 30}, func() *hybrid.State { return &hybrid.State{} }, 0, 1)
	s := NewScheduler(cfg, SchedDeps{Model: m, EOS: 199, Tok: tok, Store: store, Experts: LocalSteps{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &schedHarness{sched: s, store: store, model: m}
}

// submit starts a generation on a new session.
func (h *schedHarness) submit(t *testing.T, prompt []int, maxTokens int) *Job {
	t.Helper()
	sess, err := h.store.Create(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.store.Acquire(sess, len(prompt)+maxTokens); err != nil {
		t.Fatal(err)
	}
	j, err := h.sched.Submit(context.Background(), JobSpec{Session: sess, Prompt: prompt, MaxTokens: maxTokens})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// drainJob waits for the job's end and returns its tokens and final message.
func drainJob(t *testing.T, j *Job) ([]int, *Final) {
	t.Helper()
	var toks []int
	timeout := time.After(10 * time.Second)
	for {
		select {
		case <-j.Notify():
		case <-timeout:
			t.Fatal("job did not finish")
		}
		evs, fin := j.Drain()
		for _, e := range evs {
			if e.Token >= 0 {
				toks = append(toks, e.Token)
			}
		}
		if fin != nil {
			return toks, fin
		}
	}
}

func TestSchedulerDecodes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prompt    []int
		max       int
		want      []int
		reason    string
		unfedNext []int
	}{
		{"length", []int{10, 11}, 3, []int{12, 13, 14}, engine.FinishLength, []int{14}},
		{"eos is not emitted", []int{196}, 10, []int{197, 198}, engine.FinishStop, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newSchedHarness(t, SchedConfig{})
			j := h.submit(t, tc.prompt, tc.max)
			got, fin := drainJob(t, j)
			if fin.Err != nil || fin.Reason != tc.reason || len(got) != len(tc.want) || fin.CompletionTokens != len(tc.want) {
				t.Fatalf("tokens %v, final %+v; want %v (%s)", got, fin, tc.want, tc.reason)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("tokens %v, want %v", got, tc.want)
				}
			}
			if len(j.sess.Unfed) != len(tc.unfedNext) || (len(tc.unfedNext) > 0 && j.sess.Unfed[0] != tc.unfedNext[0]) {
				t.Fatalf("unfed %v, want %v", j.sess.Unfed, tc.unfedNext)
			}
		})
	}
}

// A long prompt is prefilled in chunks under the step budget, and decode rows
// go first so running sessions keep decoding while it prefills.
func TestSchedulerChunksPrefillBehindDecode(t *testing.T) {
	h := newSchedHarness(t, SchedConfig{MaxTokensPerStep: 8})
	short := h.submit(t, []int{1}, 100)
	time.Sleep(20 * time.Millisecond) // short is decoding
	long := h.submit(t, make([]int, 30), 1)
	drainJob(t, long)
	drainJob(t, short)
	sawMixed := false
	for i, step := range h.model.history() {
		rows := 0
		for _, n := range step {
			rows += n
		}
		if rows > 8 {
			t.Fatalf("step %d has %d rows, budget 8: %v", i, rows, step)
		}
		if len(step) == 2 && step[0] == 1 && step[1] == 7 {
			sawMixed = true // one decode row first, then a 7-token prefill chunk
		}
	}
	if !sawMixed {
		t.Fatalf("no step decoded while prefilling: %v", h.model.history())
	}
}

// A step that fails ends the jobs of that step with the error and resets
// their sessions' states (they were partially advanced); later jobs run.
func TestSchedulerStepFailure(t *testing.T) {
	h := newSchedHarness(t, SchedConfig{})
	boom := errors.New("expert node unreachable")
	h.model.failNext(boom)
	j := h.submit(t, []int{5, 6}, 4)
	_, fin := drainJob(t, j)
	if !errors.Is(fin.Err, boom) || j.sess.State.Pos != 0 {
		t.Fatalf("final %+v, state pos %d", fin, j.sess.State.Pos)
	}
	got, fin := drainJob(t, h.submit(t, []int{5}, 2))
	if fin.Err != nil || len(got) != 2 {
		t.Fatalf("after a failure: %v %+v", got, fin)
	}
}

func TestSchedulerCancelledJobEnds(t *testing.T) {
	h := newSchedHarness(t, SchedConfig{})
	sess, _ := h.store.Create(false)
	if err := h.store.Acquire(sess, 100); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	j, err := h.sched.Submit(ctx, JobSpec{Session: sess, Prompt: []int{1}, MaxTokens: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	_, fin := drainJob(t, j)
	if !errors.Is(fin.Err, context.Canceled) || fin.Reason != engine.FinishCancel {
		t.Fatalf("final %+v", fin)
	}
	if err := h.store.Acquire(sess, 1); err != nil {
		t.Fatalf("session still busy after its job was cancelled: %v", err)
	}
}

// A sequence that fails alone ends only its job, with its state reset and a
// status that says so; the jobs batched with it go on.
func TestSchedulerSequenceFailsAlone(t *testing.T) {
	h := newSchedHarness(t, SchedConfig{})
	h.model.poison = 66
	good := h.submit(t, []int{10}, 20)
	bad := h.submit(t, []int{64}, 20) // generates 65, then feeds 66 ...
	gotGood, finGood := drainJob(t, good)
	_, finBad := drainJob(t, bad)
	if !errors.Is(finBad.Err, ErrSessionReset) || !strings.Contains(finBad.Err.Error(), "non-finite") || bad.sess.State.Pos != 0 {
		t.Fatalf("failed job: %+v (state at %d)", finBad, bad.sess.State.Pos)
	}
	if finGood.Err != nil || len(gotGood) != 20 {
		t.Fatalf("the other job: %d tokens, %+v", len(gotGood), finGood)
	}
}

// While sessions decode, a long prompt beside them prefills at most
// DecodePrefillTokens per step; alone, it uses the whole step budget.
func TestSchedulerBoundsPrefillBesideDecode(t *testing.T) {
	h := newSchedHarness(t, SchedConfig{MaxTokensPerStep: 64, DecodePrefillTokens: 8})
	short := h.submit(t, []int{1}, 100)
	time.Sleep(20 * time.Millisecond) // short is decoding
	long := h.submit(t, make([]int, 60), 1)
	drainJob(t, long)
	drainJob(t, short)
	besideDecode := false
	for i, step := range h.model.history() {
		if len(step) == 2 && step[0] == 1 { // a decode row, then the long prompt's chunk
			besideDecode = true
			if step[1] > 8 {
				t.Fatalf("step %d prefilled %d tokens beside a decoding session, cap 8", i, step[1])
			}
		}
	}
	if !besideDecode {
		t.Fatalf("no step prefilled beside a decoding session: %v", h.model.history())
	}
	alone := newSchedHarness(t, SchedConfig{MaxTokensPerStep: 64, DecodePrefillTokens: 8})
	drainJob(t, alone.submit(t, make([]int, 60), 1))
	if first := alone.model.history()[0]; first[0] != 60 {
		t.Fatalf("alone, the prompt's first step prefilled %v tokens, want all 60", first)
	}
}

// Ping-pong splits only steps of two sequences or more and at least
// PingPongMinRows rows: small steps read the weights twice for nothing.
func TestPingPongSplitsBigStepsOnly(t *testing.T) {
	for _, tc := range []struct {
		on         bool
		minRows    int
		seqs, rows int
		wantSplit  bool
	}{
		{true, DefaultPingPongMinRows, 8, 8, false},   // decode of 8 sessions
		{true, DefaultPingPongMinRows, 64, 64, true},  // decode of 64
		{true, DefaultPingPongMinRows, 1, 512, false}, // one prompt: sequences stay whole
		{true, DefaultPingPongMinRows, 2, 512, true},
		{false, DefaultPingPongMinRows, 32, 32, false},
		{true, DefaultPingPongMinRows, 16, 16, false},
		{true, 2, 2, 2, true},
		{true, 0, 2, 2, true}, // unset: the smallest split
	} {
		cfg := SchedConfig{PingPong: tc.on, PingPongMinRows: tc.minRows}
		if got := cfg.splits(tc.seqs, tc.rows); got != tc.wantSplit {
			t.Errorf("%+v: splits %v, want %v", tc, got, tc.wantSplit)
		}
	}
}

// A job's logits buffer is kept from step to step and handed to the next
// job when it ends: generations one after another allocate one buffer in
// all, and the tokens are what fresh buffers give.
func TestSchedulerReusesLogits(t *testing.T) {
	h := newSchedHarness(t, SchedConfig{MaxRunning: 4, MaxTokensPerStep: 64, MaxQueue: 8})
	for i := range 3 {
		toks, fin := drainJob(t, h.submit(t, []int{10 * (i + 1), 11 * (i + 1)}, 6))
		if fin.Err != nil {
			t.Fatal(fin.Err)
		}
		want := []int{11*(i+1) + 1}
		for len(want) < 6 {
			want = append(want, want[len(want)-1]+1)
		}
		if !slices.Equal(toks, want) {
			t.Fatalf("job %d: tokens %v, want %v", i, toks, want)
		}
	}
	h.model.mu.Lock()
	defer h.model.mu.Unlock()
	if h.model.allocs != 1 {
		t.Fatalf("%d logits buffers made for 3 generations of 6 tokens, want 1", h.model.allocs)
	}
}
