package convert

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// llamaQuantizeQ4KM is the shared tiny fixture's model.gguf quantized to Q4_K_M
// by llama.cpp's llama_model_quantize (see ../gguf/testdata/README.md).
const llamaQuantizeQ4KM = "../gguf/testdata/granite-tiny-q4_k_m.gguf"

// TestMixMatchesLlamaQuantize converts the fixture's HF folder with the Q4_K_M
// mix and requires the same tensor types and the same (trimmed) dimensions as
// llama-quantize wrote for the fixture's GGUF. The tiny model's widths (64, 128)
// are not multiples of 256, so this checks the mix rules through their
// fallbacks (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0) and the 8-expert rules.
func TestMixMatchesLlamaQuantize(t *testing.T) {
	dir := fixture(t)
	outPath := filepath.Join(t.TempDir(), "q4km.gguf")
	if err := HFToGGUF(filepath.Join(dir, "hf"), outPath, Options{Mix: MixQ4_K_M}); err != nil {
		t.Fatal(err)
	}
	got, err := gguf.Open(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	ref, err := gguf.Open(llamaQuantizeQ4KM)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if len(got.Tensors()) != len(ref.Tensors()) {
		t.Errorf("%d tensors, llama-quantize wrote %d", len(got.Tensors()), len(ref.Tensors()))
	}
	for _, rt := range ref.Tensors() {
		gt, ok := got.TensorInfo(rt.Name)
		if !ok {
			t.Errorf("%s missing", rt.Name)
			continue
		}
		if gt.Type != rt.Type || !slices.Equal(gt.Dims, rt.Dims) {
			t.Errorf("%s: %v %v, llama-quantize wrote %v %v", rt.Name, gt.Type, gt.Dims, rt.Type, rt.Dims)
		}
	}
	for _, key := range []string{"general.file_type", "general.quantization_version"} {
		g, _ := got.Uint(key)
		r, _ := ref.Uint(key)
		if g != r {
			t.Errorf("%s = %d, llama-quantize wrote %d", key, g, r)
		}
	}
}

// TestMixRules checks the per-tensor choices on real model shapes (widths that
// are multiples of 256), table-driven.
func TestMixRules(t *testing.T) {
	// 40 layers, attention at every layer%10 == 5 (4 attention layers), 64 experts.
	c := &config.Config{Layers: 40, Experts: 64, TieWordEmbeddings: true}
	for i := range 40 {
		lt := config.Mamba
		if i%10 == 5 {
			lt = config.Attention
		}
		c.LayerTypes = append(c.LayerTypes, lt)
	}
	for _, tc := range []struct {
		mix  Mix
		name string
		cols int
		want tensor.DType
	}{
		{MixQ4_K_M, "token_embd.weight", 1536, tensor.Q6_K}, // tied: the output's type
		{MixQ4_K_M, "blk.0.ssm_in.weight", 1536, tensor.Q4_K},
		{MixQ4_K_M, "blk.0.ssm_out.weight", 3072, tensor.Q4_K},
		{MixQ4_K_M, "blk.5.attn_v.weight", 1536, tensor.Q4_K},  // attention layer 0 of 4 (4/8 = 0: no first eighth)
		{MixQ4_K_M, "blk.15.attn_v.weight", 1536, tensor.Q4_K}, // 1 of 4
		{MixQ4_K_M, "blk.25.attn_v.weight", 1536, tensor.Q6_K}, // 2 of 4: (2-0)%3 == 2
		{MixQ4_K_M, "blk.35.attn_v.weight", 1536, tensor.Q6_K}, // 3 of 4: last eighth (i >= 7·4/8)
		{MixQ4_K_M, "blk.5.attn_k.weight", 1536, tensor.Q4_K},
		{MixQ4_K_M, "blk.5.attn_output.weight", 1536, tensor.Q4_K},
		{MixQ4_K_M, "blk.0.ffn_down_exps.weight", 512, tensor.Q6_K}, // first 5 layers
		{MixQ4_K_M, "blk.4.ffn_down_shexp.weight", 1024, tensor.Q6_K},
		{MixQ4_K_M, "blk.5.ffn_down_exps.weight", 512, tensor.Q4_K},
		{MixQ4_K_M, "blk.7.ffn_down_exps.weight", 512, tensor.Q6_K}, // (7-5)%3 == 2
		{MixQ4_K_M, "blk.35.ffn_down_exps.weight", 512, tensor.Q6_K},
		{MixQ4_K_M, "blk.34.ffn_down_exps.weight", 512, tensor.Q6_K}, // (34-5)%3 == 2
		{MixQ4_K_M, "blk.33.ffn_down_exps.weight", 512, tensor.Q4_K},
		{MixQ4_K_M, "blk.0.ffn_gate_exps.weight", 1536, tensor.Q4_K},
		{MixQ4_K_M, "blk.0.ffn_up_shexp.weight", 1536, tensor.Q4_K},
		{MixQ4_K_M, "blk.0.ssm_in.weight", 96, tensor.Q5_0}, // fallbacks
		{MixQ4_K_M, "blk.0.ffn_down_exps.weight", 96, tensor.Q8_0},
		{MixQ4_K_M, "blk.0.ssm_in.weight", 100, tensor.F16},
		{MixQ5_K_M, "blk.0.ssm_in.weight", 1536, tensor.Q5_K},
		{MixQ5_K_M, "blk.0.ssm_in.weight", 96, tensor.Q5_1},
		{MixQ5_K_M, "blk.25.attn_v.weight", 1536, tensor.Q6_K},
		{MixQ5_K_M, "blk.15.attn_v.weight", 1536, tensor.Q5_K},
		{MixQ5_K_M, "blk.7.ffn_down_exps.weight", 512, tensor.Q6_K},
		{MixQ5_K_M, "token_embd.weight", 1536, tensor.Q6_K},
		{MixMXFP4_MOE, "blk.0.ffn_gate_exps.weight", 1536, tensor.MXFP4},
		{MixMXFP4_MOE, "blk.7.ffn_down_exps.weight", 512, tensor.MXFP4},
		{MixMXFP4_MOE, "blk.0.ffn_up_shexp.weight", 1536, tensor.Q8_0},
		{MixMXFP4_MOE, "blk.25.attn_v.weight", 1536, tensor.Q8_0},
		{MixMXFP4_MOE, "blk.0.ssm_in.weight", 1536, tensor.Q8_0},
		{MixMXFP4_MOE, "token_embd.weight", 1536, tensor.Q8_0},
		{MixMXFP4_MOE, "blk.0.ffn_down_exps.weight", 100, tensor.F16},
	} {
		t.Run(fmt.Sprintf("%s/%s/%d", tc.mix, strings.TrimSuffix(tc.name, ".weight"), tc.cols), func(t *testing.T) {
			if got := tc.mix.tensorType(c, tc.name, tc.cols); got != tc.want {
				t.Errorf("%v, want %v", got, tc.want)
			}
		})
	}
	// Untied embeddings keep the default type; output.weight gets Q6_K.
	c.TieWordEmbeddings = false
	if got := MixQ4_K_M.tensorType(c, "token_embd.weight", 1536); got != tensor.Q4_K {
		t.Errorf("untied token_embd: %v, want Q4_K", got)
	}
	if got := MixQ4_K_M.tensorType(c, "output.weight", 1536); got != tensor.Q6_K {
		t.Errorf("output: %v, want Q6_K", got)
	}
	// 8 experts: attn_v/attn_k Q8_0, attn_output Q5_K (Q4_K_M only).
	c.Experts = 8
	for name, want := range map[string]tensor.DType{"blk.15.attn_v.weight": tensor.Q8_0, "blk.15.attn_k.weight": tensor.Q8_0, "blk.15.attn_output.weight": tensor.Q5_K} {
		if got := MixQ4_K_M.tensorType(c, name, 1536); got != want {
			t.Errorf("8 experts: %s: %v, want %v", name, got, want)
		}
	}
}

func TestParseType(t *testing.T) {
	for _, tc := range []struct {
		in  string
		dt  tensor.DType
		mix Mix
		ok  bool
	}{
		{"f16", tensor.F16, "", true}, {"Q6_K", tensor.Q6_K, "", true}, {"q4_0", tensor.Q4_0, "", true},
		{"q4_k_m", 0, MixQ4_K_M, true}, {"Q5_K_M", 0, MixQ5_K_M, true}, {"mxfp4_moe", 0, MixMXFP4_MOE, true}, {"MXFP4", tensor.MXFP4, "", true},
		{"q3_k", 0, "", false}, {"iq4_xs", 0, "", false}, {"q7", 0, "", false},
	} {
		dt, mix, err := ParseType(tc.in)
		if (err == nil) != tc.ok || dt != tc.dt || mix != tc.mix {
			t.Errorf("ParseType(%q) = %v, %q, %v", tc.in, dt, mix, err)
		}
	}
}
