package hybrid

import (
	"sync"
	"testing"
	"time"
)

// A decode step reports each stage to the stage observer: once per step,
// once per layer of its kind, and no longer than the step.
func TestStageObserver(t *testing.T) {
	m := loadFixture(t)
	st := m.NewState()
	if err := m.Forward([]Seq{{State: st, Tokens: []int{1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[Stage]int{}
	total := map[Stage]time.Duration{}
	SetStageObserver(func(s Stage, d time.Duration) {
		mu.Lock()
		calls[s]++
		total[s] += d
		mu.Unlock()
	})
	err := m.Forward([]Seq{{State: st, Tokens: []int{4}}})
	SetStageObserver(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Forward([]Seq{{State: st, Tokens: []int{5}}}); err != nil { // not observed
		t.Fatal(err)
	}
	mambas, attns := 0, 0
	for _, l := range m.W.Layers {
		if l.Mamba != nil {
			mambas++
		} else {
			attns++
		}
	}
	want := map[Stage]int{StageStep: 1, StageHead: 1, StageMamba: mambas, StageConv: mambas, StageScan: mambas, StageGate: mambas,
		StageAttention: attns, StageAttentionCore: attns, StageMoE: len(m.W.Layers)}
	if m.Cfg.IsMoE() {
		want[StageExperts] = len(m.W.Layers)
		// One sum per group of experts run in parallel, or per expert.
		if calls[StageExpertSums] < len(m.W.Layers) {
			t.Errorf("expert sums reported %d times, want at least %d", calls[StageExpertSums], len(m.W.Layers))
		}
		want[StageExpertSums] = calls[StageExpertSums]
	}
	if mambas == 0 || attns == 0 {
		t.Fatalf("the fixture has %d Mamba and %d attention layers: the test needs both", mambas, attns)
	}
	for s, n := range want {
		if calls[s] != n {
			t.Errorf("stage %q reported %d times, want %d", s, calls[s], n)
		}
		if n > 0 && (total[s] <= 0 || total[s] > total[StageStep]) {
			t.Errorf("stage %q took %v, the step %v", s, total[s], total[StageStep])
		}
	}
	if len(calls) != len(want) {
		t.Errorf("stages reported: %v, want %v", calls, want)
	}
}
