package placement

import (
	"math"
	"slices"
)

// change is one replica edit in a move: (l, e) leaves node from and/or lands
// on node to; -1 means none.
type change struct{ l, e, from, to int }

// move is a candidate edit of the placement: up to three changes.
//
//	relocate:  (l,e) a->b                                         cost 1
//	swap:      (l,e) a->b, (l2,g) b->a                            cost 2
//	replicate: (l,e) ->b [, drop (l2,f) from b or anywhere]       cost 1 (drops are free)
//	evict:     (l,e) ->b, (l2,g) b->c, drop (l3,f) from c         cost 2
type move struct {
	ch   [3]change
	n    int // changes in ch
	cost int // replicas loaded
	// dJ and dQ are the decrease of the objective and of the mean squared
	// node load: first estimated safely, exact once tried. dJe is an
	// optimistic estimate of dJ (the nodes sharing a layer's max level out).
	dJ, dJe, dQ float64
}

// mv builds a move from its changes; the cost is the replicas they load.
func mv(chs ...change) move {
	m := move{n: len(chs)}
	copy(m.ch[:], chs)
	for _, c := range chs {
		if c.to >= 0 {
			m.cost++
		}
	}
	return m
}

func (m *move) changes() []change { return m.ch[:m.n] }

// touches reports whether m edits layer l.
func (m *move) touches(l int) bool {
	for _, c := range m.changes() {
		if c.l == l {
			return true
		}
	}
	return false
}

// layers returns the distinct layers m edits, in order of appearance.
func (m *move) layers() ([3]int, int) {
	var ls [3]int
	k := 0
	for _, c := range m.changes() {
		if !slices.Contains(ls[:k], c.l) {
			ls[k] = c.l
			k++
		}
	}
	return ls, k
}

// Search limits for improve.
const (
	partnerK  = 3 // replicas considered per (node, destination) as swap or eviction partners
	removalK  = 4 // cheapest drops considered per node and overall
	shortlist = 8 // best candidates by each estimate that are tried exactly
)

// improve applies the best move (largest objective gain per replica loaded)
// again and again until budget replicas are loaded (budget < 0: no limit),
// maxSteps moves were made, or no move helps.
//
// Candidates are ranked by two cheap estimates that re-spread only the moved
// experts: a safe one (the plain max of those loads; a full rebalance can
// only do better) and an optimistic one (the nodes sharing a layer's max
// level out). The best few by each are tried exactly: applied, their layers
// fully rebalanced, and undone. A move is taken only if it truly lowers the
// objective, or keeps it and lowers the sum of squared node loads (when
// several nodes share the max, one move cannot lower it alone). No move
// undoes an earlier one of the same call, so budget is never spent going in
// circles, nor moves a replica placed by repair. Each layer's best move is
// cached until a move touches its layers.
//
// improve mutates st and returns the best state seen along the way (the
// shortest prefix of moves reaching the least objective, each prefix counted
// only if it gains at least keepGainEps), or nil if none beat the start.
func (st *state) improve(budget, maxSteps int) *state {
	bestJ := st.objective()
	var best *state
	spent, steps, stall := 0, 0, 0
	maxStall := 2*st.nodes + 8
	tabu := make([]int8, st.layers*st.experts*st.nodes) // +1 added, -1 removed in this round
	for _, k := range st.repaired {
		tabu[k] = +1
	}
	cache := make([]move, st.layers) // n == 0: no acceptable move
	dirty := make([]bool, st.layers)
	for l := range dirty {
		dirty[l] = true
	}
	fresh := true // every layer's cache was computed since the last move
	for guard := 0; steps < maxSteps && guard < 4*maxSteps+st.layers+8; guard++ {
		left := math.MaxInt
		if budget >= 0 {
			left = budget - spent
		}
		if left <= 0 {
			break
		}
		if slices.Contains(dirty, true) {
			ctx := st.searchContext()
			for l := range dirty {
				if dirty[l] {
					cache[l] = st.layerBest(l, left, tabu, ctx)
					dirty[l] = false
				}
			}
		}
		pick := -1
		for l := range cache {
			if cache[l].n > 0 && (pick < 0 || better(&cache[l], &cache[pick])) {
				pick = l
			}
		}
		if pick < 0 {
			if fresh {
				break
			}
			// Moves elsewhere (freed slots, new drops) may have opened
			// moves in layers that had none: look once more everywhere.
			for l := range dirty {
				dirty[l] = true
			}
			fresh = true
			continue
		}
		m := cache[pick]
		if !st.valid(&m, left, tabu) {
			dirty[pick] = true
			continue
		}
		st.apply(&m)
		for _, c := range m.changes() {
			if c.from >= 0 {
				tabu[st.key(c.l, c.e, c.from)] = -1
			}
			if c.to >= 0 {
				tabu[st.key(c.l, c.e, c.to)] = +1
			}
		}
		for l := range cache {
			for _, c := range m.changes() {
				if l == c.l || cache[l].touches(c.l) {
					dirty[l] = true
				}
			}
		}
		fresh = false
		spent += m.cost
		steps++
		if j := st.objective(); j < bestJ-keepGainEps {
			bestJ, best, stall = j, st.clone(), 0
		} else if stall++; stall > maxStall {
			break
		}
	}
	return best
}

