package convert

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Mix is a llama.cpp quantization mix: a default weight type plus per-tensor
// exceptions, as llama-quantize chooses them for a file type. The rules below
// were written from a reading of llama.cpp's src/llama-quant.cpp
// (llama_tensor_get_type_impl and tensor_type_fallback), restricted to the
// tensors a granitehybrid checkpoint has:
//
//   - output.weight, or token_embd.weight when the embeddings are tied (no
//     output.weight): Q6_K (Q8_0 when the width is not a multiple of 256);
//   - attn_v.weight: Q8_0 in models with exactly 8 experts, otherwise Q6_K in the
//     attention layers that use_more_bits selects (the first and last eighth of
//     them and every third one between), else the default type;
//   - attn_k.weight: Q8_0 in models with exactly 8 experts;
//   - attn_output.weight: Q5_K in 8-expert models under Q4_K_M;
//   - every ffn_down* tensor (dense, routed and shared): Q6_K in the layers that
//     use_more_bits selects among all layers;
//   - everything else (ssm_in, ssm_out, attn_q, ffn_gate*, ffn_up*, untied
//     token_embd): the default type (Q4_K for Q4_K_M, Q5_K for Q5_K_M);
//   - a type whose block does not divide the tensor's width falls back: Q4_K to
//     Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, and to F16 when even 32 does not divide it.
//
// MXFP4_MOE is simpler: the routed experts' stacks (ffn_gate_exps,
// ffn_up_exps, ffn_down_exps) MXFP4, every other matrix Q8_0 (the output and
// embeddings included), as llama-quantize made the fixture
// model/gguf/testdata/granite-tiny-mxfp4_moe.gguf.
//
// The router (ffn_gate_inp), ssm_conv1d, norms, biases, ssm_a and ssm_d are not
// quantized (F32). As llama-quantize does, a mix also writes every tensor with
// trailing dimensions of size 1 dropped.
type Mix string

// The supported mixes.
const (
	MixQ4_K_M    Mix = "Q4_K_M"
	MixQ5_K_M    Mix = "Q5_K_M"
	MixMXFP4_MOE Mix = "MXFP4_MOE"
)

// mixes lists the supported mixes.
var mixes = []Mix{MixQ4_K_M, MixQ5_K_M, MixMXFP4_MOE}

func (m Mix) defaultType() (tensor.DType, bool) {
	switch m {
	case MixQ4_K_M:
		return tensor.Q4_K, true
	case MixQ5_K_M:
		return tensor.Q5_K, true
	case MixMXFP4_MOE:
		return tensor.MXFP4, true
	}
	return 0, false
}

// fileType is llama.cpp's llama_ftype number of the mix (general.file_type).
func (m Mix) fileType() uint32 {
	switch m {
	case MixQ5_K_M:
		return 17
	case MixMXFP4_MOE:
		return 38
	}
	return 15
}

// useMoreBits is llama.cpp's choice of the layers (of n) that get more bits.
func useMoreBits(i, n int) bool {
	return i < n/8 || i >= 7*n/8 || (i-n/8)%3 == 2
}

// tensorType picks the stored type of weight matrix name (GGUF name) of width
// cols in model c.
func (m Mix) tensorType(c *config.Config, name string, cols int) tensor.DType {
	if m == MixMXFP4_MOE {
		if strings.Contains(name, "_exps.") {
			return fallbackType(tensor.MXFP4, cols)
		}
		return fallbackType(tensor.Q8_0, cols)
	}
	def, _ := m.defaultType()
	dt := def
	layer := -1
	if rest, ok := strings.CutPrefix(name, "blk."); ok {
		if i := strings.IndexByte(rest, '.'); i > 0 {
			layer, _ = strconv.Atoi(rest[:i])
		}
	}
	switch {
	case name == "output.weight" || (name == "token_embd.weight" && c.TieWordEmbeddings):
		if cols%256 != 0 {
			dt = tensor.Q8_0
		} else {
			dt = tensor.Q6_K
		}
	case strings.Contains(name, "attn_v.weight"):
		// i counts the attention layers before this one.
		i, n := 0, c.NumLayers(config.Attention)
		for l := 0; l < layer && l < len(c.LayerTypes); l++ {
			if c.LayerTypes[l] == config.Attention {
				i++
			}
		}
		if useMoreBits(i, n) {
			dt = tensor.Q6_K
		}
		if c.Experts == 8 {
			dt = tensor.Q8_0
		}
	case strings.Contains(name, "attn_k.weight"):
		if c.Experts == 8 {
			dt = tensor.Q8_0
		}
	case strings.Contains(name, "attn_output.weight"):
		if c.Experts == 8 && m == MixQ4_K_M {
			dt = tensor.Q5_K
		}
	case strings.Contains(name, "ffn_down"):
		if useMoreBits(layer, c.Layers) {
			dt = tensor.Q6_K
		}
	}
	return fallbackType(dt, cols)
}

// fallbackType is llama.cpp's tensor_type_fallback for the types a mix uses.
func fallbackType(dt tensor.DType, cols int) tensor.DType {
	if cols%dt.BlockValues() == 0 {
		return dt
	}
	switch dt {
	case tensor.Q4_K:
		dt = tensor.Q5_0
	case tensor.Q5_K:
		dt = tensor.Q5_1
	case tensor.Q6_K:
		dt = tensor.Q8_0
	}
	if cols%dt.BlockValues() != 0 {
		return tensor.F16
	}
	return dt
}

// ParseType parses a weight type as the command line spells it: a tensor type
// ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k",
// "q6_k", "mxfp4") or a mix ("q4_k_m", "q5_k_m", "mxfp4_moe"), case-insensitive.
// It returns the Options fields to set (Type, or Mix).
func ParseType(s string) (dt tensor.DType, mix Mix, err error) {
	for _, m := range mixes {
		if strings.EqualFold(s, string(m)) {
			return 0, m, nil
		}
	}
	if d, ok := tensor.ParseDType(s); ok && tensor.CanQuantize(d) {
		return d, "", nil
	}
	return 0, "", fmt.Errorf("%w: unknown weight type %q (want f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, mxfp4, q4_k_m, q5_k_m or mxfp4_moe)", ErrConvert, s)
}
