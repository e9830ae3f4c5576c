package placement

import (
	"math"
	"slices"
	"sort"
)

// state is the planner's mutable working copy. Nodes are the alive nodes
// with capacity, indexed in ID order; loads are normalised per layer so that the mean node
// load of every layer is 1 and a layer's max node load is its max/mean.
type state struct {
	layers, experts, nodes int

	ids      []string    // [node] alive node IDs, ascending
	capacity []int       // [node] expert slots
	used     []int       // [node] replicas held
	w        [][]float64 // [layer][expert] normalised load; a layer sums to nodes
	scale    []float64   // [layer] factor from normalised to Snapshot.Load units

	reps   [][][]int     // [layer][expert] nodes holding a replica, ascending
	share  [][][]float64 // [layer][expert] share of each replica, aligned with reps
	x      [][]float64   // [layer][node] predicted normalised load
	onNode [][][]int     // [layer][node] experts with a replica on the node, ascending

	info []layerInfo // [layer] summary of x, refreshed by recomputeLayer

	total  int // replicas held
	target int // replicas wanted: the floor's plus the redundant ones, within the slots
	// floor is the fewest replicas of every expert the placement keeps
	// (Options.MinReplicas, capped by the nodes; 1 when the slots cannot
	// hold that many of every expert); cover is MinReplicas capped by the
	// nodes, which a first placement gives the hottest experts first even
	// when the slots do not allow it for all.
	floor, cover int

	repaired []int // keys (see key) of the replicas repair added, which improve must not undo
	repairs  int   // set only on a fresh plan that replaces a repaired one: its Repairs

	scratch scratch
}

// layerInfo summarises one layer's node loads for fast move evaluation.
type layerInfo struct {
	max, sq float64 // max and sum of squares of the node loads

	// tight is [node] the group of nodes at the max the node belongs to, or
	// -1 below it. Tight nodes are grouped when an expert carries load on
	// both, so a full rebalance spreads a change of one over its group.
	tight []int
	size  []int     // [group] nodes
	sum   []float64 // [group] load

	top   []int // up to topK nodes with the most load, most first
	loose []int // the same among nodes not at the max
}

// topK is how many of the most loaded nodes layerInfo remembers.
const topK = 4

func (li *layerInfo) clone() layerInfo {
	return layerInfo{max: li.max, sq: li.sq, tight: slices.Clone(li.tight), size: slices.Clone(li.size),
		sum: slices.Clone(li.sum), top: slices.Clone(li.top), loose: slices.Clone(li.loose)}
}

// scratch holds buffers reused by the water-filling and move evaluation so the
// inner loops allocate nothing.
type scratch struct {
	set, idx  []int
	base, out []float64
	oldC      []float64

	// An overlay of changed node loads for evalLayer: val[n] is valid when
	// mark[n] == epoch; touched lists those nodes.
	val     []float64
	mark    []uint32
	epoch   uint32
	touched []int
	sums    []float64
}

func newScratch(nodes int) scratch {
	return scratch{
		set:     make([]int, 0, nodes+1),
		idx:     make([]int, nodes+1),
		base:    make([]float64, nodes+1),
		out:     make([]float64, nodes+1),
		oldC:    make([]float64, 0, nodes+1),
		val:     make([]float64, nodes),
		mark:    make([]uint32, nodes),
		touched: make([]int, 0, 2*nodes+2),
		sums:    make([]float64, nodes),
	}
}

// newState prepares an empty placement for s. s and o must be valid.
func newState(s *Snapshot, o *Options) *state {
	var alive []Node
	for _, n := range s.Nodes {
		if n.Alive && n.Capacity > 0 {
			alive = append(alive, n)
		}
	}
	sort.Slice(alive, func(i, j int) bool { return alive[i].ID < alive[j].ID })
	st := &state{layers: s.Layers, experts: s.Experts, nodes: len(alive)}
	N := st.nodes
	for _, n := range alive {
		st.ids = append(st.ids, n.ID)
		st.capacity = append(st.capacity, n.Capacity)
	}
	st.used = make([]int, N)

	// Normalise loads. Unknown layers (all zero) get a uniform load whose
	// total is the mean total of the known layers, or Experts if none is known.
	totals := make([]float64, s.Layers)
	known, sumKnown := 0, 0.0
	for l := range s.Layers {
		if s.Load != nil {
			for _, v := range s.Load[l] {
				totals[l] += v
			}
		}
		if totals[l] > 0 {
			known++
			sumKnown += totals[l]
		}
	}
	fill := float64(s.Experts)
	if known > 0 {
		fill = sumKnown / float64(known)
	}
	st.w = make([][]float64, s.Layers)
	st.scale = make([]float64, s.Layers)
	for l := range s.Layers {
		st.w[l] = make([]float64, s.Experts)
		if totals[l] > 0 {
			for e, v := range s.Load[l] {
				st.w[l][e] = v * float64(N) / totals[l]
			}
			st.scale[l] = totals[l] / float64(N)
		} else {
			for e := range st.w[l] {
				st.w[l][e] = float64(N) / float64(s.Experts)
			}
			st.scale[l] = fill / float64(N)
		}
	}

	st.reps = make([][][]int, s.Layers)
	st.share = make([][][]float64, s.Layers)
	st.x = make([][]float64, s.Layers)
	st.onNode = make([][][]int, s.Layers)
	for l := range s.Layers {
		st.reps[l] = make([][]int, s.Experts)
		st.share[l] = make([][]float64, s.Experts)
		st.x[l] = make([]float64, N)
		st.onNode[l] = make([][]int, N)
	}
	st.info = make([]layerInfo, s.Layers)
	for l := range s.Layers {
		st.info[l].tight = make([]int, N)
	}

	// A node holds at most one replica of each (layer, expert), so the
	// usable slots are sum of min(capacity, base); they suffice for k
	// replicas of every expert exactly when they are >= k*base.
	base := s.Layers * s.Experts
	usable := 0
	for _, c := range st.capacity {
		usable += min(c, base)
	}
	st.cover = min(max(o.MinReplicas, 1), N)
	st.floor = 1
	if usable >= st.cover*base {
		st.floor = st.cover
	}
	extra := int(math.Round(o.RedundantSlotsFraction * float64(base)))
	st.target = max(min(st.cover*base+extra, usable), base)
	st.scratch = newScratch(N)
	return st
}

