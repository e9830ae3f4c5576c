package sample

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	bad := map[string]Params{
		"temperature": {Temperature: -0.1},
		"temp nan":    {Temperature: float32(math.NaN())},
		"top_k":       {TopK: -1},
		"top_p high":  {TopP: 1.01},
		"top_p neg":   {TopP: -0.5},
		"min_p":       {MinP: 1},
		"penalty":     {RepetitionPenalty: -1},
		"last n":      {RepeatLastN: -2},
	}
	for name, p := range bad {
		if err := p.Validate(); !errors.Is(err, ErrParams) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := (Params{Temperature: 0.7, TopK: 40, TopP: 0.9, MinP: 0.05, RepetitionPenalty: 1.1}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestGreedyAndPenalty(t *testing.T) {
	logits := []float32{1, 5, 3, -2}
	s := New(Params{})
	if tok, lp := s.Sample(logits, nil); tok != 1 || lp >= 0 {
		t.Fatalf("greedy: %d %v", tok, lp)
	}
	// With a strong penalty on token 1 (positive logit divided), token 2 wins.
	s = New(Params{RepetitionPenalty: 4})
	if tok, _ := s.Sample(logits, []int{1, 1}); tok != 2 {
		t.Fatalf("penalty: got %d", tok)
	}
	// Negative logits are multiplied: token 3 moves further away.
	s = New(Params{RepetitionPenalty: 2, RepeatLastN: 1})
	if tok, _ := s.Sample(logits, []int{1, 3}); tok != 1 {
		t.Fatalf("repeat_last_n limits the window: got %d", tok)
	}
}

// Empirical frequencies follow the filtered, renormalised distribution.
func TestDistribution(t *testing.T) {
	logits := []float32{2, 1, 0, -1, -8}
	cases := []struct {
		name    string
		p       Params
		allowed map[int]bool
	}{
		{"top-k 2", Params{Temperature: 1, TopK: 2, Seed: 1}, map[int]bool{0: true, 1: true}},
		{"top-p 0.7", Params{Temperature: 1, TopP: 0.7, Seed: 2}, map[int]bool{0: true, 1: true}},
		{"min-p 0.3", Params{Temperature: 1, MinP: 0.3, Seed: 3}, map[int]bool{0: true, 1: true}},
		{"all", Params{Temperature: 1, Seed: 4}, map[int]bool{0: true, 1: true, 2: true, 3: true, 4: true}},
	}
	for _, tc := range cases {
		s := New(tc.p)
		counts := map[int]int{}
		for range 4000 {
			tok, _ := s.Sample(logits, nil)
			counts[tok]++
		}
		for tok := range counts {
			if !tc.allowed[tok] {
				t.Errorf("%s: sampled filtered token %d", tc.name, tok)
			}
		}
		if tc.name == "top-k 2" {
			// p0/p1 = e^1 ≈ 2.72
			r := float64(counts[0]) / float64(counts[1])
			if r < 2.3 || r > 3.2 {
				t.Errorf("top-k ratio %.2f, want ≈2.72", r)
			}
		}
	}
	// Same seed, same sequence.
	a, b := New(Params{Temperature: 1, Seed: 9}), New(Params{Temperature: 1, Seed: 9})
	for range 100 {
		x, _ := a.Sample(logits, nil)
		y, _ := b.Sample(logits, nil)
		if x != y {
			t.Fatal("same seed diverged")
		}
	}
}

func TestStopMatcher(t *testing.T) {
	cases := []struct {
		stops  []string
		pushes []string
		out    string
		stop   bool
	}{
		{[]string{"END"}, []string{"hello E", "N", "D tail"}, "hello ", true},
		{[]string{"END"}, []string{"hello E", "Nx"}, "hello ENx", false},
		{[]string{"\n\n", "##"}, []string{"a\n", "b#", "#c"}, "a\nb", true},
		{nil, []string{"abc"}, "abc", false},
	}
	for i, tc := range cases {
		m := NewStopMatcher(tc.stops)
		var out string
		stopped := false
		for _, p := range tc.pushes {
			e, s := m.Push(p)
			out += e
			if s {
				stopped = true
				break
			}
		}
		if !stopped {
			out += m.Flush()
		}
		if out != tc.out || stopped != tc.stop {
			t.Errorf("case %d: got %q %v, want %q %v", i, out, stopped, tc.out, tc.stop)
		}
	}
}

// Parameters that pass as numbers but make no sense: a temperature too small
// for 1/T is greedy (it used to overflow and pick the least likely token), and
// the ones that would only make noise are refused.
func TestDegenerateParams(t *testing.T) {
	for _, logits := range [][]float32{{0.1, 3, -2, 1, 2.5}, {0.1, 50, -2, 1, 40}} {
		for _, temp := range []float32{1e-30, 1e-38, 1e-6, 1e-4} {
			s := New(Params{Temperature: temp, Seed: 7})
			for range 50 {
				if tok, _ := s.Sample(logits, nil); tok != 1 {
					t.Fatalf("temperature %g on %v sampled %d, want the argmax 1", temp, logits, tok)
				}
			}
		}
	}
	for _, tc := range []struct {
		p    Params
		want string
	}{
		{Params{Temperature: 1e6}, "temperature"},
		{Params{Temperature: 1, RepetitionPenalty: 1e9}, "repetition_penalty"},
		{Params{Temperature: 1, RepetitionPenalty: 1e-9}, "repetition_penalty"},
	} {
		if err := tc.p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v", tc.p, err)
		}
	}
	if err := (Params{Temperature: 1, TopK: 1 << 30}).Validate(); err != nil {
		t.Errorf("top_k above the vocabulary means all tokens: %v", err)
	}
	s := New(Params{Temperature: 1, TopK: 1 << 30, Seed: 1})
	inf := float32(math.Inf(1))
	if tok, _ := s.Sample([]float32{0, inf, 1}, nil); tok != 1 {
		t.Errorf("with a +Inf logit sampled %d, want 1", tok)
	}
}

// BenchmarkToken: one token drawn from a 100,352-entry vocabulary (Granite
// 4.0's) with the usual settings.
func BenchmarkToken(b *testing.B) {
	logits := make([]float32, 100352)
	r := uint64(1)
	for i := range logits {
		r = r*6364136223846793005 + 1442695040888963407
		logits[i] = float32(int64(r>>40)%2000)/100 - 10
	}
	for _, c := range []struct {
		name string
		p    Params
	}{
		{"greedy", Params{}},
		{"temperature", Params{Temperature: 0.8, Seed: 1}},
		{"top_p", Params{Temperature: 0.8, TopP: 0.95, Seed: 1}},
		{"top_k", Params{Temperature: 0.8, TopK: 40, Seed: 1}},
		{"min_p", Params{Temperature: 0.8, MinP: 0.05, Seed: 1}},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := New(c.p)
			for b.Loop() {
				s.Token(logits, nil)
			}
		})
	}
}

