package placement

import (
	"math"
	"sort"
)

// Compute plans where every (layer, expert) of s lives. It is a pure,
// deterministic function of (s, o): the same input gives an identical plan,
// whatever the order of s.Nodes.
//
// Without s.Current it builds a placement from scratch (replicate, pack,
// polish). With s.Current it repairs it (drops replicas on dead nodes and
// re-covers their experts, fixes capacity) and then spends at most
// o.MigrationBudget replica loads on the moves that lower the imbalance most,
// keeping them only if together they gain at least o.MinGain. With an
// unlimited budget it also plans from scratch and takes that plan if it is
// better by MinGain.
func Compute(s Snapshot, o Options) (*Plan, error) {
	if err := validate(&s, &o); err != nil {
		return nil, err
	}
	st := newState(&s, &o)
	polishSteps := st.layers*st.experts + 64
	if s.Current == nil {
		st.construct()
		if best := st.improve(-1, polishSteps); best != nil {
			st = best
		}
		return st.plan(&s), nil
	}
	st.load(s.Current)
	st.repair()
	st.balanceAll()
	if o.MigrationBudget == 0 {
		return st.plan(&s), nil
	}
	start := st.clone()
	j0 := st.objective()
	steps := polishSteps
	if o.MigrationBudget > 0 {
		steps = 4*o.MigrationBudget + 2*st.nodes + 8
	}
	out := start
	if best := st.improve(o.MigrationBudget, steps); best != nil && j0-best.objective() >= o.MinGain {
		out = best
	}
	if o.MigrationBudget < 0 {
		// Unlimited: starting over may beat any sequence of moves.
		fresh := newState(&s, &o)
		fresh.construct()
		if best := fresh.improve(-1, polishSteps); best != nil {
			fresh = best
		}
		if out.objective()-fresh.objective() >= max(o.MinGain, keepGainEps) {
			fresh.repairs = out.plan(&s).Repairs // the experts repaired are re-placed too
			out = fresh
		}
	}
	return out.plan(&s), nil
}

// construct builds a placement from nothing, EPLB style: replica counts by
// load per replica, then per-layer longest-processing-time packing under
// per-node slot quotas, then water-filled shares.
func (st *state) construct() {
	counts := st.replicaCounts()
	quota := st.layerQuotas(counts)
	type item struct {
		e    int
		size float64
	}
	load := make([]float64, st.nodes)
	cnt := make([]int, st.nodes)
	for l := range st.layers {
		var items []item
		for e := range st.experts {
			for range counts[l][e] {
				items = append(items, item{e, st.w[l][e] / float64(counts[l][e])})
			}
		}
		sort.SliceStable(items, func(i, j int) bool { return items[i].size > items[j].size })
		clear(load)
		clear(cnt)
		for _, it := range items {
			pick := -1
			for n := range st.nodes {
				if cnt[n] >= quota[l][n] || !st.free(n) || st.holds(l, it.e, n) {
					continue
				}
				if pick < 0 || load[n] < load[pick] || (load[n] == load[pick] && cnt[n] < cnt[pick]) {
					pick = n
				}
			}
			if pick < 0 {
				// A replica beyond the first can miss (every node with quota
				// left already holds the expert); it is dropped here, coverFloor
				// restores the floor, and the polish may add it back elsewhere.
				continue
			}
			st.add(l, it.e, pick)
			load[pick] += it.size
			cnt[pick]++
		}
		for e := range st.experts {
			for i := range st.share[l][e] {
				st.share[l][e][i] = 1 / float64(len(st.share[l][e]))
			}
		}
		st.balanceLayer(l)
	}
	// The packing can miss a replica (every node with quota left holds the
	// expert already); the floor is restored from the free slots.
	st.coverFloor()
}

// replicaCounts spends the replicas beyond one per expert one at a time:
// first on the experts below the cover (MinReplicas), then on any, each time
// the expert with the highest normalised load per replica (at most one
// replica per node). Ties go to the layer with fewer extra replicas so far,
// then the lower layer, then the lower expert.
func (st *state) replicaCounts() [][]int {
	counts := make([][]int, st.layers)
	for l := range counts {
		counts[l] = make([]int, st.experts)
		for e := range counts[l] {
			counts[l][e] = 1
		}
	}
	extraIn := make([]int, st.layers)
	for range st.target - st.layers*st.experts {
		bl, be, bv, bu := -1, -1, -1.0, false
		for l := range st.layers {
			for e := range st.experts {
				if counts[l][e] >= st.nodes {
					continue
				}
				u := counts[l][e] < st.cover
				v := st.w[l][e] / float64(counts[l][e])
				if u && !bu || u == bu && (v > bv || (v == bv && extraIn[l] < extraIn[bl])) {
					bl, be, bv, bu = l, e, v, u
				}
			}
		}
		if bl < 0 {
			break
		}
		counts[bl][be]++
		extraIn[bl]++
	}
	return counts
}