// key numbers the replica (l, e, n).
func (st *state) key(l, e, n int) int { return (l*st.experts+e)*st.nodes + n }

// valid reports whether m can be applied now: its replicas are where it
// expects, it fits the capacities, the replica target, the budget and the
// tabu list.
func (st *state) valid(m *move, left int, tabu []int8) bool {
	if m.cost > left {
		return false
	}
	var nodes [6]int
	var net [6]int
	k, grow := 0, 0
	bump := func(n, d int) {
		for i := range k {
			if nodes[i] == n {
				net[i] += d
				return
			}
		}
		nodes[k], net[k] = n, d
		k++
	}
	for _, c := range m.changes() {
		if c.from >= 0 {
			if !st.holds(c.l, c.e, c.from) || tabu[st.key(c.l, c.e, c.from)] > 0 {
				return false
			}
			bump(c.from, -1)
			grow--
		}
		if c.to >= 0 {
			if st.holds(c.l, c.e, c.to) || tabu[st.key(c.l, c.e, c.to)] < 0 {
				return false
			}
			bump(c.to, +1)
			grow++
		}
		if c.to < 0 && len(st.reps[c.l][c.e]) <= st.floor {
			return false // a drop never takes an expert below the floor
		}
	}
	if grow > 0 && st.total+grow > st.target {
		return false
	}
	for i := range k {
		if net[i] > 0 && st.used[nodes[i]]+net[i] > st.capacity[nodes[i]] {
			return false
		}
	}
	return true
}

// layerSave is a copy of one layer's part of the state, for trying a move.
type layerSave struct {
	l      int
	reps   [][]int
	share  [][]float64
	onNode [][]int
	x      []float64
	info   layerInfo
}

func (st *state) saveLayer(l int) layerSave {
	sv := layerSave{l: l, reps: make([][]int, st.experts), share: make([][]float64, st.experts),
		onNode: make([][]int, st.nodes), x: slices.Clone(st.x[l]), info: st.info[l].clone()}
	for e := range st.experts {
		sv.reps[e] = slices.Clone(st.reps[l][e])
		sv.share[e] = slices.Clone(st.share[l][e])
	}
	for n := range st.nodes {
		sv.onNode[n] = slices.Clone(st.onNode[l][n])
	}
	return sv
}

func (st *state) restoreLayer(sv layerSave) {
	l := sv.l
	st.reps[l], st.share[l], st.onNode[l], st.x[l], st.info[l] = sv.reps, sv.share, sv.onNode, sv.x, sv.info
}

// try applies m, measures the exact change of the objective and of the
// squared loads into m.dJ and m.dQ, and undoes it.
func (st *state) try(m *move) {
	ls, k := m.layers()
	var saves [3]layerSave
	j0, q0 := 0.0, 0.0
	for i, l := range ls[:k] {
		j0 += st.info[l].max
		q0 += st.info[l].sq
		saves[i] = st.saveLayer(l)
	}
	used, total := slices.Clone(st.used), st.total
	st.apply(m)
	j1, q1 := 0.0, 0.0
	for i, l := range ls[:k] {
		j1 += st.info[l].max
		q1 += st.info[l].sq
		st.restoreLayer(saves[i])
	}
	st.used, st.total = used, total
	L, N := float64(st.layers), float64(st.nodes)
	m.dJ, m.dQ = (j0-j1)/L, (q0-q1)/(L*N)
}

