// Package sample picks the next token from logits: greedy, temperature, top-k,
// top-p, min-p and repetition penalty, reproducible for a given seed, plus the
// stop-string matcher the generation loop uses.
//
// Order of operations (as llama.cpp's default chain and HF's logits processors):
// repetition penalty → greedy argmax, or temperature → top-k → top-p → min-p →
// draw from the renormalised distribution.
package sample

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
)

// ErrParams reports invalid sampling parameters; the message names the field.
var ErrParams = errors.New("sample: invalid parameters")

// Params are the sampling settings of one request. The zero value is greedy.
type Params struct {
	Temperature       float32 // 0 means greedy; must be >= 0
	TopK              int     // 0 = off
	TopP              float32 // (0, 1]; 0 or 1 = off
	MinP              float32 // [0, 1); 0 = off
	RepetitionPenalty float32 // >= 0; 0 or 1 = off
	RepeatLastN       int     // window of history the penalty looks at; 0 = whole history
	Seed              uint64  // draws are a pure function of (seed, logits sequence)
}

// GreedyBelow is the temperature under which sampling is greedy: 1/T would
// overflow or turn the distribution into an argmax anyway (vLLM's epsilon).
const GreedyBelow = 1e-5

// Limits of the parameters that would only make noise: a temperature above
// MaxTemperature samples nearly uniformly (the least likely tokens as often as
// the likeliest), and a repetition penalty outside [1/MaxPenalty, MaxPenalty]
// removes or forces repeated tokens regardless of the model.
const (
	MaxTemperature = 100
	MaxPenalty     = 100
)

// Greedy reports whether the parameters pick the argmax.
func (p Params) Greedy() bool { return p.Temperature < GreedyBelow }

// Validate checks ranges and names the offending field.
func (p Params) Validate() error {
	switch {
	case p.Temperature < 0 || math.IsNaN(float64(p.Temperature)) || math.IsInf(float64(p.Temperature), 0):
		return fmt.Errorf("%w: temperature must be a finite number >= 0, got %v", ErrParams, p.Temperature)
	case p.Temperature > MaxTemperature:
		return fmt.Errorf("%w: temperature %v is above %d: the distribution would be nearly uniform over the vocabulary", ErrParams, p.Temperature, MaxTemperature)
	case p.TopK < 0:
		return fmt.Errorf("%w: top_k must be >= 0, got %d", ErrParams, p.TopK)
	case p.TopP < 0 || p.TopP > 1 || math.IsNaN(float64(p.TopP)):
		return fmt.Errorf("%w: top_p must be in (0, 1], got %v", ErrParams, p.TopP)
	case p.MinP < 0 || p.MinP >= 1 || math.IsNaN(float64(p.MinP)):
		return fmt.Errorf("%w: min_p must be in [0, 1), got %v", ErrParams, p.MinP)
	case p.RepetitionPenalty < 0 || math.IsNaN(float64(p.RepetitionPenalty)) || math.IsInf(float64(p.RepetitionPenalty), 0):
		return fmt.Errorf("%w: repetition_penalty must be a finite number >= 0, got %v", ErrParams, p.RepetitionPenalty)
	case p.RepetitionPenalty != 0 && (p.RepetitionPenalty > MaxPenalty || p.RepetitionPenalty < 1.0/MaxPenalty):
		return fmt.Errorf("%w: repetition_penalty must be in [%v, %d] (or 0: off), got %v", ErrParams, 1.0/MaxPenalty, MaxPenalty, p.RepetitionPenalty)
	case p.RepeatLastN < 0:
		return fmt.Errorf("%w: repeat_last_n must be >= 0, got %d", ErrParams, p.RepeatLastN)
	}
	return nil
}

// Sampler draws tokens for one sequence. Not safe for concurrent use.
type Sampler struct {
	p    Params
	rng  *rand.Rand
	work []float32
	idx  []int
	seen map[int]struct{}
}

// New returns a sampler; p should have passed Validate.
func New(p Params) *Sampler {
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(p.Seed, p.Seed^0x9e3779b97f4a7c15)), seen: map[int]struct{}{}}
}

// Params returns the sampler's settings.
func (s *Sampler) Params() Params { return s.p }

// Sample picks a token from logits (not modified) given the sequence's history
// (prompt and generated tokens), and returns it with its log-probability under
// the model's unmodified distribution.
func (s *Sampler) Sample(logits []float32, history []int) (int, float32) {
	tok := s.Token(logits, history)
	return tok, LogProb(logits, tok)
}

