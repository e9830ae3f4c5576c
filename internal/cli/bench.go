package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

func init() {
	register("bench", "measure engine decode/prefill speed against the machine's limits", runBench)
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", stderr)
	model := fs.String("model", "", "model: Hugging Face folder or .gguf file (required)")
	threadsFlag := fs.String("threads", "1,2", "comma-separated thread counts")
	batchesFlag := fs.String("batches", "1,8,32", "comma-separated decode batch sizes")
	prompt := fs.Int("prompt", 512, "prefill prompt length (0: no prefill measurement)")
	steps := fs.Int("steps", 8, "decode steps per measurement")
	contextLen := fs.Int("context", 4, "tokens each decode session holds before its steps (its prompt): decode at a long context reads that much KV cache a step")
	reps := fs.Int("reps", 3, "repetitions (the median is reported)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the measurements to this file (go tool pprof)")
	kvDType := kvDTypeFlag(fs)
	mmap := fs.Bool("mmap", false, mmapUsage)
	streamsAB := fs.Bool("streams-ab", false, "the same as --ab streams")
	abName := fs.String("ab", "", "alternate the decode and prefill repetitions between two settings of the engine and print both and their ratio, to compare them within one process: streams (the two-stream kernels against the one-run ones, kernels.SetProductStreams), helping (ParallelFor participants helping with each other's products, against not, kernels.SetProductHelping), lanes (each thread of a split product taking consecutive blocks, against blocks handed out in turn, kernels.SetProductLanes), rows (row-wise work such as norms, residuals, the conv and the expert sums split across the threads, against on one thread, hybrid.SetRowSplitting), shared (at decode, the shared expert run beside the routed experts, against its products split across the threads, hybrid.SetSharedBeside), pairs (a routed expert's gate and up products as one product of two runs, against two products, kernels.SetProductPairs), codes (Q6_K, Q5_K and Q3_K products of many input rows unpacking their codes once, against making them on every pass, kernels.SetCodesUnpacking) or invariant (the batch-invariant kernels that --deterministic trunks and expert nodes run, against the faster one- and two-row kernels of the products widened to float32, the only ones that differ: F32, F16, BF16 without AVX-512 BF16, and quantized types with their 8-bit activations turned off; kernels.SetBatchInvariant)")
	breakdownFlag := fs.Bool("breakdown", false, "after each decode and prefill measurement, run the same steps again with the kernels' and the forward pass's observers on and print where the time goes (stages, and each matrix product's read rate against the read probe and its GFLOP/s)")
	lines := fs.Bool("lines", false, "also print one machine-readable line per measurement (\"result engine=switchyard threads=N test=prefill_512|decode_B|decode_B_at_C tokens_per_s=X\", the last at a --context other than 4)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *model == "" {
		return fmt.Errorf("--model is required")
	}
	if *prompt < 0 {
		return fmt.Errorf("--prompt must be at least 0 (0: no prefill measurement), got %d", *prompt)
	}
	if *contextLen < 1 {
		return fmt.Errorf("--context must be at least 1, got %d", *contextLen)
	}
	if *streamsAB {
		*abName = "streams"
	}
	variants, abRatio, err := abVariants(*abName)
	if err != nil {
		return err
	}
	threads, err := intList(*threadsFlag)
	if err != nil {
		return err
	}
	batches, err := intList(*batchesFlag)
	if err != nil {
		return err
	}
	rssBefore := procStatus("RssAnon")
	t0 := time.Now()
	m, _, err := hybrid.Open(*model, hybrid.LoadOptions{KVDType: *kvDType, NoMmap: !*mmap})
	if err != nil {
		return err
	}
	defer m.Close()
	loadTime := time.Since(t0)
	runtime.GC()
	fileBytes := modelFileBytes(*model)
	anonAfter := procStatus("RssAnon")
	c := m.Cfg
	where := "copied into anonymous memory"
	if *mmap {
		where = "memory-mapped (--mmap)"
	}
	fmt.Fprintf(stdout, "model %s\n  %s\n  weights %s (%s, %s), KV cache %v, loaded in %.2fs; anonymous RSS after load %s (+%s), file size %s\n",
		*model, c.Summary(), human(weightBytes(m.W)), m.W.Embed.DType, where, m.KVDType, loadTime.Seconds(),
		human(anonAfter), human(anonAfter-rssBefore), human(fileBytes))
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	var results []string        // --lines, printed under each thread count's rows
	var breakdowns bytes.Buffer // --breakdown, likewise
	result := func(th int, test string, tps float64) {
		if *lines {
			results = append(results, fmt.Sprintf("result engine=switchyard threads=%d test=%s tokens_per_s=%.3f\n", th, test, tps))
		}
	}
	fmt.Fprintln(w, "threads\tmem BW GB/s\tFMA peak GFLOP/s\tcase\ttokens/s\tweights GB/s\tread beside GB/s\tof BW\twith state\tGFLOP/s\tof peak\t")
	// Decode's share of the bandwidth: each repetition's weight bytes per
	// second against a read probe run right after it (median of the
	// repetitions' ratios), since this machine's bandwidth may move between
	// the start-up probe ("mem BW") and the repetitions.
	probe := kernels.NewReadProbe(256 << 20)
	r := rand.New(rand.NewPCG(1, 2))
	// Warm up: fault in the mapped weights (every expert) before timing anything.
	warm := m.NewState()
	if err := m.Forward([]hybrid.Seq{{State: warm, Tokens: randToks(r, 256, c.VocabSize)}}); err != nil {
		return err
	}
	// Sessions are freed when done with, as a server frees them, so the next
	// ones take their recurrent buffers (hybrid.State.Free).
	warm.Free()
	for _, th := range threads {
		kernels.SetThreads(th)
		bw := kernels.MeasureBandwidth(th)
		peak := kernels.MeasureFMAPeak(th)
		for _, b := range batches {
			states := make([]*hybrid.State, b)
			for i := range states {
				states[i] = m.NewState()
				seq := []hybrid.Seq{{State: states[i], Tokens: randToks(r, *contextLen, c.VocabSize)}}
				if err := m.Forward(seq); err != nil {
					return err
				}
			}
			// The repetitions take the variants in turn (one without --ab).
			times, beside, ratios := make([][]float64, len(variants)), make([][]float64, len(variants)), make([][]float64, len(variants))
			withState := make([][]float64, len(variants))
			bytesPerStep := float64(stepBytes(m, b))
			// The sessions' own traffic too: each step reads and writes
			// every recurrent state and reads the KV caches (at the
			// measurement's middle position).
			allPerStep := bytesPerStep + float64(sessionStepBytes(m, states, *steps))
			for rep := range *reps + 1 { // the first repetition is a warm-up
				for k, v := range variants {
					restore := v.set()
					start := time.Now()
					err := decodeSteps(m, states, r, *steps)
					restore()
					if err != nil {
						return err
					}
					if rep > 0 {
						t := time.Since(start).Seconds() / float64(*steps)
						times[k] = append(times[k], t)
						pb := probe.Measure(th)
						beside[k] = append(beside[k], pb)
						ratios[k] = append(ratios[k], bytesPerStep/t/pb)
						withState[k] = append(withState[k], allPerStep/t/pb)
					}
				}
			}
			for k, v := range variants {
				sec := median(times[k])
				label := fmt.Sprintf("decode batch %d%s", b, v.label)
				if *contextLen != 4 {
					label = fmt.Sprintf("decode batch %d at %d%s", b, *contextLen, v.label)
				}
				fmt.Fprintf(w, "%d\t%.1f\t%.0f\t%s\t%.2f\t%.2f\t%.1f\t%.2f\t%.2f\t\t\t\n", th, bw/1e9, peak/1e9, label,
					float64(b)/sec, bytesPerStep/sec/1e9, median(beside[k])/1e9, median(ratios[k]), median(withState[k]))
				if k == 0 {
					test := fmt.Sprintf("decode_%d", b)
					if *contextLen != 4 {
						test = fmt.Sprintf("decode_%d_at_%d", b, *contextLen)
					}
					result(th, test, float64(b)/sec)
				}
			}
			if *breakdownFlag {
				if err := decodeBreakdown(&breakdowns, m, states, r, th, *steps, *reps, probe); err != nil {
					return err
				}
			}
			if len(variants) == 2 {
				fmt.Fprintf(w, "%d\t\t\tdecode batch %d: %s\t%.3f\t\t\t\t\t\t\t\n", th, b, abRatio, pairRatio(times))
			}
			for _, st := range states {
				st.Free()
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if *prompt > 0 {
			pb := prefillBench{w: w, m: m, variants: variants, abRatio: abRatio, r: r, reps: *reps, probe: probe, result: result}
			if *breakdownFlag {
				pb.breakdowns = &breakdowns
			}
			if err := pb.run(th, *prompt, bw, peak); err != nil {
				return err
			}
		}
		w.Flush()
		for _, l := range results {
			fmt.Fprint(stdout, l)
		}
		results = results[:0]
		if _, err := breakdowns.WriteTo(stdout); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "peak RSS (VmHWM) %s, anonymous RSS now %s\n", human(procStatus("VmHWM")), human(procStatus("RssAnon")))
	return w.Flush()
}

// prefillBench is bench's prefill measurement: where it prints, the model,
// the --ab variants, the repetitions, and, with --breakdown, where the
// breakdown goes.
type prefillBench struct {
	w          io.Writer
	m          *hybrid.Model
	variants   []abVariant
	abRatio    string
	r          *rand.Rand
	reps       int
	breakdowns *bytes.Buffer // nil: no --breakdown
	probe      *kernels.ReadProbe
	result     func(th int, test string, tps float64)
}

// run measures and prints the prefill of a prompt of n tokens on th threads
// (the machine's bandwidth bw and FMA peak measured before): the variants in
// turn too (--ab), each repetition a new session.
func (pb *prefillBench) run(th, n int, bw, peak float64) error {
	w, m, variants, abRatio, r, reps := pb.w, pb.m, pb.variants, pb.abRatio, pb.r, pb.reps
	result := pb.result
	c := m.Cfg
	times := make([][]float64, len(variants))
	toks := randToks(r, n, c.VocabSize)
	for range reps {
		for k, v := range variants {
			restore := v.set()
			start := time.Now() // a new session's state included, as a server makes one
			st := m.NewState()
			err := m.Forward([]hybrid.Seq{{State: st, Tokens: toks}})
			elapsed := time.Since(start)
			restore()
			st.Free()
			if err != nil {
				return err
			}
			times[k] = append(times[k], elapsed.Seconds())
		}
	}
	fl := prefillFLOPs(m, n)
	for k, v := range variants {
		sec := median(times[k])
		fmt.Fprintf(w, "%d\t%.1f\t%.0f\tprefill %d%s\t%.1f\t\t\t\t\t%.1f\t%.2f\t\n", th, bw/1e9, peak/1e9, n, v.label,
			float64(n)/sec, fl/sec/1e9, fl/sec/peak)
		if k == 0 {
			result(th, fmt.Sprintf("prefill_%d", n), float64(n)/sec)
		}
	}
	if len(variants) == 2 {
		fmt.Fprintf(w, "%d\t\t\tprefill %d: %s\t%.3f\t\t\t\t\t\t\t\n", th, n, abRatio, pairRatio(times))
	}
	if pb.breakdowns != nil {
		return prefillBreakdown(pb.breakdowns, m, toks, th, reps, pb.probe)
	}
	return nil
}

// kvDTypeFlag registers --kv-dtype, the element type of the KV caches of the
// sessions a local model computes (hybrid.DefaultKVDType unless set).
func kvDTypeFlag(fs *flag.FlagSet) *tensor.DType {
	dt := hybrid.DefaultKVDType
	fs.Func("kv-dtype", "element type of the KV caches: bf16 (half the memory), q8_0 (8.5 bits a value) or f32 (default bf16)", func(s string) error {
		v, err := hybrid.ParseKVDType(s)
		dt = v
		return err
	})
	return &dt
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func randToks(r *rand.Rand, n, v int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = r.IntN(v)
	}
	return out
}

func median(x []float64) float64 {
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func weightBytes(w *hybrid.Weights) int64 {
	n := int64(w.Embed.Bytes())
	if &w.Output.Data[0] != &w.Embed.Data[0] {
		n += int64(w.Output.Bytes())
	}
	for _, l := range w.Layers {
		n += layerDenseBytes(l)
		for _, e := range l.Experts {
			n += int64(e.Bytes())
		}
	}
	return n
}

func layerDenseBytes(l hybrid.LayerWeights) int64 {
	n := int64(l.Shared.Bytes() + l.Router.Bytes())
	if l.Mamba != nil {
		n += int64(l.Mamba.InProj.Bytes() + l.Mamba.OutProj.Bytes())
	}
	if l.Attn != nil {
		n += int64(l.Attn.Q.Bytes() + l.Attn.K.Bytes() + l.Attn.V.Bytes() + l.Attn.O.Bytes())
	}
	return n
}

// stepBytes estimates the weight bytes one decode step of b rows must stream: every
// dense matrix and the LM head once, and per MoE layer the distinct experts the rows
// touch (expected count for uniform routing: E·(1-(1-k/E)^b)).
func stepBytes(m *hybrid.Model, b int) int64 {
	c := m.Cfg
	n := int64(m.W.Output.Bytes())
	for _, l := range m.W.Layers {
		n += layerDenseBytes(l)
		if c.IsMoE() && len(l.Experts) > 0 {
			p := float64(c.ExpertsPerTok) / float64(c.Experts)
			distinct := float64(c.Experts) * (1 - pow(1-p, b))
			n += int64(distinct * float64(l.Experts[0].Bytes()))
		}
	}
	return n
}

// sessionStepBytes is the memory one decode step of states moves besides
// the weights: every Mamba layer's conv and SSM state read and written
// once, and every attention layer's K and V read over the tokens cached
// at the middle of a steps-step measurement (and one token written).
func sessionStepBytes(m *hybrid.Model, states []*hybrid.State, steps int) int64 {
	perTok := hybrid.KVBytesPerToken(m.Cfg, m.KVDType)
	var n int64
	for _, st := range states {
		n += 2*st.RecurrentBytes() + int64(st.Pos+steps/2+1)*perTok
	}
	return n
}

func pow(x float64, n int) float64 {
	r := 1.0
	for range n {
		r *= x
	}
	return r
}

// prefillFLOPs counts the multiply-adds (x2) of the weight matmuls for a prompt of
// n tokens (mixer scans and attention scores excluded: they are small at this size).
func prefillFLOPs(m *hybrid.Model, n int) float64 {
	c := m.Cfg
	var params float64
	for _, l := range m.W.Layers {
		params += float64(l.Shared.Gate.Rows*l.Shared.Gate.Cols*3) + float64(l.Router.Rows*l.Router.Cols)
		if l.Mamba != nil {
			params += float64(l.Mamba.InProj.Rows*l.Mamba.InProj.Cols + l.Mamba.OutProj.Rows*l.Mamba.OutProj.Cols)
		}
		if l.Attn != nil {
			params += float64(l.Attn.Q.Rows*l.Attn.Q.Cols + l.Attn.K.Rows*l.Attn.K.Cols*2 + l.Attn.O.Rows*l.Attn.O.Cols)
		}
		if c.IsMoE() {
			params += float64(c.ExpertsPerTok) * float64(c.Intermediate*c.Hidden*3)
		}
	}
	// The LM head runs once (last position) in prefill.
	return 2*params*float64(n) + 2*float64(c.VocabSize*c.Hidden)
}

func modelFileBytes(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if !st.IsDir() {
		return st.Size()
	}
	var n int64
	ents, _ := os.ReadDir(path)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".safetensors") {
			if i, err := e.Info(); err == nil {
				n += i.Size()
			}
		}
	}
	return n
}

// procStatus reads a kB field of /proc/self/status as bytes (0 if unavailable).
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// pairRatio is the median over the repetitions of the second variant's
// time over the first's: the first's speed over the second's.
func pairRatio(times [][]float64) float64 {
	pair := make([]float64, len(times[0]))
	for i := range pair {
		pair[i] = times[1][i] / times[0][i]
	}
	return median(pair)
}

// abVariant is one kernel setting that bench's decode repetitions take in
// turn (--ab): set applies it and returns what restores the previous one.
type abVariant struct {
	label string // appended to the row's case
	set   func() (restore func())
}

// abVariants returns the variants of --ab name (the setting the kernels
// run by default first) and the label of their tokens/s ratio.
func abVariants(name string) ([]abVariant, string, error) {
	streams := func(n int) func() func() {
		return func() func() {
			prev := kernels.SetProductStreams(n)
			return func() { kernels.SetProductStreams(prev) }
		}
	}
	// onOff makes the variants of a switch whose setter returns the
	// previous setting.
	onOff := func(set func(bool) bool) func(on bool) func() func() {
		return func(on bool) func() func() {
			return func() func() {
				prev := set(on)
				return func() { set(prev) }
			}
		}
	}
	helping, lanes, pairs := onOff(kernels.SetProductHelping), onOff(kernels.SetProductLanes), onOff(kernels.SetProductPairs)
	codes, invariant := onOff(kernels.SetCodesUnpacking), onOff(kernels.SetBatchInvariant)
	rows, shared := onOff(hybrid.SetRowSplitting), onOff(hybrid.SetSharedBeside)
	switch name {
	case "":
		return []abVariant{{set: func() func() { return func() {} }}}, "", nil
	case "streams":
		return []abVariant{{", 2 streams", streams(2)}, {", 1 stream", streams(1)}}, "two streams / one", nil
	case "helping":
		return []abVariant{{", helping", helping(true)}, {", no helping", helping(false)}}, "helping / none", nil
	case "shared":
		return []abVariant{{", shared beside", shared(true)}, {", shared split", shared(false)}}, "shared beside / split", nil
	case "lanes":
		return []abVariant{{", lanes", lanes(true)}, {", blocks in turn", lanes(false)}}, "lanes / blocks in turn", nil
	case "rows":
		return []abVariant{{", rows split", rows(true)}, {", rows on one thread", rows(false)}}, "rows split / one thread", nil
	case "pairs":
		return []abVariant{{", gate and up paired", pairs(true)}, {", gate and up apart", pairs(false)}}, "paired / apart", nil
	case "codes":
		return []abVariant{{", codes unpacked", codes(true)}, {", codes per pass", codes(false)}}, "unpacked / per pass", nil
	case "invariant":
		return []abVariant{{", batch-invariant", invariant(true)}, {", not invariant", invariant(false)}}, "invariant / not", nil
	}
	return nil, "", fmt.Errorf("--ab %q: want streams, helping, lanes, rows, shared, pairs, codes or invariant", name)
}

// decodeSteps feeds every session of states one random token per step,
// steps times, as one batch.
func decodeSteps(m *hybrid.Model, states []*hybrid.State, r *rand.Rand, steps int) error {
	batch := make([]hybrid.Seq, len(states))
	for range steps {
		for i := range batch {
			batch[i] = hybrid.Seq{State: states[i], Tokens: randToks(r, 1, m.Cfg.VocabSize), Logits: batch[i].Logits}
		}
		if err := m.Forward(batch); err != nil {
			return err
		}
	}
	return nil
}