// apply performs m and rebalances the layers it touched.
func (st *state) apply(m *move) {
	for _, c := range m.changes() {
		if c.from >= 0 {
			st.remove(c.l, c.e, c.from)
		}
		if c.to >= 0 {
			st.add(c.l, c.e, c.to)
		}
	}
	for _, c := range m.changes() {
		st.refill(c.l, c.e)
	}
	ls, k := m.layers()
	for _, l := range ls[:k] {
		st.balanceLayer(l)
	}
}

// eval fills m.dJ, m.dJe and m.dQ from the loads after m with only the moved
// experts' shares re-water-filled.
func (st *state) eval(m *move) {
	L, N := float64(st.layers), float64(st.nodes)
	ls, k := m.layers()
	m.dJ, m.dJe, m.dQ = 0, 0, 0
	var chs [3]change
	for _, l := range ls[:k] {
		n := 0
		for _, c := range m.changes() {
			if c.l == l {
				chs[n] = c
				n++
			}
		}
		mx, mxe, sq := st.evalLayer(l, chs[:n])
		li := &st.info[l]
		m.dJ += (li.max - mx) / L
		m.dJe += (li.max - mxe) / L
		m.dQ += (li.sq - sq) / (L * N)
	}
}

// evalLayer returns, for layer l after chs (all in layer l) with only the
// moved experts re-water-filled, the plain max node load, the max expected
// once the nodes sharing the max level out again, and the sum of squares.
// It touches only the moved experts' nodes: the changed loads live in an
// overlay, and the rest comes from the layer's summary.
func (st *state) evalLayer(l int, chs []change) (mx, mxe, sq float64) {
	sc := &st.scratch
	sc.epoch++
	if sc.epoch == 0 {
		clear(sc.mark)
		sc.epoch = 1
	}
	sc.touched = sc.touched[:0]
	x := st.x[l]
	for _, c := range chs {
		reps, sh, w := st.reps[l][c.e], st.share[l][c.e], st.w[l][c.e]
		set := sc.set[:0]
		for i, n := range reps {
			sc.put(n, sc.get(x, n)-sh[i]*w)
			if n != c.from {
				set = append(set, n)
			}
		}
		if c.to >= 0 {
			set = append(set, c.to)
		}
		base, out := sc.base[:len(set)], sc.out[:len(set)]
		for i, n := range set {
			base[i] = sc.get(x, n)
		}
		waterfill(w, base, out, sc.idx)
		for i, n := range set {
			sc.put(n, sc.get(x, n)+out[i]*w)
		}
		sc.set = set
	}
	li := &st.info[l]
	mx = st.untouchedMax(l, li.top, false)
	mxe = st.untouchedMax(l, li.loose, true)
	sums := sc.sums[:len(li.sum)]
	copy(sums, li.sum)
	sq = li.sq
	for _, n := range sc.touched {
		v, old := sc.val[n], x[n]
		sq += v*v - old*old
		mx = max(mx, v)
		if g := li.tight[n]; g >= 0 {
			sums[g] += v - old
		} else {
			mxe = max(mxe, v)
		}
	}
	for g, sum := range sums {
		mxe = max(mxe, sum/float64(li.size[g]))
	}
	return mx, mxe, sq
}

func (sc *scratch) get(x []float64, n int) float64 {
	if sc.mark[n] == sc.epoch {
		return sc.val[n]
	}
	return x[n]
}

func (sc *scratch) put(n int, v float64) {
	if sc.mark[n] != sc.epoch {
		sc.mark[n] = sc.epoch
		sc.touched = append(sc.touched, n)
	}
	sc.val[n] = v
}

// untouchedMax is the max load of layer l over the nodes not in the overlay
// (and not at the max, if looseOnly), from list (the summary's top nodes)
// when it has one, else by a scan.
func (st *state) untouchedMax(l int, list []int, looseOnly bool) float64 {
	sc := &st.scratch
	for _, n := range list {
		if sc.mark[n] != sc.epoch {
			return st.x[l][n]
		}
	}
	m := 0.0
	for n, v := range st.x[l] {
		if sc.mark[n] != sc.epoch && (!looseOnly || st.info[l].tight[n] < 0) {
			m = max(m, v)
		}
	}
	return m
}

