package placement

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// SimConfig describes a simulated cluster and workload for Simulate.
type SimConfig struct {
	Nodes   int // expert nodes
	Layers  int // MoE layers (ignored when Load is set)
	Experts int // routed experts per layer (ignored when Load is set)

	// Capacity is the expert slots per node; 0 means just enough for the
	// redundant replicas: ceil(Layers*Experts*(1+Redundant)/Nodes), or over
	// Nodes-1 when FailRound is set so the survivors can hold them.
	Capacity int

	// Zipf is the exponent s of expert popularity within a layer: the expert
	// of rank k (1-based, ranks drawn at random per layer) gets load
	// proportional to k^-s. 0 gives uniform load.
	Zipf float64

	// Load, if set, is the round-0 load [layer][expert] (for example read by
	// ParseLoad) instead of the Zipf loads; its shape sets Layers and Experts.
	Load [][]float64

	Redundant float64 // Options.RedundantSlotsFraction
	Rounds    int     // planning rounds after the initial placement (round 0)

	// Shift is the drift per round: in every layer this fraction of the
	// experts, drawn at random, trade their loads among themselves.
	Shift float64

	Budget  int     // Options.MigrationBudget
	MinGain float64 // Options.MinGain
	Seed    uint64  // seed of the load draws

	// FailRound, if positive, is the round at whose start the first node (by
	// ID) dies.
	FailRound int
}

// DefaultSimConfig is the scenario: Granite-like 64 experts, 8
// layers on 8 nodes, Zipf 1.1, 12.5% redundant slots, 20% of the experts
// changing popularity per round, 16 replica loads per round.
func DefaultSimConfig() SimConfig {
	return SimConfig{Nodes: 8, Layers: 8, Experts: 64, Zipf: 1.1, Redundant: 0.125, Rounds: 10,
		Shift: 0.2, Budget: 16, MinGain: 0.005, Seed: 1}
}

// Strategies compared by Simulate.
const (
	StrategyRoundRobin = "round-robin" // expert i = l*E+e on node i mod N, one replica each, never rebalanced
	StrategyStatic     = "static"      // Compute's first placement, then budget 0: shares rebalanced, nothing moved
	StrategyOurs       = "ours"        // Compute every round with the configured budget
)

// SimRow is one strategy in one round.
type SimRow struct {
	Round      int
	Strategy   string
	Imbalance  float64 // mean over layers of max/mean node load (the objective)
	WorstLayer float64 // max over layers of max/mean node load
	Moves      int     // replicas loaded this round (all of them in round 0)
	Repairs    int     // of Moves, replicas re-covering a dead node's experts
	Replicas   int     // replicas held
}

// SimReport is the result of Simulate: three rows per round, in the order
// round-robin, static, ours.
type SimReport struct {
	Config SimConfig // with defaults filled in
	Rows   []SimRow
}

// Mean averages a strategy's rows from round `from` on: imbalance, worst
// layer and moves per round.
func (r SimReport) Mean(strategy string, from int) (imbalance, worst, moves float64) {
	n := 0
	for _, row := range r.Rows {
		if row.Strategy != strategy || row.Round < from {
			continue
		}
		imbalance += row.Imbalance
		worst += row.WorstLayer
		moves += float64(row.Moves)
		n++
	}
	if n == 0 {
		return 0, 0, 0
	}
	return imbalance / float64(n), worst / float64(n), moves / float64(n)
}

// Simulate plays cfg's rounds: each round the loads drift, every strategy
// (re)plans against them and is scored on them. It is pure and
// deterministic for a given cfg.
func Simulate(cfg SimConfig) (SimReport, error) {
	return simulate(cfg, nil)
}

