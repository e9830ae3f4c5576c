package cli

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
)

// bench --breakdown's table: every stage of a step and each product kind,
// with per-step counts that add up to the model's layers, and the
// observers reset afterwards.
func TestDecodeBreakdown(t *testing.T) {
	m, _, err := hybrid.Open(filepath.Join(fixture(t), "hf"), hybrid.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	st := m.NewState()
	if err := m.Forward([]hybrid.Seq{{State: st, Tokens: []int{1, 2}}}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := decodeBreakdown(&out, m, []*hybrid.State{st}, rand.New(rand.NewPCG(1, 1)), 1, 3, 2, kernels.NewReadProbe(64<<20)); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"6 observed steps", "mamba mixer", "of which mamba conv", "of which mamba scan", "of which mamba gate and norm", "attention mixer", "moe block", "lm head", "forward pass", "µs/call"} {
		if !strings.Contains(text, want) {
			t.Errorf("breakdown lacks %q:\n%s", want, text)
		}
	}
	// The LM head's product runs once per step.
	o := m.W.Output
	head := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(fmt.Sprintf("%v %v %dx%d", o.DType, o.Layout, o.Rows, o.Cols)) +
		`\s+1\s+(pool|one thread)\s+1\.0\s`)
	if !head.MatchString(text) {
		t.Errorf("no LM-head product row (once per step) in:\n%s", text)
	}
	if kernels.SetProductObserver(nil) != nil || hybrid.SetStageObserver(nil) != nil {
		t.Error("an observer was left set")
	}
	if t.Failed() {
		return
	}
	t.Log("\n" + text)
}

// The same tables for prefills: per prefill, the products of every input
// row count of a matrix in one entry (prefill's experts get varying rows).
func TestPrefillBreakdown(t *testing.T) {
	m, _, err := hybrid.Open(filepath.Join(fixture(t), "hf"), hybrid.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	toks := make([]int, 24)
	for i := range toks {
		toks[i] = (7*i + 3) % m.Cfg.VocabSize
	}
	var out bytes.Buffer
	if err := prefillBreakdown(&out, m, toks, 1, 2, kernels.NewReadProbe(64<<20)); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"24 tokens, 2 observed prefills", "ms a prefill", "calls/prefill", "of which mamba scan", "lm head", "GFLOP/s"} {
		if !strings.Contains(text, want) {
			t.Errorf("breakdown lacks %q:\n%s", want, text)
		}
	}
	// The Mamba in_proj runs once per Mamba layer per prefill, over all 24 rows.
	mambas := 0
	var in *hybrid.MambaWeights
	for _, l := range m.W.Layers {
		if l.Mamba != nil {
			mambas++
			in = l.Mamba
		}
	}
	w := in.InProj
	row := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(fmt.Sprintf("%v %v %dx%d", w.DType, w.Layout, w.Rows, w.Cols)) +
		fmt.Sprintf(`\s+24\s+(pool|one thread)\s+%d\.0\s`, mambas))
	if !row.MatchString(text) {
		t.Errorf("no in_proj row (24 input rows, %d calls a prefill) in:\n%s", mambas, text)
	}
	if kernels.SetProductObserver(nil) != nil || hybrid.SetStageObserver(nil) != nil {
		t.Error("an observer was left set")
	}
	if t.Failed() {
		return
	}
	t.Log("\n" + text)
}

// switchState reads an on/off switch through its setter, which returns the
// previous setting, as text.
func switchState(set func(bool) bool) func() string {
	return func() string {
		on := set(true)
		set(on)
		return fmt.Sprint(on)
	}
}