// layerQuotas decides how many replicas of each layer every node takes,
// [layer][node]: the nodes' totals are as even as their capacities allow, and
// each layer's replicas are split in proportion to the slots the nodes have
// left (largest remainder), so every node holds a similar slice of every
// layer.
func (st *state) layerQuotas(counts [][]int) [][]int {
	N := st.nodes
	per := make([]int, st.layers)
	total := 0
	for l := range st.layers {
		for _, c := range counts[l] {
			per[l] += c
		}
		total += per[l]
	}
	u := make([]int, N)
	for rem := total; rem > 0; {
		progressed := false
		for n := range N {
			if rem > 0 && u[n] < st.capacity[n] {
				u[n]++
				rem--
				progressed = true
			}
		}
		if !progressed {
			break
		}
	}
	quota := make([][]int, st.layers)
	left := total
	frac := make([]float64, N)
	for l := range st.layers {
		q := make([]int, N)
		given := 0
		for n := range N {
			if left > 0 {
				exact := float64(per[l]) * float64(u[n]) / float64(left)
				q[n] = min(int(math.Floor(exact)), u[n])
				frac[n] = exact - float64(q[n])
			}
			given += q[n]
		}
		for given < per[l] {
			pick := -1
			for n := range N {
				if q[n] < u[n] && (pick < 0 || frac[n] > frac[pick]) {
					pick = n
				}
			}
			if pick < 0 {
				break
			}
			q[pick]++
			frac[pick] = -1
			given++
			if allTaken(frac) {
				for n := range N {
					frac[n] = 0
				}
			}
		}
		for n := range N {
			u[n] -= q[n]
		}
		left -= per[l]
		quota[l] = q
	}
	return quota
}

func allTaken(frac []float64) bool {
	for _, f := range frac {
		if f >= 0 {
			return false
		}
	}
	return true
}

// load copies the placement of cur onto st, dropping replicas on nodes that
// are dead or unknown and duplicates. Shares are taken as given (normalised);
// they are recomputed before any use.
func (st *state) load(cur *Plan) {
	index := make(map[string]int, st.nodes)
	for n, id := range st.ids {
		index[id] = n
	}
	for l := range st.layers {
		for e := range st.experts {
			for _, r := range cur.Replicas[l][e] {
				if n, ok := index[r.Node]; ok && !st.holds(l, e, n) {
					st.add(l, e, n)
				}
			}
			sh := st.share[l][e]
			for i := range sh {
				sh[i] = 1 / float64(len(sh))
			}
		}
		st.recomputeLayer(l)
	}
}

// repair makes a loaded placement valid: nodes over capacity shed replicas,
// surplus redundant replicas are dropped, every expert without a replica
// gets one (on the least loaded node of its layer with a free slot, making a
// slot by dropping the cheapest redundant replica if none is free), and then
// every expert below the floor gets replicas up to it (coverFloor). These
// edits are outside the migration budget.
func (st *state) repair() {
	for n := range st.nodes {
		for st.used[n] > st.capacity[n] {
			if l, e, ok := st.cheapestRedundant(n); ok {
				st.remove(l, e, n)
				st.refill(l, e)
				continue
			}
			// Only singletons left on n: move the lightest one away.
			l, e := st.lightestOn(n)
			t := st.lightestFree(l, n)
			if t < 0 {
				t = st.dropCheapestRedundant()
			}
			st.remove(l, e, n)
			st.add(l, e, t)
			st.refill(l, e)
			st.repaired = append(st.repaired, st.key(l, e, t))
		}
	}
	for st.total > st.target {
		st.dropCheapestRedundant()
	}
	type lost struct{ l, e int }
	var uncovered []lost
	for l := range st.layers {
		for e := range st.experts {
			if len(st.reps[l][e]) == 0 {
				uncovered = append(uncovered, lost{l, e})
			}
		}
	}
	sort.SliceStable(uncovered, func(i, j int) bool {
		return st.w[uncovered[i].l][uncovered[i].e] > st.w[uncovered[j].l][uncovered[j].e]
	})
	for _, u := range uncovered {
		t := st.lightestFree(u.l, -1)
		if t < 0 {
			t = st.dropCheapestRedundant()
		}
		st.add(u.l, u.e, t)
		st.refill(u.l, u.e)
		st.repaired = append(st.repaired, st.key(u.l, u.e, t))
	}
	st.repaired = append(st.repaired, st.coverFloor()...)
}

