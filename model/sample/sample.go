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
	"slices"
	"strings"

	"github.com/switchyard-serving/switchyard/model/kernels"
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
	p     Params
	rng   *rand.Rand
	work  []float32
	cands []cand // draw's candidates
	seen  map[int]struct{}
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

// cand is a candidate token with its weight (an unnormalised probability,
// or a logit while top-k selects).
type cand struct {
	p  float64
	id int32
}

// before orders candidates by weight, descending, ties by id (the order
// the filters walk).
func before(a, b cand) int {
	switch {
	case a.p > b.p:
		return -1
	case a.p < b.p:
		return 1
	}
	return int(a.id) - int(b.id)
}

// draw samples from softmax(w/T) after top-k, top-p and min-p (w is the
// sampler's scratch: it is overwritten). The filters act on the candidates
// in order of probability (ties by id), as a full sort would, but nothing
// is sorted beyond what they look at: top-k keeps the k best in a heap,
// the other candidates' exponentials are computed in one vector pass
// (kernels.ExpShift, float32 values, float64 sum), and top-p sorts only
// the candidates above a threshold whose mass already reaches p (lowered
// until it does). Before this, every token of the vocabulary was sorted
// and exponentiated in float64: 25-37 ms per token for Granite's 100k
// vocabulary (BenchmarkToken), several decode steps' worth.
func (s *Sampler) draw(w []float32) int {
	inv := 1 / s.p.Temperature
	if k := s.p.TopK; k > 0 && k < len(w) {
		c := topK(s.cands[:0], w, k)
		s.cands = c
		// The k best, best first: their softmax in float64.
		mx := float64(c[0].p) * float64(inv)
		var sum float64
		for i := range c {
			c[i].p = math.Exp(c[i].p*float64(inv) - mx)
			sum += c[i].p
		}
		if !(sum > 0) || math.IsInf(sum, 0) || math.IsNaN(sum) {
			return int(c[0].id) // non-finite logits: the likeliest candidate, never the least
		}
		return s.filtered(c, sum, true)
	}
	top := Argmax(w)
	kernels.Scale(inv, w)
	sum := kernels.ExpShift(w, w[top])
	if !(sum > 0) || math.IsInf(sum, 0) || math.IsNaN(sum) {
		return top // non-finite logits: the likeliest candidate, never the least
	}
	if tp := s.p.TopP; tp > 0 && tp < 1 {
		return s.filtered(s.topP(w, sum, float64(tp)), sum, false)
	}
	if s.p.MinP > 0 {
		thr := w[top] * s.p.MinP
		c := s.cands[:0]
		for i, e := range w {
			if e >= thr && e >= minWeight {
				c = append(c, cand{float64(e), int32(i)})
			}
		}
		s.cands = c
		return s.filtered(c, sum, false)
	}
	r := s.rng.Float64() * sum
	for i, e := range w {
		if e < minWeight {
			continue // a masked (-Inf) logit, or one that underflowed
		}
		r -= float64(e)
		if r < 0 {
			return i
		}
	}
	return top
}

// minWeight: kernels.ExpShift gives the smallest normal float32 (about
// 1.2e-38), not 0, for a logit of -Inf (a token a constraint masked); no
// weight below this is ever drawn.
const minWeight = 1e-37

// filtered applies top-p (from the candidates in order: when sorted) and
// min-p to c, whose weights add up to sum, and draws one of them.
func (s *Sampler) filtered(c []cand, sum float64, sorted bool) int {
	if tp := s.p.TopP; sorted && tp > 0 && tp < 1 {
		var cum float64
		for i, x := range c {
			cum += x.p / sum
			if cum >= float64(tp) {
				c = c[:i+1]
				break
			}
		}
	}
	if mp := s.p.MinP; mp > 0 {
		var pmax float64
		for _, x := range c {
			pmax = max(pmax, x.p)
		}
		thr := pmax * float64(mp)
		n := 0
		for _, x := range c {
			if x.p >= thr {
				c[n] = x
				n++
			} else if sorted {
				break // the walk in order stops at the first below
			}
		}
		c = c[:n]
	}
	var tot float64
	for _, x := range c {
		tot += x.p
	}
	r := s.rng.Float64() * tot
	last := c[0].id // the fallback if rounding leaves r ≥ 0: the last weighted candidate
	for _, x := range c {
		if x.p < minWeight {
			continue // a masked (-Inf) logit
		}
		r -= x.p
		if r < 0 {
			return int(x.id)
		}
		last = x.id
	}
	return int(last)
}

// topK appends to c the k best logits of w (by before's order) and returns
// them, best first: a min-heap of k over one pass.
func topK(c []cand, w []float32, k int) []cand {
	h := c[:0]
	worse := func(a, b cand) bool { return before(a, b) > 0 } // a ranks after b
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			m := l
			if r := l + 1; r < len(h) && worse(h[r], h[l]) {
				m = r
			}
			if !worse(h[m], h[i]) {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i, v := range w {
		x := cand{float64(v), int32(i)}
		if len(h) < k {
			h = append(h, x)
			for j := len(h) - 1; j > 0; {
				p := (j - 1) / 2
				if !worse(h[j], h[p]) {
					break
				}
				h[j], h[p] = h[p], h[j]
				j = p
			}
			continue
		}
		if worse(h[0], x) { // x beats the heap's worst
			h[0] = x
			down(0)
		}
	}
	slices.SortFunc(h, before)
	return h
}

// topP returns the candidates top-p keeps: the fewest best of e
// (unnormalised probabilities, non-negative, adding up to sum) whose mass
// reaches p·sum, in order of id. The value v at which the mass taken in
// order of probability reaches it is found by a radix selection on the
// float32 bits (non-negative floats order as their bits): per 11, 11 and
// 10 bits, the mass of each bucket, walked from the top. Every value above
// v is kept, and of those equal to v the lowest ids up to the mass (ties
// by id, as a sort would take them). Three passes over the vocabulary
// instead of sorting most of it (a flat distribution keeps most tokens).
func (s *Sampler) topP(e []float32, sum, p float64) []cand {
	need := p * sum // mass still to take, from the top
	var prefix uint32
	var hist [2048]float64
	for _, lv := range [3]struct{ shift, bits uint32 }{{21, 11}, {10, 11}, {0, 10}} {
		mask := uint32(1)<<lv.bits - 1
		high := lv.shift + lv.bits // the bits above this level, fixed by prefix
		clear(hist[:mask+1])
		for _, x := range e {
			if x < minWeight {
				continue
			}
			k := math.Float32bits(x)
			if high == 32 || k>>high == prefix>>high {
				hist[k>>lv.shift&mask] += float64(x)
			}
		}
		b := mask
		for ; b > 0; b-- {
			if hist[b] >= need {
				break
			}
			need -= hist[b]
		}
		prefix |= b << lv.shift
	}
	v := math.Float32frombits(prefix)
	c := s.cands[:0]
	for i, x := range e {
		switch {
		case x < minWeight:
		case x > v:
			c = append(c, cand{float64(x), int32(i)})
		case x == v && need > 0:
			c = append(c, cand{float64(x), int32(i)})
			need -= float64(x)
		}
	}
	s.cands = c
	return c
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

// LogProb is log softmax(logits)[tok], computed stably: the exponentials
// in one vector pass (float32 values, a float64 sum: kernels.SumExpShift,
// about a tenth of math.Exp over a 100k vocabulary), the rest in float64.
func LogProb(logits []float32, tok int) float32 {
	mx := kernels.Max(logits)
	s := kernels.SumExpShift(logits, mx)
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
