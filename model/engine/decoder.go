package engine

import (
	"math"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/sample"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// Decoder turns one sequence's logits into tokens, streamed text and a finish
// reason: sampling (with the history for penalties), stop ids and EOS, stop
// strings, the token limit and incremental detokenisation. It is the one
// decode loop body: Engine.Generate and the trunk's continuous-batching
// scheduler both drive it, so they stop and stream identically.
type Decoder struct {
	smp     *sample.Sampler
	stops   *sample.StopMatcher
	dec     *tokenizer.StreamDecoder
	stopID  map[int]bool
	max     int
	history []int
	n       int // tokens generated (emitted)
	con     Constraint
	masked  []float32
	top     int
	lp      bool // Spec.LogProbs
}

// Constraint restricts which tokens a sequence may produce next (constrained
// decoding, e.g. a JSON grammar). The decoder calls Mask before each sample
// and Accept with every token it emits. Mask must leave at least one token
// allowed (a completed constraint allows only the end-of-text token).
type Constraint interface {
	// Mask sets the logits of the tokens not allowed next to -Inf.
	Mask(logits []float32)
	// Accept advances the constraint past tok, a token Mask allowed.
	Accept(tok int) error
}

// Spec is what a Decoder needs of a request.
type Spec struct {
	Params      sample.Params
	MaxTokens   int // > 0
	StopIDs     []int
	StopStrings []string
	IgnoreEOS   bool
	EOS         int // the model's EOS id (< 0: none)
	// Constraint, when set, masks the logits before sampling; the reported
	// log-probabilities stay those of the model's unmodified distribution.
	Constraint Constraint
	// TopLogProbs is how many of the most likely tokens each emitted event
	// lists with their log-probabilities (0: none).
	TopLogProbs int
	// LogProbs sets each emitted event's LogProb (0 otherwise): a log
	// softmax over the whole vocabulary per token (about half a
	// millisecond for a 100k vocabulary, 6% of a step of eight sessions),
	// so only requests that ask for it pay for it.
	LogProbs bool
}

// NewDecoder starts decoding after history (the tokens the sequence holds that
// penalties should see: at least the prompt).
func NewDecoder(tok *tokenizer.Tokenizer, sp Spec, history []int) *Decoder {
	d := &Decoder{smp: sample.New(sp.Params), stops: sample.NewStopMatcher(sp.StopStrings), dec: tok.NewStreamDecoder(),
		stopID: map[int]bool{}, max: sp.MaxTokens, history: append([]int(nil), history...), con: sp.Constraint, top: sp.TopLogProbs, lp: sp.LogProbs}
	for _, id := range sp.StopIDs {
		d.stopID[id] = true
	}
	if !sp.IgnoreEOS && sp.EOS >= 0 {
		d.stopID[sp.EOS] = true
	}
	return d
}

// Outcome is one decode step: the token to emit (if Emit), text held back by
// the detokeniser or the stop matcher that the end releases (Tail, emitted
// after the token as an Event with Token -1), and, when the sequence ends,
// why. While Finish is "" the emitted token must be fed back; a finished
// sequence's last token is left unfed.
type Outcome struct {
	Event  Event
	Emit   bool
	Tail   string
	Finish string // "" while generating; FinishStop or FinishLength
	// Err is set when the constraint refused the sampled token (a bug in the
	// constraint: Mask allowed it); the sequence ends with Finish FinishStop.
	Err error
}

// Next samples the next token from logits.
func (d *Decoder) Next(logits []float32) Outcome {
	var tok int
	var lp float32
	if d.con != nil {
		d.masked = append(d.masked[:0], logits...)
		d.con.Mask(d.masked)
		tok = d.smp.Token(d.masked, d.history)
	} else {
		tok = d.smp.Token(logits, d.history)
	}
	if d.lp {
		lp = sample.LogProb(logits, tok) // the unmasked distribution's
	}
	if d.stopID[tok] {
		// A stop id is never emitted; the text held back is released.
		return Outcome{Finish: FinishStop, Tail: d.flush()}
	}
	if d.con != nil {
		if err := d.con.Accept(tok); err != nil {
			return Outcome{Finish: FinishStop, Tail: d.flush(), Err: err}
		}
	}
	d.n++
	d.history = append(d.history, tok)
	text, stopped := d.stops.Push(d.dec.Add(tok))
	o := Outcome{Event: Event{Token: tok, Text: text, LogProb: lp}, Emit: true}
	if d.top > 0 {
		o.Event.Top = TopLogProbs(logits, d.top)
	}
	switch {
	case stopped:
		o.Finish = FinishStop // the stop string and what follows it are cut
	case d.n >= d.max:
		o.Finish = FinishLength
		o.Tail = d.flush()
	}
	return o
}

// Generated is the number of tokens emitted so far.
func (d *Decoder) Generated() int { return d.n }

func (d *Decoder) flush() string {
	tail, _ := d.stops.Push(d.dec.Flush())
	return tail + d.stops.Flush()
}

// TopLogProbs returns the k most likely tokens of logits with their
// log-probabilities, most likely first (ties: lower id first).
func TopLogProbs(logits []float32, k int) []TokenLogProb {
	k = min(k, len(logits))
	if k <= 0 {
		return nil
	}
	// One pass keeping the k best in a small sorted slice (k is at most 20).
	best := make([]TokenLogProb, 0, k)
	for i, x := range logits {
		if len(best) == k && x <= best[k-1].LogProb {
			continue
		}
		j := len(best)
		if j < k {
			best = append(best, TokenLogProb{})
		} else {
			j = k - 1
		}
		for j > 0 && best[j-1].LogProb < x {
			best[j] = best[j-1]
			j--
		}
		best[j] = TokenLogProb{Token: i, LogProb: x}
	}
	// log softmax = x - max - log sum exp(x - max), the sum taken once (as
	// sample.LogProb takes it).
	mx := best[0].LogProb
	lse := math.Log(kernels.SumExpShift(logits, mx))
	for i := range best {
		best[i].LogProb = float32(float64(best[i].LogProb-mx) - lse)
	}
	return best
}
