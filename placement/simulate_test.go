package placement

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestSimulationZipf is the target: 64 experts, 8 layers, 8 nodes,
// Zipf-skewed load and 12.5% redundant slots reach max/mean <= 1.05 per layer.
// Round-robin's figure is logged alongside.
func TestSimulationZipf(t *testing.T) {
	for _, s := range []float64{1.0, 1.1, 1.2} {
		t.Run(fmt.Sprintf("s=%.1f", s), func(t *testing.T) {
			cfg := DefaultSimConfig()
			cfg.Zipf, cfg.Rounds = s, 0
			for seed := uint64(1); seed <= 3; seed++ {
				cfg.Seed = seed
				rep, err := Simulate(cfg)
				if err != nil {
					t.Fatal(err)
				}
				rr, ours := rep.Rows[0], rep.Rows[2]
				t.Logf("seed %d: round-robin max/mean %.3f (worst layer %.3f), ours %.4f (worst layer %.4f), %d replicas",
					seed, rr.Imbalance, rr.WorstLayer, ours.Imbalance, ours.WorstLayer, ours.Replicas)
				if ours.WorstLayer > 1.05 {
					t.Errorf("seed %d: worst layer max/mean %.4f > 1.05", seed, ours.WorstLayer)
				}
				if rr.Imbalance < 1.5 {
					t.Errorf("seed %d: round-robin %.3f: the load is not skewed", seed, rr.Imbalance)
				}
			}
		})
	}
}

// TestSimulationShifting drifts the load each round (20% of the experts of
// every layer trade popularity) and checks that the budget bounds the moves
// while the imbalance stays low.
func TestSimulationShifting(t *testing.T) {
	for _, tc := range []struct {
		budget    int
		failRound int
		maxMean   float64 // bound on the mean over rounds 1.. of ours
	}{
		{budget: 16, maxMean: 1.05},
		{budget: 4, maxMean: 1.25},
		{budget: 16, failRound: 3, maxMean: 1.05},
	} {
		t.Run(fmt.Sprintf("budget=%d,fail=%d", tc.budget, tc.failRound), func(t *testing.T) {
			cfg := DefaultSimConfig()
			cfg.Budget, cfg.FailRound = tc.budget, tc.failRound
			if testing.Short() {
				cfg.Rounds = 4
			}
			o := Options{RedundantSlotsFraction: cfg.Redundant, MigrationBudget: cfg.Budget, MinGain: cfg.MinGain}
			var prev *Plan
			rep, err := simulate(cfg, func(round int, strategy string, s Snapshot, p *Plan) {
				if strategy != StrategyOurs {
					return
				}
				checkPlan(t, s, o, p)
				if round > 0 {
					s.Current = prev
					checkMoves(t, s, o, p)
				}
				prev = p
			})
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			fmt.Fprintf(&b, "round  round-robin      static           ours             moved (repairs)\n")
			rows := map[string]SimRow{}
			for _, r := range rep.Rows {
				rows[r.Strategy] = r
				if r.Strategy != StrategyOurs {
					continue
				}
				rr, st := rows[StrategyRoundRobin], rows[StrategyStatic]
				fmt.Fprintf(&b, "%5d  %.3f (%.3f)  %.3f (%.3f)  %.4f (%.4f)  %d (%d)\n", r.Round, rr.Imbalance, rr.WorstLayer,
					st.Imbalance, st.WorstLayer, r.Imbalance, r.WorstLayer, r.Moves, r.Repairs)
				if r.Round > 0 && r.Moves-r.Repairs > tc.budget {
					t.Errorf("round %d: %d moves beyond %d repairs, budget %d", r.Round, r.Moves, r.Repairs, tc.budget)
				}
				if st.Moves != st.Repairs && r.Round > 0 {
					t.Errorf("round %d: static placement moved %d replicas beyond %d repairs", r.Round, st.Moves, st.Repairs)
				}
			}
			t.Log("\n" + b.String())
			rr, _, _ := rep.Mean(StrategyRoundRobin, 1)
			ours, worst, moves := rep.Mean(StrategyOurs, 1)
			t.Logf("mean over rounds 1-%d: round-robin %.3f, ours %.4f (worst layer %.4f), %.1f replicas moved per round",
				cfg.Rounds, rr, ours, worst, moves)
			if ours > tc.maxMean {
				t.Errorf("ours averages %.4f over rounds 1-%d, want <= %.2f", ours, cfg.Rounds, tc.maxMean)
			}
		})
	}
}