// acceptable reports whether m improves the objective, or keeps it and
// lowers the squared loads.
func acceptable(m *move) bool {
	return m.dJ > gainEps || (m.dJ >= -gainEps && m.dQ > gainEps)
}

// better reports whether a beats b, judged per replica loaded: gains in the
// objective first, then in the squared loads. Equal scores keep b, so the
// first candidate in enumeration order wins ties.
func better(a, b *move) bool {
	if b.n == 0 {
		return true
	}
	pa, pb := a.dJ > gainEps, b.dJ > gainEps
	if pa != pb {
		return pa
	}
	ca, cb := float64(max(a.cost, 1)), float64(max(b.cost, 1))
	if pa {
		return a.dJ/ca > b.dJ/cb+gainEps*1e-3
	}
	return a.dQ/ca > b.dQ/cb+gainEps*1e-3
}

// removal is a candidate drop of a redundant replica and its (negative) gain.
type removal struct {
	c      change
	dJ, dQ float64
}

// keepBest inserts r into list (sorted best first, at most k long).
func keepBest(list []removal, r removal, k int) []removal {
	i := len(list)
	for i > 0 && (r.dJ > list[i-1].dJ+gainEps || (math.Abs(r.dJ-list[i-1].dJ) <= gainEps && r.dQ > list[i-1].dQ)) {
		i--
	}
	if i >= k {
		return list
	}
	if len(list) < k {
		list = append(list, removal{})
	}
	copy(list[i+1:], list[i:len(list)-1])
	list[i] = r
	return list
}

// partner is a replica that may move to make room for another.
type partner struct {
	l, g  int
	slack float64 // how far below its layer's max the destination stays after the move
}

// searchContext is what layerBest needs from all layers: the cheapest drops
// per node (to free a slot there) and overall.
type searchContext struct {
	perNode [][]removal
	overall []removal
}

func (st *state) searchContext() *searchContext {
	ctx := &searchContext{perNode: make([][]removal, st.nodes)}
	for l := range st.layers {
		for f := range st.experts {
			if len(st.reps[l][f]) <= st.floor {
				continue
			}
			for _, c := range st.reps[l][f] {
				m := mv(change{l, f, c, -1})
				st.eval(&m)
				r := removal{m.ch[0], m.dJ, m.dQ}
				ctx.perNode[c] = keepBest(ctx.perNode[c], r, removalK)
				ctx.overall = keepBest(ctx.overall, r, removalK)
			}
		}
	}
	return ctx
}

// partners returns up to partnerK replicas on node b, outside layer skip
// (-1: none), that node to lacks, whose move from b to to leaves to furthest
// below the max of their layer: the least harmful ones to move there.
func (st *state) partners(b, to, skip int) []partner {
	var list []partner
	for l := range st.layers {
		if l == skip {
			continue
		}
		for _, g := range st.onNode[l][b] {
			if st.holds(l, g, to) {
				continue
			}
			p := partner{l, g, st.info[l].max - st.x[l][to] - st.contribution(l, g, b)}
			i := len(list)
			for i > 0 && p.slack > list[i-1].slack {
				i--
			}
			if i >= partnerK {
				continue
			}
			if len(list) < partnerK {
				list = append(list, partner{})
			}
			copy(list[i+1:], list[i:len(list)-1])
			list[i] = p
		}
	}
	return list
}

