package hybrid

import (
	"errors"
	"math"
	"testing"

	"github.com/switchyard-serving/switchyard/model/kernels"
)

// failingExperts computes experts locally but fails some rows at one layer
// (a broken expert node that only those rows routed to).
type failingExperts struct {
	local ExpertBackend
	layer int
	rows  map[int]bool
}

func (f failingExperts) Begin(req *ExpertRequest) Pending {
	if err := f.local.Begin(req).Wait(); err != nil {
		return Done(err)
	}
	if req.Layer == f.layer && req.Failed != nil {
		for r := range f.rows {
			req.Failed[r] = true
		}
	}
	return Done(nil)
}

// One sequence that cannot be computed (a corrupt state, or experts failing
// only its rows) fails alone: the others of the batch get exactly the logits
// they get without it.
func TestSequenceFailsAlone(t *testing.T) {
	// Batch-invariant kernels: a sequence's logits do not depend on the
	// rows batched with it (at the AVX2 level the default kernels' sums do,
	// and on the tiny model that moved a logit by 6e-4), so the others'
	// logits must be bit for bit their logits alone: the failing sequence
	// disturbs nothing.
	defer kernels.SetBatchInvariant(kernels.SetBatchInvariant(true))
	m := loadFixture(t)
	prompts := [][]int{{1, 5, 9, 14}, {2, 3}, {7, 8, 9}}
	solo := make([][]float32, len(prompts))
	for i, p := range prompts {
		seq := []Seq{{State: m.NewState(), Tokens: p}}
		if err := m.Forward(seq); err != nil {
			t.Fatal(err)
		}
		solo[i] = append([]float32(nil), seq[0].Logits...)
	}
	t.Run("non-finite state", func(t *testing.T) {
		batch := make([]Seq, len(prompts))
		for i, p := range prompts {
			batch[i] = Seq{State: m.NewState(), Tokens: p}
		}
		bad := batch[1].State
		for l := range bad.SSM {
			bad.SSM[l][0] = float32(math.NaN())
		}
		for l := range bad.Conv {
			bad.Conv[l][0] = float32(math.Inf(1))
		}
		if err := m.Forward(batch); err != nil {
			t.Fatalf("the batch failed as a whole: %v", err)
		}
		if !errors.Is(batch[1].Err, ErrSequence) {
			t.Fatalf("the corrupt sequence did not fail: %v", batch[1].Err)
		}
		for _, i := range []int{0, 2} {
			if batch[i].Err != nil || maxDiff(batch[i].Logits, solo[i]) != 0 {
				t.Fatalf("sequence %d: err %v, max diff %g", i, batch[i].Err, maxDiff(batch[i].Logits, solo[i]))
			}
		}
	})
	t.Run("experts fail one sequence's rows", func(t *testing.T) {
		batch := make([]Seq, len(prompts))
		for i, p := range prompts {
			batch[i] = Seq{State: m.NewState(), Tokens: p}
		}
		// Rows 6..8 are sequence 2's.
		if err := m.ForwardOn(failingExperts{local: m.Experts, layer: 1, rows: map[int]bool{6: true, 7: true, 8: true}}, batch); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(batch[2].Err, ErrSequence) || batch[0].Err != nil || batch[1].Err != nil {
			t.Fatalf("errs %v %v %v", batch[0].Err, batch[1].Err, batch[2].Err)
		}
		for _, i := range []int{0, 1} {
			if d := maxDiff(batch[i].Logits, solo[i]); d != 0 {
				t.Fatalf("sequence %d: max diff %g", i, d)
			}
		}
	})
}
