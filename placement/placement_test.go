package placement

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// nodes returns n alive nodes with the given capacity, named node-00...
func nodes(n, capacity int) []Node {
	out := make([]Node, n)
	for i := range out {
		out[i] = Node{ID: fmt.Sprintf("node-%02d", i), Alive: true, Capacity: capacity}
	}
	return out
}

// zipfSnapshot is layers x experts with Zipf(s) loads, ranks shuffled per
// layer by seed.
func zipfSnapshot(ns []Node, layers, experts int, s float64, seed uint64) Snapshot {
	rng := rand.New(rand.NewPCG(seed, 7))
	load := make([][]float64, layers)
	for l := range load {
		vals := zipfLoads(experts, s)
		perm := rng.Perm(experts)
		load[l] = make([]float64, experts)
		for e := range load[l] {
			load[l][e] = vals[perm[e]]
		}
	}
	return Snapshot{Nodes: ns, Layers: layers, Experts: experts, Load: load}
}

// checkPlan verifies the invariants every plan must satisfy.
func checkPlan(t *testing.T, s Snapshot, o Options, p *Plan) {
	t.Helper()
	usable := map[string]int{}
	for _, n := range s.Nodes {
		if n.Alive && n.Capacity > 0 {
			usable[n.ID] = n.Capacity
		}
	}
	if len(p.Replicas) != s.Layers {
		t.Fatalf("plan has %d layers, want %d", len(p.Replicas), s.Layers)
	}
	used := map[string]int{}
	total := 0
	for l, layer := range p.Replicas {
		if len(layer) != s.Experts {
			t.Fatalf("layer %d has %d experts, want %d", l, len(layer), s.Experts)
		}
		for e, reps := range layer {
			if len(reps) == 0 {
				t.Fatalf("expert (%d, %d) has no replica", l, e)
			}
			sum := 0.0
			for i, r := range reps {
				if _, ok := usable[r.Node]; !ok {
					t.Fatalf("expert (%d, %d) on node %q, which is dead, unknown or without capacity", l, e, r.Node)
				}
				if i > 0 && reps[i-1].Node >= r.Node {
					t.Fatalf("expert (%d, %d) replicas not on distinct nodes sorted by ID: %v", l, e, reps)
				}
				if r.Share < 0 || math.IsNaN(r.Share) {
					t.Fatalf("expert (%d, %d) share %v", l, e, r.Share)
				}
				sum += r.Share
				used[r.Node]++
				total++
			}
			if math.Abs(sum-1) > 1e-9 {
				t.Fatalf("expert (%d, %d) shares sum to %v", l, e, sum)
			}
		}
	}
	for id, n := range used {
		if n > usable[id] {
			t.Fatalf("node %s holds %d replicas, capacity %d", id, n, usable[id])
		}
	}
	base := s.Layers * s.Experts
	slots := 0
	for _, c := range usable {
		slots += min(c, base)
	}
	cover := min(max(o.MinReplicas, 1), len(usable))
	if limit := cover*base + int(math.Round(o.RedundantSlotsFraction*float64(base))); total > limit {
		t.Fatalf("%d replicas, more than %d allowed", total, limit)
	}
	// The floor: with room for cover replicas of every expert, every expert
	// has them, so losing cover-1 nodes leaves each one a live replica.
	if slots >= cover*base {
		for l, layer := range p.Replicas {
			for e, reps := range layer {
				if len(reps) < cover {
					t.Fatalf("expert (%d, %d) has %d replicas, want at least %d (MinReplicas %d, %d nodes, %d usable slots)",
						l, e, len(reps), cover, o.MinReplicas, len(usable), slots)
				}
			}
		}
	}
	if total != p.ReplicaCount() {
		t.Fatalf("ReplicaCount %d, counted %d", p.ReplicaCount(), total)
	}
	// Predicted loads and imbalance agree with the shares.
	if len(p.Nodes) != len(usable) || len(p.NodeLoad) != len(usable) {
		t.Fatalf("plan lists %d nodes and %d node loads, want %d", len(p.Nodes), len(p.NodeLoad), len(usable))
	}
	mean, worst := Evaluate(s, p)
	if math.Abs(mean-p.Imbalance) > 1e-6 || math.Abs(worst-slices.Max(p.LayerImbalance)) > 1e-6 {
		t.Fatalf("Evaluate = %v, %v; plan says %v, %v", mean, worst, p.Imbalance, slices.Max(p.LayerImbalance))
	}
	if len(p.LayerImbalance) != s.Layers {
		t.Fatalf("LayerImbalance has %d layers", len(p.LayerImbalance))
	}
	for l, row := range p.LayerLoad {
		total := 0.0
		for _, v := range row {
			total += v
		}
		if want := layerTotal(s, l); math.Abs(total-want) > 1e-6*max(want, 1) {
			t.Fatalf("layer %d predicted load %v, want %v", l, total, want)
		}
	}
}

