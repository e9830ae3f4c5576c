package convert

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/safetensors"
	"github.com/switchyard-serving/switchyard/model/tensor"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// writeKQuantCheckpoint writes a small random Granite 4.0 hybrid checkpoint
// (HF layout, F32) whose widths are multiples of 256, so that every K-quant
// applies without fallback: hidden 256, 4 layers (mamba, attention, mamba,
// attention), 4 experts of 256, shared expert 256, d_inner 512.
func writeKQuantCheckpoint(t *testing.T, dir string) *config.Config {
	t.Helper()
	const vocab = 512
	keys := map[string]any{
		"architectures": []string{"GraniteMoeHybridForCausalLM"}, "model_type": "granitemoehybrid",
		"vocab_size": vocab, "hidden_size": 256, "num_hidden_layers": 4,
		"layer_types":         []string{"mamba", "attention", "mamba", "attention"},
		"num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
		"intermediate_size": 256, "shared_intermediate_size": 256, "mamba_n_heads": 8, "mamba_d_head": 64,
		"mamba_d_state": 16, "mamba_n_groups": 1, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 8,
		"mamba_conv_bias": true, "mamba_proj_bias": false, "hidden_act": "silu", "position_embedding_type": "nope",
		"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.015625,
		"logits_scaling": 6.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "max_position_embeddings": 4096,
		"rope_theta": 10000.0, "normalization_function": "rmsnorm", "attention_bias": false,
	}
	tokJSON, tokCfg, err := tokenizer.Synthesize(vocab)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tokenizer.json": tokJSON, "tokenizer_config.json": tokCfg} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tk, err := tokenizer.LoadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	keys["bos_token_id"], keys["eos_token_id"], keys["pad_token_id"] = tk.BOS(), tk.EOS(), tk.PAD()
	cfgJSON, _ := json.Marshal(keys)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(cfgJSON)
	if err != nil {
		t.Fatal(err)
	}

	type init struct {
		std, mean float64
		kind      int // 0 noise, 1 A_log, 2 dt_bias
	}
	var specs []safetensors.TensorSpec
	var inits []init
	add := func(name string, in init, shape ...int) {
		specs = append(specs, safetensors.TensorSpec{Name: name, DType: tensor.F32, Shape: shape})
		inits = append(inits, in)
	}
	H := c.Hidden
	w := func(fanIn int) init { return init{std: 1 / math.Sqrt(float64(fanIn))} }
	norm := init{std: 0.05, mean: 1}
	add("model.embed_tokens.weight", init{std: 0.1}, c.VocabSize, H)
	add("model.norm.weight", norm, H)
	for i, lt := range c.LayerTypes {
		p := "model.layers." + itoa(i) + "."
		add(p+"input_layernorm.weight", norm, H)
		add(p+"post_attention_layernorm.weight", norm, H)
		if lt == config.Mamba {
			add(p+"mamba.in_proj.weight", w(H), c.InProjDim(), H)
			add(p+"mamba.conv1d.weight", init{std: 0.3}, c.ConvDim(), 1, c.MambaDConv)
			add(p+"mamba.conv1d.bias", init{std: 0.05}, c.ConvDim())
			add(p+"mamba.dt_bias", init{kind: 2}, c.MambaHeads)
			add(p+"mamba.A_log", init{kind: 1}, c.MambaHeads)
			add(p+"mamba.D", init{std: 0.1, mean: 1}, c.MambaHeads)
			add(p+"mamba.norm.weight", norm, c.DInner())
			add(p+"mamba.out_proj.weight", w(c.DInner()), H, c.DInner())
		} else {
			add(p+"self_attn.q_proj.weight", w(H), c.QDim(), H)
			add(p+"self_attn.k_proj.weight", w(H), c.KVDim(), H)
			add(p+"self_attn.v_proj.weight", w(H), c.KVDim(), H)
			add(p+"self_attn.o_proj.weight", w(c.QDim()), H, c.QDim())
		}
		add(p+"block_sparse_moe.router.layer.weight", init{std: 0.3}, c.Experts, H)
		add(p+"block_sparse_moe.input_linear.weight", w(H), c.Experts, 2*c.Intermediate, H)
		add(p+"block_sparse_moe.output_linear.weight", w(c.Intermediate), c.Experts, H, c.Intermediate)
		add(p+"shared_mlp.input_linear.weight", w(H), 2*c.SharedIntermediate, H)
		add(p+"shared_mlp.output_linear.weight", w(c.SharedIntermediate), H, c.SharedIntermediate)
	}
	err = safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), specs, map[string]string{"format": "pt"}, func(i int, dst []byte) error {
		rng := rand.New(rand.NewPCG(uint64(i), 17))
		for j := 0; j < len(dst)/4; j++ {
			in := inits[i]
			v := in.mean + in.std*rng.NormFloat64()
			switch in.kind {
			case 1:
				v = math.Log(1 + 15*rng.Float64())
			case 2:
				v = -2 + 2*rng.Float64()
			}
			binary.LittleEndian.PutUint32(dst[4*j:], math.Float32bits(float32(v)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func itoa(i int) string { return string(rune('0' + i)) }

// TestMixLoadsAndMatchesF32 converts a checkpoint with 256-multiple widths to
// GGUF as F32 and with the Q4_K_M and Q5_K_M mixes (Q4_K/Q5_K, Q6_K for the tied
// embedding, half the attn_v and ffn_down tensors, trailing unit dimensions
// dropped), opens each through hybrid.Open and compares the logits of a
// 24-token prompt at every position with the F32 model's.
//
// Tolerance: the RMS of the logit difference must stay below 8% (Q4_K_M) and
// 4% (Q5_K_M) of the RMS of the F32 logits, and the argmax must agree at 80%
// of the positions. Measured on this checkpoint: see the test log; weight
// quantization error alone (relative RMS about 6.8% for 4-bit and 3.4% for
// 5-bit blocks) bounds what can be expected.
func TestMixLoadsAndMatchesF32(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	hf := t.TempDir()
	c := writeKQuantCheckpoint(t, hf)
	out := t.TempDir()
	prompt := make([]int, 24)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range prompt {
		prompt[i] = rng.IntN(256)
	}
	logits := func(path string) []float32 {
		m, f, err := hybrid.Open(path, hybrid.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		_ = f
		seq := []hybrid.Seq{{State: m.NewState(), Tokens: prompt, AllLogits: true}}
		if err := m.Forward(seq); err != nil {
			t.Fatal(err)
		}
		return append([]float32(nil), seq[0].Logits...)
	}
	f32Path := filepath.Join(out, "f32.gguf")
	if err := HFToGGUF(hf, f32Path, Options{Type: tensor.F32}); err != nil {
		t.Fatal(err)
	}
	ref := logits(f32Path)
	V := c.VocabSize
	for _, tc := range []struct {
		mix    Mix
		relRMS float64
		types  []tensor.DType // types the file must contain
	}{
		{MixQ4_K_M, 0.08, []tensor.DType{tensor.Q4_K, tensor.Q6_K}},
		{MixQ5_K_M, 0.06, []tensor.DType{tensor.Q5_K, tensor.Q6_K}},
		{MixMXFP4_MOE, 0.06, []tensor.DType{tensor.MXFP4, tensor.Q8_0}},
	} {
		t.Run(string(tc.mix), func(t *testing.T) {
			path := filepath.Join(out, string(tc.mix)+".gguf")
			if err := HFToGGUF(hf, path, Options{Mix: tc.mix}); err != nil {
				t.Fatal(err)
			}
			f, err := gguf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[tensor.DType]int{}
			for _, ti := range f.Tensors() {
				dt, _ := ti.Type.DType()
				seen[dt]++
			}
			ssmNorm, _ := f.TensorInfo("blk.0.ssm_norm.weight")
			f.Close()
			for _, dt := range tc.types {
				if seen[dt] == 0 {
					t.Errorf("no %v tensor in the file (types: %v)", dt, seen)
				}
			}
			if len(ssmNorm.Dims) != 1 {
				t.Errorf("ssm_norm.weight dims %v: want the trailing 1 dropped", ssmNorm.Dims)
			}
			got := logits(path)
			var d2, r2 float64
			agree := 0
			for p := range prompt {
				g, r := got[p*V:(p+1)*V], ref[p*V:(p+1)*V]
				for v := range g {
					d2 += sq(float64(g[v] - r[v]))
					r2 += sq(float64(r[v]))
				}
				if argmax(g) == argmax(r) {
					agree++
				}
			}
			rel := math.Sqrt(d2 / r2)
			t.Logf("%s: types %v; logits relative RMS difference %.4f, argmax agrees at %d/%d positions", tc.mix, seen, rel, agree, len(prompt))
			if rel > tc.relRMS {
				t.Errorf("relative RMS difference %.4f > %g", rel, tc.relRMS)
			}
			if agree < len(prompt)*8/10 {
				t.Errorf("argmax agrees at %d/%d positions", agree, len(prompt))
			}
		})
	}
}

func sq(x float64) float64 { return x * x }

func argmax(x []float32) int {
	b := 0
	for i, v := range x {
		if v > x[b] {
			b = i
		}
	}
	return b
}