// coverFloor adds replicas to the experts below the floor, hottest first,
// until each has floor replicas on distinct nodes, and returns the keys of
// the replicas added. A replica goes to the node of its layer with the least
// load among those lacking the expert with a free slot; if none has one, a
// slot is freed on such a node by moving one of its replicas to a node with
// a free slot that lacks it, or else by dropping a replica of an expert
// above the floor. Where none of that is possible the expert stays below
// the floor (newState makes the floor 1 when the slots are too few, so
// this is rare).
func (st *state) coverFloor() []int {
	type short struct{ l, e int }
	var under []short
	for l := range st.layers {
		for e := range st.experts {
			if len(st.reps[l][e]) < st.floor {
				under = append(under, short{l, e})
			}
		}
	}
	sort.SliceStable(under, func(i, j int) bool {
		a, b := under[i], under[j]
		return st.w[a.l][a.e]/float64(len(st.reps[a.l][a.e])+1) > st.w[b.l][b.e]/float64(len(st.reps[b.l][b.e])+1)
	})
	var added []int
	for _, u := range under {
		for len(st.reps[u.l][u.e]) < st.floor {
			t, moved := st.slotFor(u.l, u.e)
			if t < 0 {
				break
			}
			added = append(added, moved...)
			st.add(u.l, u.e, t)
			st.refill(u.l, u.e)
			added = append(added, st.key(u.l, u.e, t))
		}
	}
	return added
}

// slotFor returns a node lacking (l, e) with a free slot, freeing one if
// needed (see coverFloor), or -1, and the key of the replica it moved to
// free one, if it did.
func (st *state) slotFor(l, e int) (int, []int) {
	if t := st.lightestFreeLacking(l, e); t >= 0 {
		return t, nil
	}
	// Move a replica off a node lacking (l, e) to a node with a free slot
	// that lacks that replica's expert: the lightest such replica.
	bn, bl, bg, bc, bv := -1, -1, -1, -1, math.Inf(1)
	for n := range st.nodes {
		if st.holds(l, e, n) {
			continue
		}
		for l2 := range st.layers {
			for _, g := range st.onNode[l2][n] {
				v := st.contribution(l2, g, n)
				if v >= bv {
					continue
				}
				if c := st.lightestFreeLacking(l2, g); c >= 0 {
					bn, bl, bg, bc, bv = n, l2, g, c, v
				}
			}
		}
	}
	if bn >= 0 {
		st.remove(bl, bg, bn)
		st.add(bl, bg, bc)
		st.refill(bl, bg)
		return bn, []int{st.key(bl, bg, bc)}
	}
	// Drop the cheapest replica above the floor on a node lacking (l, e).
	bl, bg, bn, bv = -1, -1, -1, math.Inf(1)
	for l2 := range st.layers {
		for g := range st.experts {
			r := len(st.reps[l2][g])
			if r <= st.floor || (l2 == l && g == e) {
				continue
			}
			if v := st.w[l2][g] / float64(r); v < bv {
				for _, n := range st.reps[l2][g] {
					if !st.holds(l, e, n) {
						bl, bg, bn, bv = l2, g, n, v
						break
					}
				}
			}
		}
	}
	if bn >= 0 {
		st.remove(bl, bg, bn)
		st.refill(bl, bg)
	}
	return bn, nil
}

// lightestFreeLacking returns the node with a free slot that lacks (l, e)
// and is least loaded in layer l, or -1.
func (st *state) lightestFreeLacking(l, e int) int {
	pick := -1
	for n := range st.nodes {
		if !st.free(n) || st.holds(l, e, n) {
			continue
		}
		if pick < 0 || st.x[l][n] < st.x[l][pick] {
			pick = n
		}
	}
	return pick
}

// cheapestRedundant returns the expert with a replica on node n (or on any
// node if n < 0) and at least two replicas whose load per replica is least,
// preferring experts above the floor.
func (st *state) cheapestRedundant(n int) (int, int, bool) {
	if l, e, ok := st.cheapestAbove(n, st.floor); ok {
		return l, e, true
	}
	return st.cheapestAbove(n, 1)
}