// layerTotal is the load of layer l as Compute counts it (uniform if unknown).
func layerTotal(s Snapshot, l int) float64 {
	sum := func(l int) float64 {
		t := 0.0
		if s.Load != nil {
			for _, v := range s.Load[l] {
				t += v
			}
		}
		return t
	}
	if t := sum(l); t > 0 {
		return t
	}
	known, all := 0, 0.0
	for k := range s.Layers {
		if t := sum(k); t > 0 {
			known++
			all += t
		}
	}
	if known == 0 {
		return float64(s.Experts)
	}
	return all / float64(known)
}

// checkMoves verifies the move accounting of p against s.Current.
func checkMoves(t *testing.T, s Snapshot, o Options, p *Plan) {
	t.Helper()
	added, removed := 0, 0
	for l := range s.Layers {
		for e := range s.Experts {
			old := map[string]bool{}
			for _, r := range s.Current.Replicas[l][e] {
				old[r.Node] = true
			}
			for _, r := range p.Replicas[l][e] {
				if !old[r.Node] {
					added++
				}
				delete(old, r.Node)
			}
			removed += len(old)
		}
	}
	if added != p.Moves || removed != p.Removed {
		t.Fatalf("plan says %d moves, %d removed; counted %d, %d", p.Moves, p.Removed, added, removed)
	}
	if o.MigrationBudget >= 0 && p.Moves-p.Repairs > o.MigrationBudget {
		t.Fatalf("%d moves, %d repairs: over the budget %d", p.Moves, p.Repairs, o.MigrationBudget)
	}
}

func TestComputeProperties(t *testing.T) {
	hetero := nodes(6, 0)
	for i := range hetero {
		hetero[i].Capacity = 10 + 6*i
	}
	mixed := nodes(8, 40)
	mixed[2].Alive = false
	mixed[5].Capacity = 0
	dead := nodes(8, 100)
	dead[0].Alive, dead[7].Alive = false, false
	cases := []struct {
		name string
		s    Snapshot
		o    Options
	}{
		{"zipf 1.1, 12.5% redundant", zipfSnapshot(nodes(8, 72), 8, 64, 1.1, 1), DefaultOptions()},
		{"unknown load", Snapshot{Nodes: nodes(8, 72), Layers: 8, Experts: 64}, DefaultOptions()},
		{"one known layer", func() Snapshot {
			s := zipfSnapshot(nodes(4, 40), 3, 32, 1, 2)
			clear(s.Load[0])
			clear(s.Load[2])
			return s
		}(), DefaultOptions()},
		{"no redundancy", zipfSnapshot(nodes(8, 64), 8, 64, 1.1, 3), Options{}},
		{"redundancy capped by capacity", zipfSnapshot(nodes(4, 33), 2, 64, 1.2, 4), Options{RedundantSlotsFraction: 0.5}},
		{"redundancy capped by node count", zipfSnapshot(nodes(3, 100), 1, 4, 2, 5), Options{RedundantSlotsFraction: 4}},
		{"heterogeneous capacity", zipfSnapshot(hetero, 4, 32, 1.1, 6), DefaultOptions()},
		{"dead and empty nodes", zipfSnapshot(mixed, 4, 48, 1.0, 7), DefaultOptions()},
		{"dead nodes, spare room", zipfSnapshot(dead, 8, 64, 1.2, 8), Options{RedundantSlotsFraction: 0.25}},
		{"single node", zipfSnapshot(nodes(1, 200), 3, 64, 1.1, 9), DefaultOptions()},
		{"more nodes than experts", zipfSnapshot(nodes(16, 4), 4, 8, 1.5, 10), DefaultOptions()},
		{"one hot expert", Snapshot{Nodes: nodes(4, 10), Layers: 1, Experts: 8,
			Load: [][]float64{{100, 0, 0, 0, 0, 0, 0, 1}}}, Options{RedundantSlotsFraction: 0.5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compute(tc.s, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, tc.s, tc.o, p)
			if p.Moves != p.ReplicaCount() || p.Repairs != 0 || p.Removed != 0 {
				t.Errorf("first placement: moves %d repairs %d removed %d, want %d 0 0", p.Moves, p.Repairs, p.Removed, p.ReplicaCount())
			}
			t.Logf("imbalance %.4f (worst layer %.4f), %d replicas", p.Imbalance, slices.Max(p.LayerImbalance), p.ReplicaCount())
		})
	}
}