// clone returns a deep copy sharing only the read-only fields.
func (st *state) clone() *state {
	c := *st
	c.used = slices.Clone(st.used)
	c.reps = make([][][]int, st.layers)
	c.share = make([][][]float64, st.layers)
	c.x = make([][]float64, st.layers)
	c.onNode = make([][][]int, st.layers)
	for l := range st.layers {
		c.reps[l] = make([][]int, st.experts)
		c.share[l] = make([][]float64, st.experts)
		for e := range st.experts {
			c.reps[l][e] = slices.Clone(st.reps[l][e])
			c.share[l][e] = slices.Clone(st.share[l][e])
		}
		c.x[l] = slices.Clone(st.x[l])
		c.onNode[l] = make([][]int, st.nodes)
		for n := range st.nodes {
			c.onNode[l][n] = slices.Clone(st.onNode[l][n])
		}
	}
	c.info = make([]layerInfo, st.layers)
	for l := range st.layers {
		c.info[l] = st.info[l].clone()
	}
	c.scratch = newScratch(st.nodes)
	return &c
}

// holds reports whether node n has a replica of (l, e).
func (st *state) holds(l, e, n int) bool {
	_, ok := slices.BinarySearch(st.reps[l][e], n)
	return ok
}

// free reports whether node n has an empty slot.
func (st *state) free(n int) bool { return st.used[n] < st.capacity[n] }

// add places a replica of (l, e) on n with share 0; call refill afterwards.
func (st *state) add(l, e, n int) {
	i, _ := slices.BinarySearch(st.reps[l][e], n)
	st.reps[l][e] = slices.Insert(st.reps[l][e], i, n)
	st.share[l][e] = slices.Insert(st.share[l][e], i, 0)
	j, _ := slices.BinarySearch(st.onNode[l][n], e)
	st.onNode[l][n] = slices.Insert(st.onNode[l][n], j, e)
	st.used[n]++
	st.total++
}

// remove drops the replica of (l, e) on n, taking its load off n; call refill
// afterwards so the other replicas take the load.
func (st *state) remove(l, e, n int) {
	i, ok := slices.BinarySearch(st.reps[l][e], n)
	if !ok {
		panic("placement: removing a replica that is not there")
	}
	st.x[l][n] -= st.share[l][e][i] * st.w[l][e]
	st.reps[l][e] = slices.Delete(st.reps[l][e], i, i+1)
	st.share[l][e] = slices.Delete(st.share[l][e], i, i+1)
	j, _ := slices.BinarySearch(st.onNode[l][n], e)
	st.onNode[l][n] = slices.Delete(st.onNode[l][n], j, j+1)
	st.used[n]--
	st.total--
}

// refill re-spreads the load of (l, e) over its replicas by water-filling on
// top of the load of the other experts.
func (st *state) refill(l, e int) {
	reps := st.reps[l][e]
	if len(reps) == 0 {
		return
	}
	x, w, sh := st.x[l], st.w[l][e], st.share[l][e]
	sc := &st.scratch
	base := sc.base[:len(reps)]
	// The sum of shares can be off 1 after a removal; whatever the expert
	// contributed is subtracted here.
	for i, n := range reps {
		x[n] -= sh[i] * w
		base[i] = x[n]
	}
	waterfill(w, base, sh, sc.idx)
	for i, n := range reps {
		x[n] += sh[i] * w
	}
}

// Tolerances and limits of the water-filling and the local search.
const (
	maxSweeps   = 200
	sweepTol    = 1e-12 // normalised load moved in a sweep below which it has converged
	tightTol    = 1e-6  // nodes within this of a layer's max (normalised) count as at the max
	gainEps     = 1e-9  // smallest objective change that counts as a change
	keepGainEps = 1e-6  // smallest objective gain a prefix of moves must add to be kept
)

