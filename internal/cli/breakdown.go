package cli

import (
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// productKey groups observed products by matrix and input rows.
type productKey struct {
	dt         tensor.DType
	layout     tensor.Layout
	rows, cols int
	n          int
	serial     bool
}

type productStat struct {
	calls      int
	ns         int64
	bytes      int64
	flops      float64
	minN, maxN int
}

// breakdown collects what the kernels' and the forward pass's observers
// report during decode steps.
type breakdown struct {
	mergeN   bool // one entry per matrix shape whatever its input rows (prefill's experts)
	mu       sync.Mutex
	products map[productKey]*productStat
	stages   map[hybrid.Stage]time.Duration
	calls    map[hybrid.Stage]int
}

func newBreakdown() *breakdown {
	return &breakdown{products: map[productKey]*productStat{}, stages: map[hybrid.Stage]time.Duration{}, calls: map[hybrid.Stage]int{}}
}

func (b *breakdown) product(p kernels.Product) {
	k := productKey{p.DType, p.Layout, p.Rows, p.Cols, p.N, p.Serial}
	if b.mergeN {
		k.n = 0
	}
	b.mu.Lock()
	st := b.products[k]
	if st == nil {
		st = &productStat{minN: p.N, maxN: p.N}
		b.products[k] = st
	}
	st.minN, st.maxN = min(st.minN, p.N), max(st.maxN, p.N)
	st.flops += 2 * float64(p.Rows) * float64(p.Cols) * float64(p.N)
	st.calls++
	st.ns += p.Elapsed.Nanoseconds()
	st.bytes += int64(p.Bytes)
	b.mu.Unlock()
}

func (b *breakdown) stage(s hybrid.Stage, d time.Duration) {
	b.mu.Lock()
	b.stages[s] += d
	b.calls[s]++
	b.mu.Unlock()
}

// decodeBreakdown runs reps×steps decode steps of the batch with the
// observers on and prints where a step's time goes: the forward pass's
// stages, and each kind of matrix product with its read rate against the
// read probe measured beside the repetitions (the products of one thread,
// as the routed experts' at decode, against the one-thread probe). The
// observers read the clock about twice per product, so the steps run a
// little slower than unobserved ones. A product's ms/step is thread time:
// products of one thread run side by side (the routed experts at decode).
func decodeBreakdown(out io.Writer, m *hybrid.Model, states []*hybrid.State, r *rand.Rand, th, steps, reps int, probe *kernels.ReadProbe) error {
	title := fmt.Sprintf("where a decode step's time goes: %d thread(s), batch %d, %d observed steps", th, len(states), steps*reps)
	return observeRuns(out, title, "step", false, th, steps, reps, probe, func() error { return decodeSteps(m, states, r, steps) })
}

// prefillBreakdown is decodeBreakdown for reps prefills of toks, each into a
// new session: where a prefill's time goes, with each product's GFLOP/s.
func prefillBreakdown(out io.Writer, m *hybrid.Model, toks []int, th, reps int, probe *kernels.ReadProbe) error {
	title := fmt.Sprintf("where a prefill's time goes: %d thread(s), %d tokens, %d observed prefills", th, len(toks), reps)
	return observeRuns(out, title, "prefill", true, th, 1, reps, probe, func() error {
		st := m.NewState()
		defer st.Free()
		return m.Forward([]hybrid.Seq{{State: st, Tokens: toks}})
	})
}

// observeRuns runs run reps+1 times (the first a warm-up), the last reps
// with the observers on, and prints the stage and product tables per unit
// (a decode step or a prefill; units per run). With mergeN a product's
// entry covers every input-row count of its matrix.
func observeRuns(out io.Writer, title, unit string, mergeN bool, th, units, reps int, probe *kernels.ReadProbe, run func() error) error {
	bd := newBreakdown()
	bd.mergeN = mergeN
	var probes, probes1 []float64
	var elapsed time.Duration
	for rep := range reps + 1 { // the first repetition is a warm-up
		if rep > 0 {
			kernels.SetProductObserver(bd.product)
			hybrid.SetStageObserver(bd.stage)
		}
		start := time.Now()
		err := run()
		kernels.SetProductObserver(nil)
		hybrid.SetStageObserver(nil)
		if err != nil {
			return err
		}
		if rep > 0 {
			elapsed += time.Since(start)
			probes = append(probes, probe.Measure(th))
			probes1 = append(probes1, probe.Measure(1))
		}
	}
	nunits := float64(units * reps)
	perUnitMs := func(ns int64) float64 { return float64(ns) / 1e6 / nunits }
	pb, pb1 := median(probes), median(probes1)
	fmt.Fprintf(out, "\n%s, %.2f ms a %s (observed), read probe beside %.1f GB/s (one thread %.1f)\n",
		title, perUnitMs(elapsed.Nanoseconds()), unit, pb/1e9, pb1/1e9)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "stage\tcalls/%s\tms/%s\tof %s\t\n", unit, unit, unit)
	order := []hybrid.Stage{hybrid.StageMamba, hybrid.StageConv, hybrid.StageScan, hybrid.StageGate, hybrid.StageAttention,
		hybrid.StageAttentionCore, hybrid.StageMoE, hybrid.StageExperts, hybrid.StageExpertSums, hybrid.StageHead}
	inner := map[hybrid.Stage]string{hybrid.StageConv: "  of which ", hybrid.StageScan: "  of which ", hybrid.StageGate: "  of which ",
		hybrid.StageAttentionCore: "  of which ", hybrid.StageExperts: "  of which ", hybrid.StageExpertSums: "    of which "}
	total := perUnitMs(bd.stages[hybrid.StageStep].Nanoseconds())
	rest := total
	for _, s := range order {
		if bd.calls[s] == 0 {
			continue
		}
		ms := perUnitMs(bd.stages[s].Nanoseconds())
		name := string(s)
		if in, ok := inner[s]; ok {
			name = in + name
		} else {
			rest -= ms
		}
		fmt.Fprintf(w, "%s\t%.1f\t%.3f\t%.2f\t\n", name, float64(bd.calls[s])/nunits, ms, ms/total)
	}
	fmt.Fprintf(w, "embedding, norms, residuals\t\t%.3f\t%.2f\t\n", rest, rest/total)
	fmt.Fprintf(w, "forward pass\t\t%.3f\t1.00\t\n", total)
	w.Flush()

	keys := make([]productKey, 0, len(bd.products))
	for k := range bd.products {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return bd.products[keys[i]].ns > bd.products[keys[j]].ns })
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "product\tinput rows\ton\tcalls/%s\tµs/call\tms/%s\tGB/s\tof probe\tGFLOP/s\t\n", unit, unit)
	for _, k := range keys {
		st := bd.products[k]
		gbs := float64(st.bytes) / float64(st.ns) // bytes per ns = GB/s
		n := fmt.Sprint(st.minN)
		if st.maxN != st.minN {
			n = fmt.Sprintf("%d-%d", st.minN, st.maxN)
		}
		thr, ref := "pool", pb
		if k.serial {
			thr, ref = "one thread", pb1
		}
		fmt.Fprintf(w, "%v %v %dx%d\t%s\t%s\t%.1f\t%.1f\t%.3f\t%.1f\t%.2f\t%.1f\t\n", k.dt, k.layout, k.rows, k.cols, n, thr,
			float64(st.calls)/nunits, float64(st.ns)/1e3/float64(st.calls), perUnitMs(st.ns), gbs, gbs*1e9/ref, st.flops/float64(st.ns))
	}
	return w.Flush()
}
