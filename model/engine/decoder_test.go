package engine

import (
	"cmp"
	"math"
	"slices"
	"testing"

	"github.com/switchyard-serving/switchyard/model/sample"
)

// TestTopLogProbs checks the one-pass top-k against sorting every token's
// log-probability (the reference twin).
func TestTopLogProbs(t *testing.T) {
	logits := []float32{0.5, 3, -1, 3, 2.5, 0, 7, -4}
	type pair struct {
		tok int
		lp  float32
	}
	var ref []pair
	for i := range logits {
		ref = append(ref, pair{i, sample.LogProb(logits, i)})
	}
	slices.SortStableFunc(ref, func(a, b pair) int { return cmp.Compare(b.lp, a.lp) })
	for k := 0; k <= len(logits)+1; k++ {
		got := TopLogProbs(logits, k)
		if len(got) != min(k, len(logits)) {
			t.Fatalf("k=%d: %d entries", k, len(got))
		}
		for i, g := range got {
			if g.Token != ref[i].tok || math.Abs(float64(g.LogProb-ref[i].lp)) > 1e-5 {
				t.Errorf("k=%d [%d] = %+v, want %+v", k, i, g, ref[i])
			}
		}
	}
}

// Spec.LogProbs: with it each event carries the token's log-probability
// under the unmasked logits; without it LogProb is 0 and the tokens, seeded
// sampling included, are the same.
func TestDecoderLogProbsOnlyWhenAsked(t *testing.T) {
	e := fixtureEngine(t)
	vocab := e.Model.Cfg.VocabSize
	logits := make([][]float32, 6)
	for i := range logits {
		logits[i] = make([]float32, vocab)
		for j := range logits[i] {
			logits[i][j] = float32(math.Sin(float64(j*(i+3)))) * 4
		}
	}
	for _, p := range []sample.Params{{}, {Temperature: 0.9, TopP: 0.95, Seed: 7}} {
		var toks [2][]int
		for k, on := range []bool{false, true} {
			d := NewDecoder(e.Tok, Spec{Params: p, MaxTokens: 100, IgnoreEOS: true, EOS: -1, LogProbs: on}, []int{1, 2})
			for _, l := range logits {
				o := d.Next(l)
				if !o.Emit {
					t.Fatalf("%+v: no token emitted", p)
				}
				toks[k] = append(toks[k], o.Event.Token)
				want := float32(0)
				if on {
					want = sample.LogProb(l, o.Event.Token)
				}
				if o.Event.LogProb != want {
					t.Fatalf("%+v LogProbs=%v: LogProb %g, want %g", p, on, o.Event.LogProb, want)
				}
			}
		}
		if !slices.Equal(toks[0], toks[1]) {
			t.Fatalf("%+v: tokens %v without log-probabilities, %v with", p, toks[0], toks[1])
		}
	}
}