// Token is Sample without the log-probability (a pass over the logits
// that only requests asking for it need): the same token.
func (s *Sampler) Token(logits []float32, history []int) int {
	pen := s.p.RepetitionPenalty
	if s.p.Greedy() && (pen == 0 || pen == 1) {
		return Argmax(logits) // nothing to change: no copy
	}
	if cap(s.work) < len(logits) {
		s.work = make([]float32, len(logits))
	}
	w := s.work[:len(logits)]
	copy(w, logits)
	if pen != 0 && pen != 1 {
		h := history
		if n := s.p.RepeatLastN; n > 0 && len(h) > n {
			h = h[len(h)-n:]
		}
		clear(s.seen)
		for _, t := range h {
			if t < 0 || t >= len(w) {
				continue
			}
			if _, dup := s.seen[t]; dup {
				continue
			}
			s.seen[t] = struct{}{}
			if w[t] > 0 {
				w[t] /= pen
			} else {
				w[t] *= pen
			}
		}
	}
	if s.p.Greedy() {
		return Argmax(w)
	}
	return s.draw(w)
}

func (s *Sampler) draw(w []float32) int {
	if cap(s.idx) < len(w) {
		s.idx = make([]int, len(w))
	}
	idx := s.idx[:len(w)]
	for i := range idx {
		idx[i] = i
	}
	// Candidates sorted by logit, descending (ties by id for determinism).
	sort.Slice(idx, func(a, b int) bool {
		if w[idx[a]] != w[idx[b]] {
			return w[idx[a]] > w[idx[b]]
		}
		return idx[a] < idx[b]
	})
	if k := s.p.TopK; k > 0 && k < len(idx) {
		idx = idx[:k]
	}
	// Softmax over the candidates at the given temperature, in float64 so a
	// small temperature cannot overflow (w*inv in float32 did, and the NaNs that
	// followed picked the least likely candidate).
	inv64 := 1 / float64(s.p.Temperature)
	mx := float64(w[idx[0]]) * inv64
	probs := make([]float64, len(idx))
	var sum float64
	for i, t := range idx {
		e := math.Exp(float64(w[t])*inv64 - mx)
		probs[i] = e
		sum += e
	}
	if !(sum > 0) || math.IsInf(sum, 0) {
		return idx[0] // non-finite logits: the likeliest candidate, never the least
	}
	for i := range probs {
		probs[i] /= sum
	}
	n := len(idx)
	if p := s.p.TopP; p > 0 && p < 1 {
		var cum float64
		for i, q := range probs {
			cum += q
			if cum >= float64(p) {
				n = i + 1
				break
			}
		}
	}
	if mp := s.p.MinP; mp > 0 {
		thr := probs[0] * float64(mp)
		for i := 1; i < n; i++ {
			if probs[i] < thr {
				n = i
				break
			}
		}
	}
	var tot float64
	for _, q := range probs[:n] {
		tot += q
	}
	r := s.rng.Float64() * tot
	for i, q := range probs[:n] {
		r -= q
		if r < 0 {
			return idx[i]
		}
	}
	return idx[n-1]
}

// Argmax returns the index of the largest value (the first on ties).
func Argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// LogProb is log softmax(logits)[tok], computed stably in float64.
func LogProb(logits []float32, tok int) float32 {
	mx := logits[Argmax(logits)]
	var s float64
	for _, v := range logits {
		s += math.Exp(float64(v - mx))
	}
	return float32(float64(logits[tok]-mx) - math.Log(s))
}

// StopMatcher watches generated text for stop strings. Feed each decoded text delta
// to Push; it returns the part that is safe to emit now (text that cannot be the
// start of a stop string) and whether a stop string was completed (the stop string
// itself and anything after it are never emitted).
type StopMatcher struct {
	stops   []string
	pending strings.Builder
	maxLen  int
}

// NewStopMatcher returns a matcher for the non-empty strings in stops.
func NewStopMatcher(stops []string) *StopMatcher {
	m := &StopMatcher{}
	for _, s := range stops {
		if s != "" {
			m.stops = append(m.stops, s)
			m.maxLen = max(m.maxLen, len(s))
		}
	}
	return m
}

// Push adds text and returns (emit, stopped).
func (m *StopMatcher) Push(text string) (string, bool) {
	if len(m.stops) == 0 {
		return text, false
	}
	m.pending.WriteString(text)
	buf := m.pending.String()
	cut := -1
	for _, s := range m.stops {
		if i := strings.Index(buf, s); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut >= 0 {
		m.pending.Reset()
		return buf[:cut], true
	}
	// Hold back the longest suffix that is a prefix of some stop string.
	hold := 0
	for _, s := range m.stops {
		for l := min(len(s)-1, len(buf)); l > hold; l-- {
			if strings.HasSuffix(buf, s[:l]) {
				hold = l
				break
			}
		}
	}
	emit := buf[:len(buf)-hold]
	m.pending.Reset()
	m.pending.WriteString(buf[len(buf)-hold:])
	return emit, false
}

// Flush returns any held-back text (at the end of generation).
func (m *StopMatcher) Flush() string {
	s := m.pending.String()
	m.pending.Reset()
	return s
}