// layerBest returns the best acceptable move, exactly evaluated, that starts
// at layer l's max (n == 0 if none) and costs at most left.
//
// Only the nodes at the max can lower it: each replica there may be
// relocated to a node with a free slot, swapped with a replica on another
// node (of the same layer: any; of other layers: the few least harmful to
// move back), or, if it is one of the hotK experts loading the node most,
// replicated onto another node b, taking a free slot, one
// freed by dropping a replica on b of an expert that has several, or one
// freed by moving a replica from b to a node c where such a drop frees a
// slot.
func (st *state) layerBest(l, left int, tabu []int8, ctx *searchContext) move {
	N := st.nodes
	var safe, optimistic []move
	consider := func(m move) {
		if m.cost > left {
			return
		}
		for _, c := range m.changes() {
			if (c.from >= 0 && tabu[st.key(c.l, c.e, c.from)] > 0) || (c.to >= 0 && tabu[st.key(c.l, c.e, c.to)] < 0) {
				return
			}
		}
		st.eval(&m)
		safe = keepMoves(safe, m)
		m.dJ = m.dJe
		optimistic = keepMoves(optimistic, m)
	}
	// evictions[b*N+c]: the replicas best moved from b to c, computed lazily.
	evictions := make(map[int][]partner)
	top := st.info[l].max - tightTol
	for a := range N {
		if st.x[l][a] < top {
			continue
		}
		hot := st.hottest(l, a)
		for b := range N {
			if b == a {
				continue
			}
			var back []partner // replicas of other layers to swap from b to a
			backDone := false
			for _, e := range st.onNode[l][a] {
				if st.holds(l, e, b) {
					continue
				}
				out := change{l, e, a, b}
				if st.free(b) {
					consider(mv(out))
				}
				for _, f := range st.onNode[l][b] {
					if !st.holds(l, f, a) {
						consider(mv(out, change{l, f, b, a}))
					}
				}
				if !backDone {
					back, backDone = st.partners(b, a, l), true
				}
				for _, p := range back {
					consider(mv(out, change{p.l, p.g, b, a}))
				}
				if len(st.reps[l][e]) >= N || !slices.Contains(hot, e) {
					continue
				}
				add := change{l, e, -1, b}
				if st.free(b) && st.total < st.target {
					consider(mv(add))
				}
				for _, r := range ctx.perNode[b] {
					if r.c.l != l || r.c.e != e {
						consider(mv(add, r.c))
					}
				}
				if st.free(b) {
					for _, r := range ctx.overall {
						if (r.c.l != l || r.c.e != e) && r.c.from != b {
							consider(mv(add, r.c))
						}
					}
					continue
				}
				for _, r := range ctx.overall {
					c := r.c.from
					if c == b || (r.c.l == l && r.c.e == e) {
						continue
					}
					ev, ok := evictions[b*N+c]
					if !ok {
						ev = st.partners(b, c, -1)
						evictions[b*N+c] = ev
					}
					for _, p := range ev {
						if (p.l == l && p.g == e) || (p.l == r.c.l && p.g == r.c.e) {
							continue
						}
						consider(mv(add, change{p.l, p.g, b, c}, r.c))
					}
				}
			}
		}
	}

	// Judge the shortlists exactly.
	var best move
	tried := make([]move, 0, len(safe)+len(optimistic))
next:
	for _, m := range append(safe, optimistic...) {
		for _, t := range tried {
			if t.ch == m.ch && t.n == m.n {
				continue next
			}
		}
		tried = append(tried, m)
		st.try(&m)
		if acceptable(&m) && better(&m, &best) {
			best = m
		}
	}
	return best
}

// keepMoves inserts m into list (sorted best first, at most shortlist long)
// if it is acceptable.
func keepMoves(list []move, m move) []move {
	if !acceptable(&m) {
		return list
	}
	i := len(list)
	for i > 0 && better(&m, &list[i-1]) {
		i--
	}
	if i >= shortlist {
		return list
	}
	if len(list) < shortlist {
		list = append(list, move{})
	}
	copy(list[i+1:], list[i:len(list)-1])
	list[i] = m
	return list
}

// hotK is how many of the experts loading a node most are considered for
// another replica.
const hotK = 2

// hottest returns the hotK experts of layer l putting the most load on node a.
func (st *state) hottest(l, a int) []int {
	var hot []int
	var load []float64
	for _, e := range st.onNode[l][a] {
		v := st.contribution(l, e, a)
		i := len(hot)
		for i > 0 && v > load[i-1] {
			i--
		}
		if i >= hotK {
			continue
		}
		if len(hot) < hotK {
			hot, load = append(hot, 0), append(load, 0)
		}
		copy(hot[i+1:], hot[i:len(hot)-1])
		copy(load[i+1:], load[i:len(load)-1])
		hot[i], load[i] = e, v
	}
	return hot
}

// contribution is the load (l, f) puts on node n.
func (st *state) contribution(l, f, n int) float64 {
	for i, m := range st.reps[l][f] {
		if m == n {
			return st.share[l][f][i] * st.w[l][f]
		}
	}
	return 0
}
