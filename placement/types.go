package placement

import (
	"errors"
	"fmt"
	"math"
)

// Errors returned by Compute. Test with errors.Is; the returned error wraps one
// of these with the details.
var (
	// ErrInvalid marks a malformed Snapshot or Options.
	ErrInvalid = errors.New("placement: invalid input")
	// ErrNoAliveNodes means no node in the snapshot is alive.
	ErrNoAliveNodes = errors.New("placement: no alive expert nodes")
	// ErrCapacity means the alive nodes have fewer expert slots than one
	// replica per (layer, expert) needs.
	ErrCapacity = errors.New("placement: not enough expert slots")
)

// Node is one expert node as the planner sees it.
type Node struct {
	ID       string // unique, non-empty
	Alive    bool   // only alive nodes receive replicas and count in the imbalance
	Capacity int    // expert slots: how many (layer, expert) replicas the node can hold; 0 leaves the node out
}

// Snapshot is the immutable input of one planning round. Compute never
// modifies it, and the plan does not alias it.
type Snapshot struct {
	Nodes   []Node
	Layers  int // MoE layers
	Experts int // routed experts per layer

	// Load is the measured traffic per expert, [layer][expert], in any unit
	// (for example an EMA of activation counts per second); only ratios within
	// a layer matter for the placement. nil, or a layer whose loads are all
	// zero, means unknown and is treated as uniform. Values must be finite and
	// non-negative.
	Load [][]float64

	// Current is the placement in force, or nil for a first placement. Its
	// replicas on nodes that are dead or absent from Nodes are dropped and
	// re-placed without counting against the migration budget. Its shares are
	// ignored: shares are recomputed each round (changing them moves nothing).
	Current *Plan
}

// Options are the planner's knobs.
type Options struct {
	// RedundantSlotsFraction is how many replicas to place beyond one per
	// (layer, expert), as a fraction of Layers*Experts: 0.125 adds 12.5%. The
	// result is bounded by the free alive capacity and by one replica of an
	// expert per alive node.
	RedundantSlotsFraction float64

	// MigrationBudget bounds the replicas newly loaded onto a node per round
	// when Current is set (a replica moved from one node to another counts
	// once, a replica added counts once, a replica dropped is free). Re-placing
	// the replicas of dead nodes and fixing capacity violations is outside the
	// budget. 0 allows no voluntary moves (shares are still rebalanced); a
	// negative value means unlimited, and then a plan from scratch is taken
	// if it beats the moves by MinGain. Ignored for a first placement.
	MigrationBudget int

	// MinReplicas is the fewest replicas every (layer, expert) keeps, on
	// distinct nodes, so that losing MinReplicas-1 nodes leaves every expert
	// a live replica and the trunks re-dispatch at once instead of waiting
	// for a re-placement. It is capped by the alive nodes, and applies only
	// while their slots allow it (sum over nodes of min(Capacity,
	// Layers*Experts) >= MinReplicas*Layers*Experts); below that every slot
	// is still used (the hottest experts get their second replica first),
	// but nothing forces the floor. Redundant replicas for hot experts come
	// on top. Bringing experts up to the floor is a repair, outside the
	// migration budget. 0 and 1 mean one replica.
	MinReplicas int

	// MinGain is the least reduction of the objective (the mean over layers
	// of max/mean node load, so 0.01 is one percentage point) that the round's
	// voluntary moves must achieve together; below it the current placement
	// is kept and only shares are rebalanced.
	MinGain float64
}

// DefaultOptions returns a reasonable starting point: every expert on two
// nodes (where there are two and room for it) plus 12.5% redundant replicas,
// at most 16 replicas loaded per round, and moves only when they cut the
// imbalance by at least half a percentage point.
func DefaultOptions() Options {
	return Options{RedundantSlotsFraction: 0.125, MinReplicas: 2, MigrationBudget: 16, MinGain: 0.005}
}

// Replica is one copy of a (layer, expert) on a node.
type Replica struct {
	Node  string  // node ID
	Share float64 // fraction of the expert's traffic this replica should take; an expert's shares sum to 1
}