func TestComputeBalance(t *testing.T) {
	t.Run("unknown load is spread evenly", func(t *testing.T) {
		p, err := Compute(Snapshot{Nodes: nodes(8, 64), Layers: 8, Experts: 64}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Imbalance > 1+1e-9 {
			t.Errorf("imbalance %v, want 1", p.Imbalance)
		}
	})
	t.Run("one hot expert is split", func(t *testing.T) {
		// Expert 0 carries 3/4 of the load: only replicas on 3 nodes, with
		// the cold experts on the fourth, balance it.
		s := Snapshot{Nodes: nodes(4, 4), Layers: 1, Experts: 4, Load: [][]float64{{9, 1, 1, 1}}}
		p, err := Compute(s, Options{RedundantSlotsFraction: 0.5})
		if err != nil {
			t.Fatal(err)
		}
		checkPlan(t, s, Options{RedundantSlotsFraction: 0.5}, p)
		if len(p.Replicas[0][0]) != 3 || p.Imbalance > 1+1e-9 {
			t.Errorf("hot expert has %d replicas, imbalance %v; want 3 and 1: %v", len(p.Replicas[0][0]), p.Imbalance, p.Replicas)
		}
	})
}

func TestComputeDeterministic(t *testing.T) {
	s := zipfSnapshot(nodes(8, 80), 8, 64, 1.1, 11)
	o := DefaultOptions()
	a, err := Compute(s, o)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Compute(s, o)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same snapshot, different plans")
	}
	// Node order does not matter.
	r := s
	r.Nodes = slices.Clone(s.Nodes)
	slices.Reverse(r.Nodes)
	c, _ := Compute(r, o)
	if !reflect.DeepEqual(a, c) {
		t.Fatal("reordering the nodes changed the plan")
	}
	// Nor does it with a current placement, a dead node and new load.
	next := zipfSnapshot(s.Nodes, 8, 64, 1.1, 12)
	next.Nodes = slices.Clone(s.Nodes)
	next.Nodes[3].Alive = false
	next.Current = a
	d1, err := Compute(next, o)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(next.Nodes)
	d2, _ := Compute(next, o)
	if !reflect.DeepEqual(d1, d2) {
		t.Fatal("same round, different plans")
	}
	// Compute does not modify its input.
	if !reflect.DeepEqual(next.Current, a) {
		t.Fatal("Compute modified Snapshot.Current")
	}
}

