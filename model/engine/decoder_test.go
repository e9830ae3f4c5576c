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
