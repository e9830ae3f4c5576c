package engine

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// golden is the layout of a fixture folder's golden.json (llama.cpp reference).
type golden struct {
	VocabSize int `json:"vocab_size"`
	Prompts   []struct {
		Name     string      `json:"name"`
		Text     string      `json:"text"`
		TokenIDs []int       `json:"token_ids"`
		Logits   [][]float32 `json:"logits"`
		Greedy   []int       `json:"greedy_new_token_ids"`
	} `json:"prompts"`
	Tokenization struct {
		Cases []struct {
			Text string `json:"text"`
			IDs  []int  `json:"ids"`
		} `json:"cases"`
	} `json:"tokenization"`
}

// logitTol is the golden tolerance with float32 KV caches (the suggested
// tolerance of the fixture, whose reference llama.cpp computed with an F32 KV
// cache; observed 3e-5).
const logitTol = 1e-3

// kvSetting is a KV cache element type the golden tests run at, the llama.cpp
// reference for it and the tolerance justified for it (see kvdtype_test.go).
type kvSetting struct {
	dt  tensor.DType
	ref *golden // logits and greedy tokens; nil: the fixture has no reference for it
	tol float64
}

// kvSettings are the KV settings the golden tests of fixture dir run at: F32
// against the fixture's golden.json, BF16 (the default) against llama.cpp's own
// logits with a BF16 KV cache (flash attention on), which exist for the shared
// fixture only.
func kvSettings(t *testing.T, dir string, g *golden) []kvSetting {
	return []kvSetting{
		{tensor.F32, g, logitTol},
		{tensor.BF16, llamaKVRef(t, dir, g, "granite-tiny-kv-bf16-fa"), kvBF16LlamaFATol},
	}
}

// goldenDirs lists the fixture folders: $SWITCHYARD_GOLDEN_DIRS (colon-separated)
// or the shared tiny fixture beside the checkout.
func goldenDirs(t *testing.T) []string {
	t.Helper()
	if v := os.Getenv("SWITCHYARD_GOLDEN_DIRS"); v != "" {
		return strings.Split(v, ":")
	}
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny")
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("golden fixture missing (%v); set SWITCHYARD_GOLDEN_DIRS", err)
	}
	return []string{d}
}

func loadGolden(t *testing.T, dir string) *golden {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return &g
}

func maxAbsDiff(a []float32, b []float32) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

// TestGolden checks logits at every position (batched prefill and token-by-token
// decode), the greedy continuation and the tokenizer against llama.cpp, for both
// checkpoint formats.
//
// It runs at every KV setting (kvSettings): float32 KV caches against the
// fixture's golden.json, bfloat16 ones (the default) against llama.cpp's logits
// with a bfloat16 KV cache.
func TestGolden(t *testing.T) {
	// The references are llama.cpp's on F32 weights (float32 activations): the hf folder's bf16 weights must not round the activations to bf16.
	defer kernels.SetBF16Activations(kernels.SetBF16Activations(false))
	for _, dir := range goldenDirs(t) {
		g := loadGolden(t, dir)
		for _, kv := range kvSettings(t, dir, g) {
			if kv.ref == nil {
				t.Logf("%s: no llama.cpp reference with a %v KV cache", dir, kv.dt)
				continue
			}
			for _, format := range []string{"hf", "gguf"} {
				t.Run(filepath.Base(dir)+"/"+format+"/kv-"+strings.ToLower(kv.dt.String()), func(t *testing.T) {
					testGolden(t, dir, format, g, kv)
				})
			}
		}
	}
}

func testGolden(t *testing.T, dir, format string, g *golden, kv kvSetting) {
	path := filepath.Join(dir, "hf")
	if format == "gguf" {
		path = filepath.Join(dir, "model.gguf")
	}
	e, err := Open(path, hybrid.LoadOptions{KVDType: kv.dt})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if st := e.Model.NewState(); st.KVDType() != kv.dt {
		t.Fatalf("state KV type %v, want %v", st.KVDType(), kv.dt)
	}
	V := e.Model.Cfg.VocabSize
	tol := kv.tol
	for _, p := range kv.ref.Prompts {
		// Batched prefill, every position, both scan forms.
		for _, chunkedMin := range []int{0, 2} {
			e.Model.ScanChunkedMin = chunkedMin
			st := e.Model.NewState()
			seq := []hybrid.Seq{{State: st, Tokens: p.TokenIDs, AllLogits: true}}
			if err := e.Model.Forward(seq); err != nil {
				t.Fatal(err)
			}
			for i, want := range p.Logits {
				if d := maxAbsDiff(seq[0].Logits[i*V:(i+1)*V], want); d > tol {
					t.Fatalf("%s prefill (chunkedMin=%d) position %d: max abs diff %.3g > %g", p.Name, chunkedMin, i, d, tol)
				}
			}
		}
		// Token-by-token decode, then greedy.
		st := e.Model.NewState()
		var worst float64
		seq := []hybrid.Seq{{State: st}}
		for i, tok := range p.TokenIDs {
			seq[0].Tokens = []int{tok}
			if err := e.Model.Forward(seq); err != nil {
				t.Fatal(err)
			}
			worst = math.Max(worst, maxAbsDiff(seq[0].Logits, p.Logits[i]))
		}
		if worst > tol {
			t.Fatalf("%s decode path: max abs diff %.3g > %g", p.Name, worst, tol)
		}
		logits := seq[0].Logits
		for step, want := range p.Greedy {
			got := argmax(logits)
			if got != want {
				t.Fatalf("%s greedy step %d: got %d want %d", p.Name, step, got, want)
			}
			seq[0].Tokens = []int{got}
			if err := e.Model.Forward(seq); err != nil {
				t.Fatal(err)
			}
			logits = seq[0].Logits
		}
		t.Logf("%s: %d tokens, decode max abs diff %.2g, greedy ok", p.Name, len(p.TokenIDs), worst)
	}
	for _, c := range g.Tokenization.Cases {
		if got := e.Tok.Encode(c.Text, true); !slices.Equal(got, c.IDs) {
			t.Errorf("tokenize %q: got %v want %v", c.Text, got, c.IDs)
		}
	}
	for _, p := range g.Prompts {
		if got := e.Tok.Encode(p.Text, true); !slices.Equal(got, p.TokenIDs) {
			t.Errorf("tokenize prompt %s: got %v want %v", p.Name, got, p.TokenIDs)
		}
	}
}

func argmax(x []float32) int {
	b := 0
	for i, v := range x {
		if v > x[b] {
			b = i
		}
	}
	return b
}