func TestComputeErrors(t *testing.T) {
	good := func() Snapshot { return zipfSnapshot(nodes(4, 20), 2, 32, 1, 1) }
	cur, err := Compute(good(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(*Snapshot, *Options)
		is     error
		text   string
	}{
		{"no nodes", func(s *Snapshot, _ *Options) { s.Nodes = nil }, ErrNoAliveNodes, "no alive"},
		{"all dead", func(s *Snapshot, _ *Options) {
			for i := range s.Nodes {
				s.Nodes[i].Alive = false
			}
		}, ErrNoAliveNodes, "4 nodes listed"},
		{"too few slots", func(s *Snapshot, _ *Options) { s.Nodes[0].Capacity = 1 }, ErrCapacity, "needs 64"},
		{"too few slots after a death", func(s *Snapshot, _ *Options) { s.Nodes[1].Alive = false }, ErrCapacity, "3 alive nodes have 60 slots"},
		{"no layers", func(s *Snapshot, _ *Options) { s.Layers = 0 }, ErrInvalid, "positive"},
		{"load layers", func(s *Snapshot, _ *Options) { s.Load = s.Load[:1] }, ErrInvalid, "Load has 1 layers"},
		{"load experts", func(s *Snapshot, _ *Options) { s.Load[1] = s.Load[1][:5] }, ErrInvalid, "Load[1] has 5 experts"},
		{"negative load", func(s *Snapshot, _ *Options) { s.Load[0][3] = -1 }, ErrInvalid, "Load[0][3]"},
		{"NaN load", func(s *Snapshot, _ *Options) { s.Load[1][0] = math.NaN() }, ErrInvalid, "Load[1][0]"},
		{"duplicate node", func(s *Snapshot, _ *Options) { s.Nodes[1].ID = s.Nodes[0].ID }, ErrInvalid, "twice"},
		{"empty ID", func(s *Snapshot, _ *Options) { s.Nodes[2].ID = "" }, ErrInvalid, "empty ID"},
		{"negative capacity", func(s *Snapshot, _ *Options) { s.Nodes[2].Capacity = -3 }, ErrInvalid, "capacity -3"},
		{"negative redundancy", func(_ *Snapshot, o *Options) { o.RedundantSlotsFraction = -0.1 }, ErrInvalid, "RedundantSlotsFraction"},
		{"negative min gain", func(_ *Snapshot, o *Options) { o.MinGain = -1 }, ErrInvalid, "MinGain"},
		{"current shape", func(s *Snapshot, _ *Options) { s.Current = cur; s.Experts = 16; s.Load = nil }, ErrInvalid, "Current layer 0 has 32 experts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, o := good(), Options{}
			tc.mutate(&s, &o)
			_, err := Compute(s, o)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %v, want %v containing %q", err, tc.is, tc.text)
			}
		})
	}
}

func TestNodeDeath(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int
		budget   int
	}{
		{"spare capacity, no budget", 84, 0},
		{"spare capacity, budget", 84, 16},
		{"tight capacity, no budget", 74, 0}, // 7 x 74 = 518 slots: 6 redundant replicas of 64 may stay
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{RedundantSlotsFraction: 0.125, MigrationBudget: tc.budget}
			s := zipfSnapshot(nodes(8, tc.capacity), 8, 64, 1.1, 21)
			first, err := Compute(s, o)
			if err != nil {
				t.Fatal(err)
			}
			victim := first.Nodes[2]
			lost, only := 0, 0
			for l := range first.Replicas {
				for _, reps := range first.Replicas[l] {
					for _, r := range reps {
						if r.Node == victim {
							lost++
							if len(reps) == 1 {
								only++
							}
						}
					}
				}
			}
			next := s
			next.Nodes = slices.Clone(s.Nodes)
			next.Nodes[2].Alive = false
			next.Current = first
			p, err := Compute(next, o)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, next, o, p)
			checkMoves(t, next, o, p)
			if p.Repairs < only {
				t.Errorf("%d repairs, but %d experts had their only replica on the dead node", p.Repairs, only)
			}
			if p.Removed < lost {
				t.Errorf("%d removed, but the dead node held %d", p.Removed, lost)
			}
			if tc.budget == 0 && tc.capacity == 84 && (p.Moves != p.Repairs || p.Removed != lost) {
				t.Errorf("budget 0: moves %d, repairs %d, removed %d (dead node held %d): survivors' replicas must stay", p.Moves, p.Repairs, p.Removed, lost)
			}
			t.Logf("dead node held %d replicas (%d sole): %d repairs, %d moves, %d removed; imbalance %.4f -> %.4f",
				lost, only, p.Repairs, p.Moves, p.Removed, first.Imbalance, p.Imbalance)
		})
	}
}