// simulate is Simulate with a hook that sees every plan (tests check them).
func simulate(cfg SimConfig, observe func(round int, strategy string, s Snapshot, p *Plan)) (SimReport, error) {
	if cfg.Load != nil {
		cfg.Layers = len(cfg.Load)
		if cfg.Layers > 0 {
			cfg.Experts = len(cfg.Load[0])
		}
	}
	switch {
	case cfg.Nodes <= 0 || cfg.Layers <= 0 || cfg.Experts <= 0:
		return SimReport{}, errors.New("placement: simulate needs positive Nodes, Layers and Experts")
	case cfg.Rounds < 0 || cfg.Capacity < 0 || cfg.FailRound < 0:
		return SimReport{}, errors.New("placement: simulate needs non-negative Rounds, Capacity and FailRound")
	case cfg.Shift < 0 || cfg.Shift > 1 || math.IsNaN(cfg.Shift):
		return SimReport{}, fmt.Errorf("placement: simulate Shift %v not in [0, 1]", cfg.Shift)
	case cfg.Zipf < 0 || math.IsNaN(cfg.Zipf) || math.IsInf(cfg.Zipf, 0):
		return SimReport{}, fmt.Errorf("placement: simulate Zipf %v, want finite and >= 0", cfg.Zipf)
	}
	if cfg.Capacity == 0 {
		need := float64(cfg.Layers*cfg.Experts) * (1 + max(cfg.Redundant, 0))
		holders := cfg.Nodes
		if cfg.FailRound > 0 && holders > 1 {
			holders-- // the survivors must hold everything
		}
		cfg.Capacity = int(math.Ceil(need/float64(holders) - 1e-9))
	}
	rep := SimReport{Config: cfg}

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	vals := make([][]float64, cfg.Layers) // [layer][rank] load values
	perm := make([][]int, cfg.Layers)     // [layer][expert] rank
	for l := range cfg.Layers {
		if cfg.Load != nil {
			if len(cfg.Load[l]) != cfg.Experts {
				return SimReport{}, fmt.Errorf("placement: simulate Load[%d] has %d experts, want %d", l, len(cfg.Load[l]), cfg.Experts)
			}
			vals[l] = slices.Clone(cfg.Load[l])
			perm[l] = make([]int, cfg.Experts)
			for e := range perm[l] {
				perm[l][e] = e
			}
			continue
		}
		vals[l] = zipfLoads(cfg.Experts, cfg.Zipf)
		perm[l] = rng.Perm(cfg.Experts)
	}
	load := func() [][]float64 {
		out := make([][]float64, cfg.Layers)
		for l := range out {
			out[l] = make([]float64, cfg.Experts)
			for e, k := range perm[l] {
				out[l][e] = vals[l][k]
			}
		}
		return out
	}

	nodes := make([]Node, cfg.Nodes)
	for i := range nodes {
		nodes[i] = Node{ID: fmt.Sprintf("expert-%02d", i), Alive: true, Capacity: cfg.Capacity}
	}
	opts := Options{RedundantSlotsFraction: cfg.Redundant, MigrationBudget: cfg.Budget, MinGain: cfg.MinGain}
	static := opts
	static.MigrationBudget = 0

	var rr, st, ours *Plan
	for round := 0; round <= cfg.Rounds; round++ {
		if round > 0 {
			shift(rng, perm, cfg.Shift)
		}
		if cfg.FailRound > 0 && round == cfg.FailRound {
			nodes[0].Alive = false
		}
		snap := Snapshot{Nodes: slices.Clone(nodes), Layers: cfg.Layers, Experts: cfg.Experts, Load: load()}

		var rrMoves, rrRepairs int
		if rr == nil {
			var err error
			if rr, err = RoundRobin(snap); err != nil {
				return SimReport{}, err
			}
			rrMoves = rr.ReplicaCount()
		} else {
			var err error
			if rr, rrMoves, err = roundRobinRepair(snap, rr); err != nil {
				return SimReport{}, err
			}
			rrRepairs = rrMoves
		}
		if observe != nil {
			observe(round, StrategyRoundRobin, snap, rr)
		}
		rrImb, rrWorst := Evaluate(snap, rr)
		rep.Rows = append(rep.Rows, SimRow{round, StrategyRoundRobin, rrImb, rrWorst, rrMoves, rrRepairs, rr.ReplicaCount()})

		for _, s := range []struct {
			name string
			plan **Plan
			opt  Options
		}{{StrategyStatic, &st, static}, {StrategyOurs, &ours, opts}} {
			snap.Current = *s.plan
			var p *Plan
			if round == 0 && s.name == StrategyOurs {
				p = st // the first placement ignores the budget: same plan
			} else {
				var err error
				if p, err = Compute(snap, s.opt); err != nil {
					return SimReport{}, fmt.Errorf("round %d, %s: %w", round, s.name, err)
				}
			}
			*s.plan = p
			if observe != nil {
				observe(round, s.name, snap, p)
			}
			worst := slices.Max(p.LayerImbalance)
			rep.Rows = append(rep.Rows, SimRow{round, s.name, p.Imbalance, worst, p.Moves, p.Repairs, p.ReplicaCount()})
		}
	}
	return rep, nil
}

