package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/switchyard-serving/switchyard/model/gguf"
)

// FromGGUF derives the model config from GGUF metadata (spec section 5.1).
func FromGGUF(f *gguf.File) (*Config, error) {
	arch := f.Architecture()
	switch arch {
	case "granitehybrid", "granitemoe", "granite":
	default:
		return nil, fmt.Errorf("%w: general.architecture is %q, want \"granitehybrid\"", ErrInvalid, arch)
	}
	k := func(s string) string { return arch + "." + s }
	var errs []string
	u := func(key string) int {
		v, ok := f.Uint(k(key))
		if !ok {
			errs = append(errs, k(key))
		}
		return int(v)
	}
	fl := func(key string, def float64) float32 {
		if v, ok := f.Float(k(key)); ok {
			return float32(v)
		}
		return float32(def)
	}
	c := &Config{ModelType: "granitemoehybrid", HiddenAct: "silu", MambaExpand: 2, MambaConvBias: true,
		MambaChunkSize: 256, BOS: -1, EOS: -1, PAD: -1, TieWordEmbeddings: true, RopeInterleaved: true}
	c.Hidden = u("embedding_length")
	c.Layers = u("block_count")
	c.Heads = u("attention.head_count")
	c.Intermediate = u("feed_forward_length")
	c.RMSNormEps = fl("attention.layer_norm_rms_epsilon", 1e-5)
	c.AttentionMult = fl("attention.scale", 0)
	c.EmbeddingMultiplier = fl("embedding_scale", 1)
	c.ResidualMultiplier = fl("residual_scale", 1)
	c.LogitsScaling = fl("logit_scale", 1)
	c.RopeTheta = fl("rope.freq_base", 10000)
	if v, ok := f.Uint(k("context_length")); ok {
		c.MaxPositionEmbed = int(v)
	}
	if v, ok := f.Uint(k("expert_count")); ok {
		c.Experts = int(v)
		c.ExpertsPerTok = u("expert_used_count")
	}
	if v, ok := f.Uint(k("expert_shared_feed_forward_length")); ok {
		c.SharedIntermediate = int(v)
	} else {
		c.SharedIntermediate = c.Intermediate
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: GGUF metadata lacks %s", ErrInvalid, strings.Join(errs, ", "))
	}
	kv, isArr := f.Ints(k("attention.head_count_kv"))
	c.LayerTypes = make([]LayerType, c.Layers)
	if isArr {
		if len(kv) != c.Layers {
			return nil, fmt.Errorf("%w: %s has %d entries, block_count is %d", ErrInvalid, k("attention.head_count_kv"), len(kv), c.Layers)
		}
		for i, n := range kv {
			if n == 0 {
				c.LayerTypes[i] = Mamba
			} else {
				c.LayerTypes[i] = Attention
				if c.KVHeads != 0 && c.KVHeads != int(n) {
					return nil, fmt.Errorf("%w: %s varies across layers (%d vs %d), unsupported", ErrInvalid, k("attention.head_count_kv"), c.KVHeads, n)
				}
				c.KVHeads = int(n)
			}
		}
	} else {
		for i := range c.LayerTypes {
			c.LayerTypes[i] = Attention
		}
		c.KVHeads = u("attention.head_count_kv")
	}
	if c.KVHeads == 0 {
		c.KVHeads = c.Heads
	}
	if c.AttentionMult == 0 && c.Heads > 0 {
		c.AttentionMult = float32(1 / math.Sqrt(float64(c.Hidden/c.Heads)))
	}
	if c.NumLayers(Mamba) > 0 {
		c.MambaDConv = u("ssm.conv_kernel")
		c.MambaDState = u("ssm.state_size")
		c.MambaGroups = u("ssm.group_count")
		inner := u("ssm.inner_size")
		c.MambaHeads = u("ssm.time_step_rank")
		if len(errs) > 0 {
			return nil, fmt.Errorf("%w: GGUF metadata lacks %s", ErrInvalid, strings.Join(errs, ", "))
		}
		if c.Hidden > 0 && inner%c.Hidden != 0 {
			return nil, fmt.Errorf("%w: %s (%d) is not a multiple of embedding_length (%d)", ErrInvalid, k("ssm.inner_size"), inner, c.Hidden)
		}
		if c.Hidden > 0 {
			c.MambaExpand = inner / c.Hidden
		}
		if c.MambaHeads > 0 {
			c.MambaHeadDim = inner / c.MambaHeads
		}
	}
	ropeOn := true // llama.cpp's default when the key is missing
	if v, ok := f.Bool(k("rope.scaling.finetuned")); ok {
		ropeOn = v
	}
	if ropeOn && c.NumLayers(Attention) > 0 {
		c.PositionEmbed = "rope"
	} else {
		c.PositionEmbed = "nope"
	}
	toks, _ := f.Strings("tokenizer.ggml.tokens")
	c.VocabSize = len(toks)
	if v, ok := f.Uint(k("vocab_size")); ok {
		c.VocabSize = int(v)
	}
	if v, ok := f.Uint("tokenizer.ggml.bos_token_id"); ok {
		c.BOS = int(v)
	}
	if v, ok := f.Uint("tokenizer.ggml.eos_token_id"); ok {
		c.EOS = int(v)
	}
	if v, ok := f.Uint("tokenizer.ggml.padding_token_id"); ok {
		c.PAD = int(v)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// ModelName is how metrics, traces and ModelInfo name the model at path: its
// folder or file name (never the server path).
func ModelName(path string) string {
	return strings.TrimSuffix(filepath.Base(filepath.Clean(path)), ".gguf")
}

// ReadCheckpoint returns the configuration of a checkpoint in either format (a
// Hugging Face folder's config.json, or a GGUF file's metadata) without
// reading any weights.
func ReadCheckpoint(path string) (*Config, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if st.IsDir() {
		return Load(filepath.Join(path, "config.json"))
	}
	f, err := gguf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := FromGGUF(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
