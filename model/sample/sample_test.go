package sample

import (
	"errors"
	"math"
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
