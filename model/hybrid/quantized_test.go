package hybrid

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// quantDir holds a GGUF written by llama.cpp's llama-quantize (Q4_K_M of the
// shared tiny fixture: every weight matrix in Q5_0, Q5_1 or Q8_0, the tiny
// widths forcing llama.cpp's fallbacks; ssm_norm.weight stored as 1-D with its
// trailing unit dimension dropped) and llama.cpp's logits for the same weights
// (see ../gguf/testdata/README.md).
const quantDir = "../gguf/testdata"

// TestLoadLlamaQuantizeQ4KM loads the llama-quantize file through Open and
// checks the logits of three prompts, batched and token by token, at every
// kernel level, against llama.cpp's logits for the same (dequantized) weights,
// computed with an F32 KV cache: max abs diff <= 1e-3, the tolerance of the F32
// golden test, with F32 KV caches; with BF16 ones (the default) the tolerance
// of bf16 KV against llama.cpp's f32 KV on the golden fixture (0.03, measured
// there 0.021: see model/engine/kvdtype_test.go; here 0.019).
func TestLoadLlamaQuantizeQ4KM(t *testing.T) {
	var ref struct {
		Model      string `json:"model"`
		VocabSize  int    `json:"vocab_size"`
		LogitsFile string `json:"logits_file"`
		Prompts    []struct {
			Name     string `json:"name"`
			TokenIDs []int  `json:"token_ids"`
			Offset   int    `json:"offset"`
		} `json:"prompts"`
	}
	b, err := os.ReadFile(filepath.Join(quantDir, "granite-tiny-q4_k_m.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(quantDir, ref.LogitsFile))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(raw)/4)
	for i := range want {
		want[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}

	path := filepath.Join(quantDir, ref.Model)
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	types := map[gguf.GGMLType]int{}
	for _, ti := range f.Tensors() {
		types[ti.Type]++
	}
	norm, _ := f.TensorInfo("blk.0.ssm_norm.weight")
	f.Close()
	if len(norm.Dims) != 1 || types[gguf.GGMLTypeQ5_0] == 0 || types[gguf.GGMLTypeQ5_1] == 0 || types[gguf.GGMLTypeQ8_0] == 0 {
		t.Fatalf("fixture is not what the test expects: ssm_norm dims %v, types %v", norm.Dims, types)
	}

	for _, kv := range []struct {
		dt  tensor.DType
		tol float64
	}{{tensor.F32, 1e-3}, {tensor.BF16, 0.03}} {
		t.Run(kv.dt.String(), func(t *testing.T) { testLlamaQuantizeQ4KM(t, path, want, kv.dt, kv.tol, ref.VocabSize, ref.Prompts) })
	}
}

func testLlamaQuantizeQ4KM(t *testing.T, path string, want []float32, kv tensor.DType, tol float64, vocab int, prompts []struct {
	Name     string `json:"name"`
	TokenIDs []int  `json:"token_ids"`
	Offset   int    `json:"offset"`
}) {
	m, _, err := Open(path, LoadOptions{KVDType: kv})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	V := m.Cfg.VocabSize
	if V != vocab {
		t.Fatalf("vocab %d, reference %d", V, vocab)
	}
	prev := kernels.KernelLevel()
	defer kernels.SetKernelLevel(prev)
	for _, lvl := range kernels.SupportedLevels() {
		kernels.SetKernelLevel(lvl)
		for _, p := range prompts {
			n := len(p.TokenIDs)
			exp := want[p.Offset : p.Offset+n*V]
			seq := []Seq{{State: m.NewState(), Tokens: p.TokenIDs, AllLogits: true}}
			if err := m.Forward(seq); err != nil {
				t.Fatal(err)
			}
			if d := maxAbs(seq[0].Logits[:n*V], exp); d > tol {
				t.Errorf("level %v, %s batched: max abs diff %.3g > %g", lvl, p.Name, d, tol)
			}
			st := m.NewState()
			var worst float64
			for i, tok := range p.TokenIDs {
				seq := []Seq{{State: st, Tokens: []int{tok}}}
				if err := m.Forward(seq); err != nil {
					t.Fatal(err)
				}
				worst = math.Max(worst, maxAbs(seq[0].Logits, exp[i*V:(i+1)*V]))
			}
			if worst > tol {
				t.Errorf("level %v, %s token by token: max abs diff %.3g > %g", lvl, p.Name, worst, tol)
			}
			t.Logf("level %v, %s (%d tokens): decode max abs diff %.2g", lvl, p.Name, n, worst)
		}
	}
}

func maxAbs(a, b []float32) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}
