package engine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/switchyard-serving/switchyard/model/convert"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/sample"
	"github.com/switchyard-serving/switchyard/model/synth"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// synthVariant writes a tiny synthetic checkpoint and applies config edits (the
// loader ignores tensors the edited config does not use).
func synthVariant(t *testing.T, allAttention bool, edit map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := synth.Write(dir, synth.Options{Preset: "tiny", DType: tensor.F32, Seed: 3, AllAttention: allAttention}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range edit {
		m[k] = v
	}
	b, _ = json.Marshal(m)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The HF path (rotate_half RoPE, stacked experts) and the converted GGUF path
// (interleaved RoPE on permuted q/k rows, split experts) compute the same logits
// for model variants the golden fixture does not cover.
func TestVariantsHFvsGGUF(t *testing.T) {
	cases := []struct {
		name    string
		allAttn bool
		edit    map[string]any
	}{
		{"rope all-attention (granite-4.0-micro style)", true, map[string]any{"position_embedding_type": "rope", "rope_theta": 10000.0}},
		{"dense hybrid (h-micro style)", false, map[string]any{"num_local_experts": 0, "num_experts_per_tok": 0, "intermediate_size": 64}},
		{"nope all-attention twin", true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := synthVariant(t, tc.allAttn, tc.edit)
			gg := filepath.Join(t.TempDir(), "m.gguf")
			if err := convert.HFToGGUF(dir, gg, convert.Options{Type: tensor.F32}); err != nil {
				t.Fatal(err)
			}
			a, err := Open(dir, hybrid.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := Open(gg, hybrid.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if a.Model.Cfg.UseRope() != b.Model.Cfg.UseRope() || a.Model.Cfg.IsMoE() != b.Model.Cfg.IsMoE() {
				t.Fatalf("configs differ: %s vs %s", a.Model.Cfg.Summary(), b.Model.Cfg.Summary())
			}
			toks := a.Tok.Encode("The keeper climbed the ninety-nine steps, then rested.", true)
			la, lb := all(t, a, toks), all(t, b, toks)
			if d := maxAbsDiff(la, lb); d > 1e-4 {
				t.Fatalf("HF vs GGUF logits differ by %.3g", d)
			}
		})
	}
}

func all(t *testing.T, e *Engine, toks []int) []float32 {
	t.Helper()
	seq := []hybrid.Seq{{State: e.Model.NewState(), Tokens: toks, AllLogits: true}}
	if err := e.Model.Forward(seq); err != nil {
		t.Fatal(err)
	}
	return seq[0].Logits
}

func fixtureEngine(t *testing.T) *Engine {
	t.Helper()
	e, err := Open(filepath.Join(goldenDirs(t)[0], "hf"), hybrid.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestGenerateStopsAndSeeds(t *testing.T) {
	e := fixtureEngine(t)
	prompt := e.Tok.Encode("Hello world", true)
	run := func(p sample.Params, max int, stops []string, stopIDs []int) Result {
		t.Helper()
		res, err := e.Generate(e.Model.NewState(), Request{Prompt: prompt, Params: p, MaxTokens: max, StopStrings: stops, StopIDs: stopIDs, IgnoreEOS: true}, func(Event) bool { return true })
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	g := run(sample.Params{}, 10, nil, nil)
	if len(g.Tokens) != 10 || g.FinishReason != FinishLength {
		t.Fatalf("max tokens: %d tokens, finish %s", len(g.Tokens), g.FinishReason)
	}
	hot := sample.Params{Temperature: 1.5, TopP: 0.9, Seed: 42}
	a, b := run(hot, 12, nil, nil), run(hot, 12, nil, nil)
	if !slices.Equal(a.Tokens, b.Tokens) {
		t.Fatalf("same seed, different tokens: %v vs %v", a.Tokens, b.Tokens)
	}
	hot.Seed = 43
	if c := run(hot, 12, nil, nil); slices.Equal(a.Tokens, c.Tokens) {
		t.Fatalf("different seeds gave identical samples %v", c.Tokens)
	}
	// Stop id: generation ends before emitting it.
	s := run(sample.Params{}, 10, nil, []int{g.Tokens[3]})
	if s.FinishReason != FinishStop || len(s.Tokens) != 3 {
		t.Fatalf("stop id: %v finish %s", s.Tokens, s.FinishReason)
	}
	// Stop string taken from the greedy text: output ends before it.
	if len(g.Text) > 4 {
		stop := g.Text[2:4]
		r := run(sample.Params{}, 10, []string{stop}, nil)
		if r.FinishReason != FinishStop || r.Text != g.Text[:2] {
			t.Fatalf("stop string %q: text %q finish %s (greedy text %q)", stop, r.Text, r.FinishReason, g.Text)
		}
	}
	// Cancellation through the callback.
	n := 0
	res, err := e.Generate(e.Model.NewState(), Request{Prompt: prompt, MaxTokens: 10, IgnoreEOS: true}, func(Event) bool { n++; return n < 2 })
	if err != nil || res.FinishReason != FinishCancel || len(res.Tokens) != 2 {
		t.Fatalf("cancel: %v %s %d", err, res.FinishReason, len(res.Tokens))
	}
	// Bad requests.
	for name, req := range map[string]Request{
		"empty":       {MaxTokens: 1},
		"max tokens":  {Prompt: prompt},
		"vocab":       {Prompt: []int{e.Model.Cfg.VocabSize}, MaxTokens: 1},
		"temperature": {Prompt: prompt, MaxTokens: 1, Params: sample.Params{Temperature: -1}},
	} {
		if _, err := e.Generate(e.Model.NewState(), req, func(Event) bool { return true }); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A session's second turn continues from its state and equals the prefill of the
// whole conversation.
func TestSecondTurnMatchesWholePrefill(t *testing.T) {
	e := fixtureEngine(t)
	turn1 := e.Tok.Encode("The keeper climbed", true)
	st := e.Model.NewState()
	res, err := e.Generate(st, Request{Prompt: turn1, MaxTokens: 5, IgnoreEOS: true}, func(Event) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	// The state holds the prompt and all generated tokens but the last.
	turn2 := append([]int{res.Tokens[len(res.Tokens)-1]}, e.Tok.Encode(" the steps", true)...)
	l2, err := e.Prefill(st, turn2)
	if err != nil {
		t.Fatal(err)
	}
	whole := append(append(append([]int{}, turn1...), res.Tokens[:len(res.Tokens)-1]...), turn2...)
	lw, err := e.Prefill(e.Model.NewState(), whole)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(l2, lw); d > 1e-4 {
		t.Fatalf("second turn differs from whole prefill by %.3g", d)
	}
}