// cheapestAbove returns the expert with a replica on node n (or on any node
// if n < 0) and more than keep replicas whose load per replica is least.
func (st *state) cheapestAbove(n, keep int) (int, int, bool) {
	bl, be, bv := -1, -1, math.Inf(1)
	for l := range st.layers {
		for e := range st.experts {
			r := len(st.reps[l][e])
			if r <= keep || (n >= 0 && !st.holds(l, e, n)) {
				continue
			}
			if v := st.w[l][e] / float64(r); v < bv {
				bl, be, bv = l, e, v
			}
		}
	}
	return bl, be, bl >= 0
}

// dropCheapestRedundant drops one replica of the cheapest redundant expert
// (one above the floor if any), the one on the node most loaded in its
// layer, and returns that node. The capacity check in validate guarantees
// there is one whenever it is called.
func (st *state) dropCheapestRedundant() int {
	l, e, ok := st.cheapestRedundant(-1)
	if !ok {
		panic("placement: no redundant replica to drop")
	}
	pick := -1
	for _, n := range st.reps[l][e] {
		if pick < 0 || st.x[l][n] > st.x[l][pick] {
			pick = n
		}
	}
	st.remove(l, e, pick)
	st.refill(l, e)
	return pick
}

// lightestOn returns the replica on node n with the least load.
func (st *state) lightestOn(n int) (int, int) {
	bl, be, bv := -1, -1, math.Inf(1)
	for l := range st.layers {
		for _, e := range st.onNode[l][n] {
			if v := st.contribution(l, e, n); v < bv {
				bl, be, bv = l, e, v
			}
		}
	}
	return bl, be
}

// lightestFree returns the node other than not with a free slot that is least
// loaded in layer l, or -1.
func (st *state) lightestFree(l, not int) int {
	pick := -1
	for n := range st.nodes {
		if n == not || !st.free(n) {
			continue
		}
		if pick < 0 || st.x[l][n] < st.x[l][pick] {
			pick = n
		}
	}
	return pick
}

// plan converts st into a Plan, counting the changes against s.Current.
func (st *state) plan(s *Snapshot) *Plan {
	p := &Plan{
		Replicas:       make([][][]Replica, st.layers),
		Nodes:          append([]string(nil), st.ids...),
		LayerLoad:      make([][]float64, st.layers),
		NodeLoad:       make(map[string]float64, st.nodes),
		LayerImbalance: make([]float64, st.layers),
	}
	for _, id := range st.ids {
		p.NodeLoad[id] = 0
	}
	sum := 0.0
	for l := range st.layers {
		p.Replicas[l] = make([][]Replica, st.experts)
		for e := range st.experts {
			reps := make([]Replica, len(st.reps[l][e]))
			for i, n := range st.reps[l][e] {
				reps[i] = Replica{Node: st.ids[n], Share: st.share[l][e][i]}
			}
			p.Replicas[l][e] = reps
		}
		p.LayerLoad[l] = make([]float64, st.nodes)
		mx, mean := 0.0, 0.0
		for n, v := range st.x[l] {
			v = max(v, 0) * st.scale[l]
			p.LayerLoad[l][n] = v
			p.NodeLoad[st.ids[n]] += v
			mx = max(mx, v)
			mean += v
		}
		mean /= float64(st.nodes)
		p.LayerImbalance[l] = 1
		if mean > 0 {
			p.LayerImbalance[l] = mx / mean
		}
		sum += p.LayerImbalance[l]
	}
	p.Imbalance = sum / float64(st.layers)

	if s.Current == nil {
		p.Moves = st.total
		return p
	}
	// Repairs are the replicas repair placed that are in the plan and new
	// (repair may place a replica and then move it on while freeing a slot).
	repaired := make(map[int]bool, len(st.repaired))
	for _, k := range st.repaired {
		repaired[k] = true
	}
	for l := range st.layers {
		for e := range st.experts {
			old := make(map[string]bool, len(s.Current.Replicas[l][e]))
			for _, r := range s.Current.Replicas[l][e] {
				old[r.Node] = true
			}
			for _, n := range st.reps[l][e] {
				if old[st.ids[n]] {
					delete(old, st.ids[n])
				} else {
					p.Moves++
					if repaired[st.key(l, e, n)] {
						p.Repairs++
					}
				}
			}
			p.Removed += len(old)
		}
	}
	if st.repairs > 0 { // a fresh plan replacing a repaired one
		p.Repairs = min(st.repairs, p.Moves)
	}
	return p
}