// zipfLoads returns n loads summing to 1e4, rank k (0-based) getting a share
// proportional to (k+1)^-s.
func zipfLoads(n int, s float64) []float64 {
	v := make([]float64, n)
	sum := 0.0
	for k := range v {
		v[k] = math.Pow(float64(k+1), -s)
		sum += v[k]
	}
	for k := range v {
		v[k] *= 1e4 / sum
	}
	return v
}

// shift lets a fraction of each layer's experts trade ranks at random.
func shift(rng *rand.Rand, perm [][]int, frac float64) {
	for l := range perm {
		n := len(perm[l])
		k := int(math.Round(frac * float64(n)))
		if k < 2 {
			continue
		}
		picked := rng.Perm(n)[:k]
		ranks := make([]int, k)
		for i, e := range picked {
			ranks[i] = perm[l][e]
		}
		rng.Shuffle(k, func(i, j int) { ranks[i], ranks[j] = ranks[j], ranks[i] })
		for i, e := range picked {
			perm[l][e] = ranks[i]
		}
	}
}

// RoundRobin is the baseline placement: one replica per (layer, expert),
// expert i = layer*Experts+expert on the i-th alive node in ID order,
// cyclically, skipping full nodes. Load is ignored; the plan's load fields
// are filled from s.Load.
func RoundRobin(s Snapshot) (*Plan, error) {
	s.Current = nil
	o := Options{}
	if err := validate(&s, &o); err != nil {
		return nil, err
	}
	st := newState(&s, &o)
	n := 0
	for l := range st.layers {
		for e := range st.experts {
			for !st.free(n) {
				n = (n + 1) % st.nodes
			}
			st.add(l, e, n)
			st.share[l][e][0] = 1
			n = (n + 1) % st.nodes
		}
		st.recomputeLayer(l)
	}
	return st.plan(&s), nil
}

// roundRobinRepair moves the replicas of dead nodes in prev to the next
// alive nodes in round-robin order and returns the plan and the replicas
// moved.
func roundRobinRepair(s Snapshot, prev *Plan) (*Plan, int, error) {
	s.Current = nil
	o := Options{}
	if err := validate(&s, &o); err != nil {
		return nil, 0, err
	}
	st := newState(&s, &o)
	index := make(map[string]int, st.nodes)
	for n, id := range st.ids {
		index[id] = n
	}
	type lost struct{ l, e int }
	var orphans []lost
	for l := range st.layers {
		for e := range st.experts {
			for _, r := range prev.Replicas[l][e] {
				if n, ok := index[r.Node]; ok {
					st.add(l, e, n)
				}
			}
			if len(st.reps[l][e]) == 0 {
				orphans = append(orphans, lost{l, e})
			}
		}
	}
	n := 0
	for _, o := range orphans {
		for !st.free(n) {
			n = (n + 1) % st.nodes
		}
		st.add(o.l, o.e, n)
		n = (n + 1) % st.nodes
	}
	for l := range st.layers {
		for e := range st.experts {
			for i := range st.share[l][e] {
				st.share[l][e][i] = 1 / float64(len(st.share[l][e]))
			}
		}
		st.recomputeLayer(l)
	}
	return st.plan(&s), len(orphans), nil
}

// Evaluate scores plan p, shares as given, against the load of s: the mean
// and the max over layers of max/mean node load over the alive nodes with
// capacity (as Compute measures it). Replicas on other nodes are ignored.
func Evaluate(s Snapshot, p *Plan) (mean, worst float64) {
	alive := make(map[string]int)
	for _, n := range s.Nodes {
		if n.Alive && n.Capacity > 0 {
			alive[n.ID] = len(alive)
		}
	}
	if len(alive) == 0 || len(p.Replicas) == 0 {
		return 0, 0
	}
	x := make([]float64, len(alive))
	for l, layer := range p.Replicas {
		clear(x)
		total := 0.0
		known := s.Load != nil && l < len(s.Load) && len(s.Load[l]) == len(layer)
		if known {
			sum := 0.0
			for _, v := range s.Load[l] {
				sum += v
			}
			known = sum > 0
		}
		for e, reps := range layer {
			w := 1.0 // unknown load counts as uniform
			if known {
				w = s.Load[l][e]
			}
			for _, r := range reps {
				if n, ok := alive[r.Node]; ok {
					x[n] += r.Share * w
					total += r.Share * w
				}
			}
		}
		r := 1.0
		if total > 0 {
			r = slices.Max(x) / (total / float64(len(x)))
		}
		mean += r
		worst = max(worst, r)
	}
	return mean / float64(len(p.Replicas)), worst
}