// balanceLayer chooses the shares of layer l's replicated experts to minimise
// its max node load: block coordinate descent, water-filling one expert at a
// time on top of the others. Each step minimises the sum of squared node loads
// over that expert's shares, so the sweeps converge to the minimum-norm node
// load vector, which is also the one with the least max (the achievable load
// vectors form the base polytope of a polymatroid). Singleton experts have
// nothing to choose.
func (st *state) balanceLayer(l int) {
	st.recomputeLayer(l)
	for range maxSweeps {
		moved := 0.0
		for e := range st.experts {
			if len(st.reps[l][e]) < 2 {
				continue
			}
			sh := st.share[l][e]
			old := st.scratch.oldC[:0]
			old = append(old, sh...)
			st.refill(l, e)
			for i := range sh {
				moved = max(moved, math.Abs(sh[i]-old[i])*st.w[l][e])
			}
			st.scratch.oldC = old
		}
		if moved < sweepTol {
			break
		}
	}
	st.recomputeLayer(l)
}

// recomputeLayer sums layer l's node loads afresh from the shares (so rounding
// does not accumulate) and refreshes its summary.
func (st *state) recomputeLayer(l int) {
	x := st.x[l]
	clear(x)
	for e := range st.experts {
		for i, n := range st.reps[l][e] {
			x[n] += st.share[l][e][i] * st.w[l][e]
		}
	}
	li := &st.info[l]
	li.max, li.sq = 0, 0
	for _, v := range x {
		li.max = max(li.max, v)
		li.sq += v * v
	}
	st.groupTight(l)
	li.top, li.loose = li.top[:0], li.loose[:0]
	for n, v := range x {
		li.top = insertTop(li.top, x, n, v)
		if li.tight[n] < 0 {
			li.loose = insertTop(li.loose, x, n, v)
		}
	}
}

// insertTop inserts node n with load v into list (most loaded first, at most
// topK long; ties keep the earlier node first).
func insertTop(list []int, x []float64, n int, v float64) []int {
	i := len(list)
	for i > 0 && v > x[list[i-1]] {
		i--
	}
	if i >= topK {
		return list
	}
	if len(list) < topK {
		list = append(list, 0)
	}
	copy(list[i+1:], list[i:len(list)-1])
	list[i] = n
	return list
}

// groupTight finds the nodes at layer l's max and groups them: two tight
// nodes are in one group when an expert carries load on both (union-find).
func (st *state) groupTight(l int) {
	li := &st.info[l]
	tight, parent := li.tight, st.scratch.idx[:st.nodes]
	for n := range st.nodes {
		parent[n] = n
		tight[n] = -1
	}
	find := func(n int) int {
		for parent[n] != n {
			parent[n] = parent[parent[n]]
			n = parent[n]
		}
		return n
	}
	top := li.max - tightTol
	for e := range st.experts {
		first := -1
		for i, n := range st.reps[l][e] {
			if st.x[l][n] < top || st.share[l][e][i]*st.w[l][e] <= tightTol {
				continue
			}
			if first < 0 {
				first = n
				continue
			}
			if a, b := find(first), find(n); a != b {
				parent[max(a, b)] = min(a, b)
			}
		}
	}
	li.size, li.sum = li.size[:0], li.sum[:0]
	for n := range st.nodes {
		if st.x[l][n] < top {
			continue
		}
		if r := find(n); r == n {
			tight[n] = len(li.size)
			li.size = append(li.size, 1)
			li.sum = append(li.sum, st.x[l][n])
		} else {
			g := tight[r] // roots have the lowest index, so r < n is numbered
			tight[n] = g
			li.size[g]++
			li.sum[g] += st.x[l][n]
		}
	}
}

func (st *state) balanceAll() {
	for l := range st.layers {
		st.balanceLayer(l)
	}
}

// objective is the mean over layers of max/mean node load.
func (st *state) objective() float64 {
	sum := 0.0
	for l := range st.info {
		sum += st.info[l].max
	}
	return sum / float64(st.layers)
}

// waterfill splits load w over bins whose current levels are base so the bins
// that receive load end at one common level h, the lowest possible:
// share[i] = max(0, h-base[i])/w. A zero load is split evenly. idx is scratch
// of at least len(base).
func waterfill(w float64, base, share []float64, idx []int) {
	k := len(base)
	if w <= 0 {
		for i := range k {
			share[i] = 1 / float64(k)
		}
		return
	}
	idx = idx[:k]
	for i := range idx {
		idx[i] = i
	}
	// Insertion sort by level, then position: k is at most the node count.
	for i := 1; i < k; i++ {
		for j := i; j > 0 && base[idx[j]] < base[idx[j-1]]; j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	cum, h := 0.0, 0.0
	for j := range k {
		cum += base[idx[j]]
		h = (w + cum) / float64(j+1)
		if j == k-1 || h <= base[idx[j+1]] {
			break
		}
	}
	sum := 0.0
	for i := range k {
		share[i] = max(0, h-base[i]) / w
		sum += share[i]
	}
	for i := range k {
		share[i] /= sum
	}
}