// refAllowed is the filters as a full sort applies them (the sampler before
// its selections): the candidates in order of logit (ties by id), softmax
// at the temperature in float64, then top-k, top-p and min-p; it returns
// the kept tokens' renormalised probabilities.
func refAllowed(w []float32, p Params) map[int]float64 {
	idx := make([]int, len(w))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case w[a] > w[b]:
			return -1
		case w[a] < w[b]:
			return 1
		}
		return a - b
	})
	if p.TopK > 0 && p.TopK < len(idx) {
		idx = idx[:p.TopK]
	}
	inv := 1 / float64(p.Temperature)
	mx := float64(w[idx[0]]) * inv
	probs := make([]float64, len(idx))
	var sum float64
	for i, t := range idx {
		probs[i] = math.Exp(float64(w[t])*inv - mx)
		sum += probs[i]
	}
	n := len(idx)
	if p.TopP > 0 && p.TopP < 1 {
		var cum float64
		for i, q := range probs {
			cum += q / sum
			if cum >= float64(p.TopP) {
				n = i + 1
				break
			}
		}
	}
	if p.MinP > 0 {
		for i := 1; i < n; i++ {
			if probs[i] < probs[0]*float64(p.MinP) {
				n = i
				break
			}
		}
	}
	var tot float64
	for _, q := range probs[:n] {
		tot += q
	}
	out := map[int]float64{}
	for i, t := range idx[:n] {
		out[t] = probs[i] / tot
	}
	return out
}

