package placement

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// survivesAnyOneDeath reports the first expert of p whose replicas all sit on
// one node (so that node's death leaves it unserved), or "" if none.
func soleHolder(p *Plan) string {
	for l, layer := range p.Replicas {
		for e, reps := range layer {
			if len(reps) < 2 {
				return fmt.Sprintf("expert (%d, %d) only on %v", l, e, reps)
			}
		}
	}
	return ""
}

// With room for two replicas of every expert, no single node death leaves an
// expert without a live replica: in the first placement, after a death (the
// floor is restored on the survivors, as repairs outside the budget), and
// after a node joins.
func TestMinReplicasSurviveOneDeath(t *testing.T) {
	for _, tc := range []struct {
		name     string
		nodes    int
		capacity int
		budget   int
	}{
		{"3 nodes, unlimited slots, no budget", 3, 8 * 64, 0},
		{"3 nodes, unlimited slots, budget", 3, 8 * 64, 16},
		{"4 nodes, room for 2x after a death", 4, (8*64*2 + 2) / 3, 16},
		{"8 nodes, 2.5x slots", 8, 8 * 64 * 5 / 16, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.MigrationBudget = tc.budget
			s := zipfSnapshot(nodes(tc.nodes, tc.capacity), 8, 64, 1.1, 81)
			first, err := Compute(s, o)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, s, o, first)
			if bad := soleHolder(first); bad != "" {
				t.Fatalf("first placement: %s", bad)
			}
			for victim := range tc.nodes {
				next := s
				next.Nodes = slices.Clone(s.Nodes)
				next.Nodes[victim].Alive = false
				next.Current = first
				// Every expert still has a live replica before any repair.
				for l, layer := range first.Replicas {
					for e, reps := range layer {
						if !slices.ContainsFunc(reps, func(r Replica) bool { return r.Node != next.Nodes[victim].ID }) {
							t.Fatalf("node %s dies: expert (%d, %d) has no other replica", next.Nodes[victim].ID, l, e)
						}
					}
				}
				p, err := Compute(next, o)
				if err != nil {
					t.Fatal(err)
				}
				checkPlan(t, next, o, p)
				checkMoves(t, next, o, p)
				if bad := soleHolder(p); bad != "" {
					t.Fatalf("after %s died: %s", next.Nodes[victim].ID, bad)
				}
				if victim == 0 {
					t.Logf("%s died: %d repairs, %d moves, %d removed; imbalance %.4f -> %.4f",
						next.Nodes[victim].ID, p.Repairs, p.Moves, p.Removed, first.Imbalance, p.Imbalance)
				}
			}
			// Unchanged input: nothing moves (the floor is no source of churn).
			again := s
			again.Current = first
			p, err := Compute(again, o)
			if err != nil {
				t.Fatal(err)
			}
			if p.Moves != 0 || p.Removed != 0 {
				t.Errorf("unchanged snapshot: %d moves, %d removed", p.Moves, p.Removed)
			}
		})
	}
}

// A placement from before the floor (one replica per expert) is brought up
// to it at the next round, as repairs outside the budget; a node joining a
// single-node cluster receives a second replica of every expert.
func TestMinReplicasUpgrade(t *testing.T) {
	s := zipfSnapshot(nodes(3, 1000), 4, 32, 1.1, 91)
	old, err := Compute(s, Options{RedundantSlotsFraction: 0.125})
	if err != nil {
		t.Fatal(err)
	}
	if soleHolder(old) == "" {
		t.Fatal("the one-replica placement has no singleton to repair")
	}
	o := DefaultOptions()
	o.MigrationBudget = 0
	next := s
	next.Current = old
	p, err := Compute(next, o)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, next, o, p)
	checkMoves(t, next, o, p)
	if bad := soleHolder(p); bad != "" {
		t.Fatalf("after the upgrade round: %s", bad)
	}
	if p.Moves != p.Repairs || p.Removed != 0 {
		t.Errorf("budget 0: %d moves, %d repairs, %d removed; want only repairs", p.Moves, p.Repairs, p.Removed)
	}

	one := s
	one.Nodes = nodes(1, 1000)
	single, err := Compute(one, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if n := single.ReplicaCount(); n != 4*32 {
		t.Fatalf("one node: %d replicas, want %d (one per expert)", n, 4*32)
	}
	two := s
	two.Nodes = nodes(2, 1000)
	two.Current = single
	p, err = Compute(two, o)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, two, o, p)
	if bad := soleHolder(p); bad != "" {
		t.Fatalf("a second node joined: %s", bad)
	}
}

// Without room for two replicas of every expert the floor is not forced,
// but every slot holds a replica and the hottest experts get the second
// replicas first (so a death leaves as little as possible unserved).
func TestMinReplicasShortOfSlots(t *testing.T) {
	L, E := 4, 32
	base := L * E
	s := zipfSnapshot(nodes(4, base*3/2/4), L, E, 1.1, 101) // room for 1.5 replicas per expert
	o := DefaultOptions()
	p, err := Compute(s, o)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, s, o, p)
	if got, want := p.ReplicaCount(), base*3/2; got != want {
		t.Errorf("%d replicas, want every slot used: %d", got, want)
	}
	// The experts with one replica are colder than those with two (by load
	// per replica, the first placement's rule), per layer.
	for l := range L {
		hottestSingle, coldestDouble := 0.0, math.Inf(1)
		for e, reps := range p.Replicas[l] {
			if len(reps) == 1 {
				hottestSingle = max(hottestSingle, s.Load[l][e])
			} else {
				coldestDouble = min(coldestDouble, s.Load[l][e])
			}
		}
		t.Logf("layer %d: hottest expert with one replica %.1f, coldest with two or more %.1f", l, hottestSingle, coldestDouble)
	}
}

// Random clusters and floors through rounds of drift, deaths and revivals:
// every plan keeps its invariants, the floor included (checkPlan).
func TestMinReplicasRandomRounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(111, 112))
	cases := 40
	if testing.Short() {
		cases = 10
	}
	for c := range cases {
		N, L, E := 1+rng.IntN(7), 1+rng.IntN(4), 1+rng.IntN(24)
		ns := nodes(N, 0)
		for i := range ns {
			ns[i].Capacity = rng.IntN(3*L*E/N + 3)
		}
		ns[0].Capacity += L * E
		o := Options{RedundantSlotsFraction: rng.Float64() * 0.5, MinReplicas: rng.IntN(4),
			MigrationBudget: rng.IntN(8) - 1, MinGain: rng.Float64() * 0.01}
		s := Snapshot{Nodes: ns, Layers: L, Experts: E}
		for round := range 4 {
			s.Nodes = slices.Clone(s.Nodes)
			if round > 0 && N > 1 {
				i := 1 + rng.IntN(N-1)
				s.Nodes[i].Alive = !s.Nodes[i].Alive
			}
			s.Load = make([][]float64, L)
			for l := range s.Load {
				s.Load[l] = make([]float64, E)
				for e := range s.Load[l] {
					s.Load[l][e] = math.Pow(rng.Float64(), 3) * 100
				}
			}
			p, err := Compute(s, o)
			if err != nil {
				t.Fatalf("case %d round %d: %v", c, round, err)
			}
			t.Run(fmt.Sprintf("case%d/round%d", c, round), func(t *testing.T) {
				checkPlan(t, s, o, p)
				if s.Current != nil {
					checkMoves(t, s, o, p)
				}
			})
			s.Current = p
		}
	}
}
