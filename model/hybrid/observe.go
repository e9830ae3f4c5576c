package hybrid

import (
	"sync/atomic"
	"time"
)

// Stage names a part of a forward pass that a StageObserver times.
type Stage string

// The stages a StageObserver sees. The mixers and the MoE block include
// their matrix products; the conv, the scan, the gate and norm, the
// attention core and the routed experts are parts of them, and the expert
// sums (each row's weighted expert outputs added up) part of the routed
// experts. Step is a whole Forward call.
const (
	StageStep          Stage = "step"
	StageMamba         Stage = "mamba mixer"
	StageConv          Stage = "mamba conv"
	StageScan          Stage = "mamba scan"
	StageGate          Stage = "mamba gate and norm"
	StageAttention     Stage = "attention mixer"
	StageAttentionCore Stage = "attention core"
	StageMoE           Stage = "moe block"
	StageExperts       Stage = "routed experts"
	StageExpertSums    Stage = "expert sums"
	StageHead          Stage = "lm head"
)

// StageObserver is called when a stage of a forward pass ends, on the
// goroutine that ran it (safe for concurrent use when several forward passes
// or expert calls run at once). It is a measuring tool (bench --breakdown).
type StageObserver func(s Stage, d time.Duration)

var stageObserver atomic.Pointer[StageObserver]

// SetStageObserver sets the observer of the forward passes' stages (nil:
// none, the default) and returns the previous one. Without an observer a
// stage pays one atomic load for this.
func SetStageObserver(f StageObserver) (prev StageObserver) {
	var p *StageObserver
	if f != nil {
		p = &f
	}
	if old := stageObserver.Swap(p); old != nil {
		return *old
	}
	return nil
}

// stageStart returns the start of a stage, zero when nobody observes.
func stageStart() time.Time {
	if stageObserver.Load() == nil {
		return time.Time{}
	}
	return time.Now()
}

// stageEnd reports stage s, started at t0 (stageStart), to the observer.
func stageEnd(s Stage, t0 time.Time) {
	if t0.IsZero() {
		return
	}
	if obs := stageObserver.Load(); obs != nil {
		(*obs)(s, time.Since(t0))
	}
}