// The selections (top-k's heap, top-p's radix selection, the vector
// softmax) keep the tokens a full sort keeps and draw them as often: on
// peaked, flat and tied logits, every drawn token is one refAllowed keeps,
// and where it keeps few, each is drawn at its probability (within 5
// standard deviations over 20,000 draws).
func TestFiltersMatchFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	shapes := map[string]func(i int) float32{
		"peaked": func(i int) float32 { return float32(rng.NormFloat64()*2) + map[bool]float32{true: 9}[i%97 == 5] },
		"flat":   func(int) float32 { return float32(rng.NormFloat64() * 0.05) },
		"tied":   func(i int) float32 { return float32(i%7) * 0.5 },
	}
	params := []Params{
		{Temperature: 0.8}, {Temperature: 1.2, TopP: 0.9}, {Temperature: 0.7, TopP: 0.5}, {Temperature: 1, TopP: 0.999},
		{Temperature: 0.9, MinP: 0.1}, {Temperature: 1, TopK: 5}, {Temperature: 1, TopK: 40, TopP: 0.8, MinP: 0.02},
		{Temperature: 0.6, TopP: 0.95, MinP: 0.3}, {Temperature: 2, TopP: 0.3},
	}
	for name, shape := range shapes {
		w := make([]float32, 3001)
		for i := range w {
			w[i] = shape(i)
		}
		for _, p := range params {
			p.Seed = 3
			want := refAllowed(w, p)
			s := New(p)
			counts := map[int]int{}
			draws := 20000.0
			if len(want) > 50 {
				draws = 2000 // membership only
			}
			for range int(draws) {
				tok := s.Token(w, nil)
				if _, ok := want[tok]; !ok {
					t.Fatalf("%s %+v: drew %d, which a full sort filters out (%d kept)", name, p, tok, len(want))
				}
				counts[tok]++
			}
			if len(want) > 50 {
				continue
			}
			for tok, q := range want {
				sd := math.Sqrt(draws * q * (1 - q))
				if d := math.Abs(float64(counts[tok]) - draws*q); d > 5*sd+1 {
					t.Errorf("%s %+v: token %d drawn %d times, want %.0f ± %.0f", name, p, tok, counts[tok], draws*q, sd)
				}
			}
		}
	}
}

// Tokens whose logit is -Inf (what a constraint masks) are never drawn,
// whatever the filters, though the vector exponential gives them the
// smallest normal float32 rather than 0.
func TestMaskedNeverDrawn(t *testing.T) {
	w := make([]float32, 5000)
	for i := range w {
		w[i] = float32(math.Inf(-1))
	}
	open := map[int]bool{17: true, 2500: true, 4999: true}
	for i := range open {
		w[i] = float32(i%5) * 0.1
	}
	for _, p := range []Params{{Temperature: 1}, {Temperature: 3, TopP: 0.999999}, {Temperature: 2, MinP: 1e-9}, {Temperature: 2, MinP: 1e-39}, {Temperature: 1, TopK: 100}, {Temperature: 1, TopK: 100, MinP: 1e-39}} {
		s := New(p)
		for range 3000 {
			if tok := s.Token(w, nil); !open[tok] {
				t.Fatalf("%+v: drew masked token %d", p, tok)
			}
		}
	}
}

// BenchmarkLogProb: one token's log-probability over a 100,352-entry
// vocabulary (what a request with logprobs pays per token).
func BenchmarkLogProb(b *testing.B) {
	logits := make([]float32, 100352)
	for i := range logits {
		logits[i] = float32(math.Sin(float64(i))) * 8
	}
	for b.Loop() {
		LogProb(logits, 7)
	}
}
