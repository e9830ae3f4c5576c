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
	calls int
	ns    int64
	bytes int64
}

// breakdown collects what the kernels' and the forward pass's observers
// report during decode steps.
type breakdown struct {
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
	b.mu.Lock()
	st := b.products[k]
	if st == nil {
		st = &productStat{}
		b.products[k] = st
	}
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
	bd := newBreakdown()
	var probes, probes1 []float64
	var elapsed time.Duration
	for rep := range reps + 1 { // the first repetition is a warm-up
		if rep > 0 {
			kernels.SetProductObserver(bd.product)
			hybrid.SetStageObserver(bd.stage)
		}
		start := time.Now()
		err := decodeSteps(m, states, r, steps)
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
	nsteps := float64(steps * reps)
	perStepNs := func(ns int64) float64 { return float64(ns) / 1e6 / nsteps }
	step := perStepNs(elapsed.Nanoseconds())
	pb, pb1 := median(probes), median(probes1)
	fmt.Fprintf(out, "\nwhere a decode step's time goes: %d thread(s), batch %d, %d observed steps, %.2f ms a step (observed), read probe beside %.1f GB/s (one thread %.1f)\n",
		th, len(states), steps*reps, step, pb/1e9, pb1/1e9)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "stage\tcalls/step\tms/step\tof step\t")
	order := []hybrid.Stage{hybrid.StageMamba, hybrid.StageScan, hybrid.StageAttention, hybrid.StageAttentionCore,
		hybrid.StageMoE, hybrid.StageExperts, hybrid.StageHead}
	inner := map[hybrid.Stage]bool{hybrid.StageScan: true, hybrid.StageAttentionCore: true, hybrid.StageExperts: true}
	stepMs := float64(bd.stages[hybrid.StageStep].Nanoseconds()) / 1e6 / nsteps
	rest := stepMs
	for _, s := range order {
		if bd.calls[s] == 0 {
			continue
		}
		ms := float64(bd.stages[s].Nanoseconds()) / 1e6 / nsteps
		name := string(s)
		if inner[s] {
			name = "  of which " + name
		} else {
			rest -= ms
		}
		fmt.Fprintf(w, "%s\t%.1f\t%.3f\t%.2f\t\n", name, float64(bd.calls[s])/nsteps, ms, ms/stepMs)
	}
	fmt.Fprintf(w, "embedding, norms, residuals\t\t%.3f\t%.2f\t\n", rest, rest/stepMs)
	fmt.Fprintf(w, "forward pass\t\t%.3f\t1.00\t\n", stepMs)
	w.Flush()

	keys := make([]productKey, 0, len(bd.products))
	for k := range bd.products {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return bd.products[keys[i]].ns > bd.products[keys[j]].ns })
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "product\tinput rows\ton\tcalls/step\tµs/call\tms/step\tGB/s\tof probe\t")
	for _, k := range keys {
		st := bd.products[k]
		gbs := float64(st.bytes) / float64(st.ns) // bytes per ns = GB/s
		thr, ref := "pool", pb
		if k.serial {
			thr, ref = "one thread", pb1
		}
		fmt.Fprintf(w, "%v %v %dx%d\t%d\t%s\t%.1f\t%.1f\t%.3f\t%.1f\t%.2f\t\n", k.dt, k.layout, k.rows, k.cols, k.n, thr,
			float64(st.calls)/nsteps, float64(st.ns)/1e3/float64(st.calls), perStepNs(st.ns), gbs, gbs*1e9/ref)
	}
	return w.Flush()
}