// Plan is the output of Compute: where every (layer, expert) lives and the
// predicted load. A Plan can be passed back as Snapshot.Current next round.
type Plan struct {
	// Replicas is [layer][expert] -> replicas, sorted by node ID, each on a
	// distinct alive node, at least one per expert and at least
	// Options.MinReplicas (capped by the nodes) while the slots allow it. A
	// replica may have share 0: loaded, but given traffic only when the
	// expert's other replicas fail (trunks fall back to it at once).
	Replicas [][][]Replica

	// Nodes lists the IDs of the alive nodes with capacity, in sorted order;
	// LayerLoad is indexed by position in it. These are the nodes the
	// imbalance is measured over.
	Nodes []string

	// LayerLoad is the predicted load, [layer][node], in the units of
	// Snapshot.Load (uniform layers count each expert's load as the mean
	// layer total divided by Experts, or 1 if no layer has load).
	LayerLoad [][]float64

	// NodeLoad is the predicted load per node of Nodes, summed over layers.
	NodeLoad map[string]float64

	// LayerImbalance is, per layer, the max over Nodes of the predicted node
	// load divided by its mean over Nodes (1 is perfect).
	LayerImbalance []float64

	// Imbalance is the objective: the mean of LayerImbalance.
	Imbalance float64

	// Moves counts replicas in this plan that were not in Current: each is a
	// (layer, expert) the node must load. Every replica counts when Current
	// is nil.
	Moves int
	// Repairs is the part of Moves spent re-covering experts whose replicas
	// were lost (dead node, shrunk capacity) or bringing experts up to
	// Options.MinReplicas; it is outside the budget, so
	// Moves-Repairs <= MigrationBudget.
	Repairs int
	// Removed counts replicas of Current that this plan drops, including
	// those on dead nodes.
	Removed int
}

// ReplicaCount reports how many replicas the plan holds in all.
func (p *Plan) ReplicaCount() int {
	n := 0
	for _, layer := range p.Replicas {
		for _, reps := range layer {
			n += len(reps)
		}
	}
	return n
}

// validate checks s and o.
func validate(s *Snapshot, o *Options) error {
	if s.Layers <= 0 || s.Experts <= 0 {
		return fmt.Errorf("%w: Layers and Experts must be positive, got %d and %d", ErrInvalid, s.Layers, s.Experts)
	}
	if s.Load != nil {
		if len(s.Load) != s.Layers {
			return fmt.Errorf("%w: Load has %d layers, want %d", ErrInvalid, len(s.Load), s.Layers)
		}
		for l, row := range s.Load {
			if len(row) != s.Experts {
				return fmt.Errorf("%w: Load[%d] has %d experts, want %d", ErrInvalid, l, len(row), s.Experts)
			}
			for e, v := range row {
				if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("%w: Load[%d][%d] = %v, want finite and >= 0", ErrInvalid, l, e, v)
				}
			}
		}
	}
	if f := o.RedundantSlotsFraction; f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%w: RedundantSlotsFraction = %v, want finite and >= 0", ErrInvalid, f)
	}
	if o.MinReplicas < 0 {
		return fmt.Errorf("%w: MinReplicas = %d, want >= 0", ErrInvalid, o.MinReplicas)
	}
	if g := o.MinGain; g < 0 || math.IsNaN(g) || math.IsInf(g, 0) {
		return fmt.Errorf("%w: MinGain = %v, want finite and >= 0", ErrInvalid, g)
	}
	seen := make(map[string]bool, len(s.Nodes))
	alive, slots := 0, 0
	for i, n := range s.Nodes {
		if n.ID == "" {
			return fmt.Errorf("%w: Nodes[%d] has an empty ID", ErrInvalid, i)
		}
		if seen[n.ID] {
			return fmt.Errorf("%w: node %q listed twice", ErrInvalid, n.ID)
		}
		seen[n.ID] = true
		if n.Capacity < 0 {
			return fmt.Errorf("%w: node %q has capacity %d", ErrInvalid, n.ID, n.Capacity)
		}
		if n.Alive {
			alive++
			slots += n.Capacity
		}
	}
	if alive == 0 {
		return fmt.Errorf("%w (%d nodes listed)", ErrNoAliveNodes, len(s.Nodes))
	}
	if need := s.Layers * s.Experts; slots < need {
		return fmt.Errorf("%w: %d alive nodes have %d slots, one replica per expert needs %d (%d layers x %d experts)",
			ErrCapacity, alive, slots, need, s.Layers, s.Experts)
	}
	if c := s.Current; c != nil {
		if len(c.Replicas) != s.Layers {
			return fmt.Errorf("%w: Current has %d layers, want %d", ErrInvalid, len(c.Replicas), s.Layers)
		}
		for l, row := range c.Replicas {
			if len(row) != s.Experts {
				return fmt.Errorf("%w: Current layer %d has %d experts, want %d", ErrInvalid, l, len(row), s.Experts)
			}
		}
	}
	return nil
}