func TestStickiness(t *testing.T) {
	s := zipfSnapshot(nodes(8, 72), 8, 64, 1.1, 31)
	o := DefaultOptions()
	first, err := Compute(s, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("same load, no moves", func(t *testing.T) {
		next := s
		next.Current = first
		p, err := Compute(next, o)
		if err != nil {
			t.Fatal(err)
		}
		checkMoves(t, next, o, p)
		if p.Moves != 0 || p.Removed != 0 {
			t.Errorf("%d moves, %d removed on an unchanged snapshot", p.Moves, p.Removed)
		}
	})
	t.Run("gain below MinGain keeps the placement", func(t *testing.T) {
		next := zipfSnapshot(s.Nodes, 8, 64, 1.1, 32)
		next.Current = first
		high := o
		high.MinGain = 100
		p, err := Compute(next, high)
		if err != nil {
			t.Fatal(err)
		}
		checkMoves(t, next, high, p)
		if p.Moves != 0 || p.Removed != 0 {
			t.Errorf("%d moves, %d removed though no move can gain 100", p.Moves, p.Removed)
		}
		low, err := Compute(next, o)
		if err != nil {
			t.Fatal(err)
		}
		checkMoves(t, next, o, low)
		if low.Moves == 0 || low.Imbalance >= p.Imbalance {
			t.Errorf("with MinGain %v: %d moves, imbalance %v (kept: %v)", o.MinGain, low.Moves, low.Imbalance, p.Imbalance)
		}
		t.Logf("new load: kept placement %.4f, %d moves -> %.4f", p.Imbalance, low.Moves, low.Imbalance)
	})
}

// TestRandomRounds plays random clusters through rounds of load drift, node
// deaths and revivals, checking every plan.
func TestRandomRounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	cases := 40
	if testing.Short() {
		cases = 10
	}
	for c := range cases {
		N, L, E := 1+rng.IntN(9), 1+rng.IntN(4), 1+rng.IntN(24)
		ns := nodes(N, 0)
		for i := range ns {
			ns[i].Capacity = rng.IntN(2*L*E/N + 3)
		}
		ns[0].Capacity += L * E // always enough room in all
		o := Options{RedundantSlotsFraction: rng.Float64() * 0.5, MigrationBudget: rng.IntN(8) - 1, MinGain: rng.Float64() * 0.01}
		s := Snapshot{Nodes: ns, Layers: L, Experts: E}
		for round := range 4 {
			s.Nodes = slices.Clone(s.Nodes)
			if round > 0 && N > 1 {
				i := 1 + rng.IntN(N-1) // node 0 never dies, so capacity suffices
				s.Nodes[i].Alive = !s.Nodes[i].Alive
			}
			if rng.IntN(4) > 0 {
				s.Load = make([][]float64, L)
				for l := range s.Load {
					s.Load[l] = make([]float64, E)
					for e := range s.Load[l] {
						if rng.IntN(5) > 0 {
							s.Load[l][e] = math.Pow(rng.Float64(), 3) * 100
						}
					}
				}
			} else {
				s.Load = nil
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

func TestWaterfill(t *testing.T) {
	for _, tc := range []struct {
		w    float64
		base []float64
		want []float64
	}{
		{6, []float64{0, 2, 10}, []float64{4.0 / 6, 2.0 / 6, 0}},
		{3, []float64{1, 1, 1}, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}},
		{1, []float64{5, 0}, []float64{0, 1}},
		{10, []float64{5, 0}, []float64{0.25, 0.75}},
		{0, []float64{5, 0}, []float64{0.5, 0.5}},
	} {
		got := make([]float64, len(tc.base))
		waterfill(tc.w, tc.base, got, make([]int, len(tc.base)))
		for i := range got {
			if math.Abs(got[i]-tc.want[i]) > 1e-12 {
				t.Errorf("waterfill(%v, %v) = %v, want %v", tc.w, tc.base, got, tc.want)
				break
			}
		}
	}
}

// TestBalanceLayerOptimal checks the water-filled shares against the exact
// optimum: with divisible load, the least max node load is the max over node
// sets U of (load of the experts with all replicas in U) / |U|.
func TestBalanceLayerOptimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(51, 52))
	for c := range 200 {
		N, E := 2+rng.IntN(5), 1+rng.IntN(10)
		load := make([]float64, E)
		for e := range load {
			load[e] = math.Pow(rng.Float64(), 2) * 10
		}
		s := Snapshot{Nodes: nodes(N, E), Layers: 1, Experts: E, Load: [][]float64{load}}
		o := Options{}
		st := newState(&s, &o)
		masks := make([]int, E)
		for e := range E {
			for n := range N {
				if rng.IntN(3) == 0 || (n == N-1 && masks[e] == 0) {
					st.add(0, e, n)
					masks[e] |= 1 << n
				}
			}
			for i := range st.share[0][e] {
				st.share[0][e][i] = 1 / float64(len(st.share[0][e]))
			}
		}
		st.balanceLayer(0)
		opt := 0.0
		for u := 1; u < 1<<N; u++ {
			in := 0.0
			for e, m := range masks {
				if m&^u == 0 {
					in += st.w[0][e]
				}
			}
			size := 0
			for v := u; v > 0; v &= v - 1 {
				size++
			}
			opt = max(opt, in/float64(size))
		}
		if got := st.info[0].max; got > opt*(1+1e-6)+1e-9 || got < opt*(1-1e-9)-1e-9 {
			t.Fatalf("case %d: water-filled max %v, optimum %v", c, got, opt)
		}
	}
}

func TestRoundRobin(t *testing.T) {
	s := zipfSnapshot(nodes(8, 64), 8, 64, 1.1, 61)
	p, err := RoundRobin(s)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, s, Options{}, p)
	for _, n := range p.Nodes {
		if got := p.NodeLoad[n]; got <= 0 {
			t.Errorf("node %s has load %v", n, got)
		}
	}
}