func TestSimulateDeterministic(t *testing.T) {
	cfg := DefaultSimConfig()
	cfg.Rounds = 3
	a, err := Simulate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Simulate(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same config, different reports")
	}
	if len(a.Rows) != 3*(cfg.Rounds+1) {
		t.Fatalf("%d rows, want %d", len(a.Rows), 3*(cfg.Rounds+1))
	}
	if a.Config.Capacity != 72 {
		t.Errorf("default capacity %d, want 72 = 512 * 1.125 / 8", a.Config.Capacity)
	}
}

func TestSimulateLoad(t *testing.T) {
	load := [][]float64{{50, 30, 10, 5, 3, 2}, {1, 1, 1, 1, 1, 95}}
	rep, err := Simulate(SimConfig{Nodes: 3, Load: load, Redundant: 0.5, Rounds: 2, Shift: 0.5, Budget: 2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if c := rep.Config; c.Layers != 2 || c.Experts != 6 || c.Capacity != 6 {
		t.Errorf("config %+v: want the load's shape, 2 x 6, and 6 slots per node", c)
	}
	for _, r := range rep.Rows {
		if r.Strategy == StrategyOurs && (r.Imbalance < 1 || math.IsNaN(r.Imbalance)) {
			t.Errorf("row %+v", r)
		}
	}
}

func TestSimulateErrors(t *testing.T) {
	for _, cfg := range []SimConfig{
		{},
		{Nodes: 2, Layers: 1, Experts: 4, Shift: 2},
		{Nodes: 2, Layers: 1, Experts: 4, Zipf: -1},
		{Nodes: 2, Layers: 1, Experts: 4, Rounds: -1},
		{Nodes: 2, Layers: 1, Experts: 4, Capacity: 1}, // too small
		{Nodes: 2, Load: [][]float64{{1, 2}, {3}}},
	} {
		if _, err := Simulate(cfg); err == nil {
			t.Errorf("Simulate(%+v) succeeded", cfg)
		}
	}
}

func TestParseLoad(t *testing.T) {
	for _, tc := range []struct {
		name, format, in string
		want             [][]float64
		err              string
	}{
		{"json", "", `{"layers": [[1, 2.5, 0], [3, 4, 5]]}`, [][]float64{{1, 2.5, 0}, {3, 4, 5}}, ""},
		{"json named", "json", ` {"layers": [[7]]}`, [][]float64{{7}}, ""},
		{"csv", "", "layer,expert,load\n0,0,1\n1,2,5\n# note\n\n0,1,2.5\n", [][]float64{{1, 2.5, 0}, {0, 0, 5}}, ""},
		{"csv no header", "csv", "0, 1, 3\n0,0,1\n", [][]float64{{1, 3}}, ""},
		{"json ragged", "", `{"layers": [[1, 2], [3]]}`, nil, "layer 1 has 1 experts"},
		{"json empty", "", `{"layers": []}`, nil, "at least one layer"},
		{"json unknown field", "", `{"layer": [[1]]}`, nil, "unknown field"},
		{"json negative", "", `{"layers": [[1, -2]]}`, nil, "layer 0 expert 1"},
		{"csv duplicate", "", "0,0,1\n0,0,2\n", nil, "listed twice"},
		{"csv bad index", "", "0,0,1\nx,0,2\n", nil, "line 2"},
		{"csv bad load", "", "0,0,abc\n", nil, "not a number"},
		{"csv negative index", "", "0,-1,3\n", nil, "non-negative"},
		{"csv short row", "", "0,0\n", nil, "wrong number of fields"},
		{"csv empty", "csv", "layer,expert,load\n", nil, "no layer,expert,load rows"},
		{"empty", "", "  \n", nil, "empty load file"},
		{"format", "yaml", "", nil, "want json or csv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLoad(strings.NewReader(tc.in), tc.format)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