// bench --ab: each variant sets its kernel setting and restores the
// previous one; an unknown name is an error that names the choices.
func TestABVariants(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		check func() string // the setting now, as text
	}{
		{"", 1, func() string { return "" }},
		{"streams", 2, func() string { return fmt.Sprint(kernels.ProductStreams()) }},
		{"helping", 2, switchState(kernels.SetProductHelping)},
		{"lanes", 2, switchState(kernels.SetProductLanes)},
		{"rows", 2, switchState(hybrid.SetRowSplitting)},
		{"shared", 2, switchState(hybrid.SetSharedBeside)},
		{"pairs", 2, switchState(kernels.SetProductPairs)},
		{"codes", 2, switchState(kernels.SetCodesUnpacking)},
		{"invariant", 2, switchState(kernels.SetBatchInvariant)},
	} {
		vs, ratio, err := abVariants(tc.name)
		if err != nil || len(vs) != tc.n || (tc.n == 2) != (ratio != "") {
			t.Fatalf("abVariants(%q): %d variants, ratio %q, %v", tc.name, len(vs), ratio, err)
		}
		before := tc.check()
		seen := map[string]bool{}
		for _, v := range vs {
			restore := v.set()
			seen[tc.check()] = true
			restore()
			if now := tc.check(); now != before {
				t.Fatalf("--ab %s%s: setting %q after restore, %q before", tc.name, v.label, now, before)
			}
		}
		if len(seen) != tc.n {
			t.Errorf("--ab %q: its variants set %v", tc.name, seen)
		}
	}
	if _, _, err := abVariants("nope"); err == nil || !strings.Contains(err.Error(), "streams, helping, lanes, rows, shared, pairs, codes or invariant") {
		t.Errorf("abVariants(nope): %v", err)
	}
}

// --ab's ratio is the median of the repetitions' time ratios, second over
// first: above 1 when the first variant is faster.
func TestPairRatio(t *testing.T) {
	for _, tc := range []struct {
		times [][]float64
		want  float64
	}{
		{[][]float64{{1, 2, 4}, {2, 2, 2}}, 1},
		{[][]float64{{1, 1, 1}, {1.1, 1.2, 1.05}}, 1.1},
		{[][]float64{{2}, {1}}, 0.5},
	} {
		if got := pairRatio(tc.times); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("pairRatio(%v) = %v, want %v", tc.times, got, tc.want)
		}
	}
}

// sessionStepBytes counts each state's recurrent parts twice (read and
// written) and its KV caches over the tokens at the measurement's middle,
// plus the token written.
func TestSessionStepBytes(t *testing.T) {
	m, _, err := hybrid.Open(filepath.Join(fixture(t), "hf"), hybrid.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, b := m.NewState(), m.NewState()
	if err := m.Forward([]hybrid.Seq{{State: b, Tokens: []int{1, 2, 3, 4}}}); err != nil {
		t.Fatal(err)
	}
	rec, kv := a.RecurrentBytes(), hybrid.KVBytesPerToken(m.Cfg, m.KVDType)
	if rec == 0 || kv == 0 {
		t.Fatalf("fixture: recurrent %d, KV per token %d", rec, kv)
	}
	for _, c := range []struct {
		states []*hybrid.State
		steps  int
		want   int64
	}{
		{nil, 8, 0},
		{[]*hybrid.State{a}, 1, 2*rec + kv},
		{[]*hybrid.State{a}, 8, 2*rec + 5*kv},
		{[]*hybrid.State{a, b}, 8, 4*rec + 5*kv + 9*kv},
	} {
		if got := sessionStepBytes(m, c.states, c.steps); got != c.want {
			t.Errorf("%d states, %d steps: %d bytes, want %d", len(c.states), c.steps, got, c.want)
		}
	}
}

// bench --context N decodes sessions that hold N tokens (the label and the
// --lines test name say so: decode_B_at_N, what scripts/llamacpp-bench.sh
// pairs with llama.cpp's), --prompt 0 leaves the prefill out, and a context
// under one token or a negative prompt is refused.
func TestBenchContext(t *testing.T) {
	model := filepath.Join(fixture(t), "hf")
	var out, errOut bytes.Buffer
	if err := runBench(t.Context(), []string{"--model", model, "--threads", "1", "--batches", "1", "--prompt", "4", "--steps", "2", "--reps", "1", "--context", "300", "--lines"}, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	for _, want := range []string{"decode batch 1 at 300", "test=decode_1_at_300 ", "test=prefill_4 "} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q in:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := runBench(t.Context(), []string{"--model", model, "--threads", "1", "--batches", "1", "--prompt", "0", "--steps", "2", "--reps", "1", "--lines"}, &out, &errOut); err != nil {
		t.Fatalf("--prompt 0: %v\n%s", err, errOut.String())
	}
	if s := out.String(); !strings.Contains(s, "test=decode_1 ") || strings.Contains(s, "prefill") {
		t.Fatalf("--prompt 0: want decode_1 and no prefill in:\n%s", s)
	}
	for _, c := range []struct{ flag, val string }{{"--context", "0"}, {"--prompt", "-1"}} {
		if err := runBench(t.Context(), []string{"--model", model, c.flag, c.val}, &out, &errOut); err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Fatalf("%s %s: %v", c.flag, c.val, err)
		}
	}
}