func ExampleCompute() {
	s := Snapshot{
		Nodes: []Node{
			{ID: "expert-a", Alive: true, Capacity: 4},
			{ID: "expert-b", Alive: true, Capacity: 4},
			{ID: "expert-c", Alive: true, Capacity: 4},
		},
		Layers:  1,
		Experts: 4,
		Load:    [][]float64{{60, 20, 10, 10}}, // expert 0 is hot
	}
	p, err := Compute(s, Options{RedundantSlotsFraction: 0.5})
	if err != nil {
		panic(err)
	}
	for e, reps := range p.Replicas[0] {
		fmt.Print("expert ", e, ":")
		for _, r := range reps {
			fmt.Printf(" %s %.2f", r.Node, r.Share)
		}
		fmt.Println()
	}
	fmt.Printf("imbalance %.2f\n", p.Imbalance)
	// Output:
	// expert 0: expert-a 0.22 expert-b 0.39 expert-c 0.39
	// expert 1: expert-a 1.00
	// expert 2: expert-b 1.00
	// expert 3: expert-c 1.00
	// imbalance 1.00
}

func benchmarkCompute(b *testing.B, n, layers, experts, budget int) {
	capacity := (layers*experts*9/8 + n - 1) / n
	s := zipfSnapshot(nodes(n, capacity), layers, experts, 1.1, 71)
	o := DefaultOptions()
	o.MigrationBudget = budget
	first, err := Compute(s, o)
	if err != nil {
		b.Fatal(err)
	}
	next := zipfSnapshot(s.Nodes, layers, experts, 1.1, 72)
	next.Current = first
	b.ResetTimer()
	for b.Loop() {
		if budget == 0 {
			_, err = Compute(s, o)
		} else {
			_, err = Compute(next, o)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// First placements, and rounds after a complete reshuffle of the load.
func BenchmarkFirst8x64on8(b *testing.B)   { benchmarkCompute(b, 8, 8, 64, 0) }
func BenchmarkFirst40x64on16(b *testing.B) { benchmarkCompute(b, 16, 40, 64, 0) }
func BenchmarkRound8x64on8(b *testing.B)   { benchmarkCompute(b, 8, 8, 64, 16) }
func BenchmarkRound40x64on16(b *testing.B) { benchmarkCompute(b, 16, 40, 64, 80) }
