// Package synth writes random-weight Granite 4.0 hybrid checkpoints in Hugging Face
// format (config.json, model.safetensors, tokenizer files) with the real shapes of
// the published models, optionally with fewer layers or a smaller vocabulary. They
// are the default model of `switchyard up` and the benchmark models.
//
// Weights are drawn from a seeded counter-based generator, so a (preset, options,
// seed) triple always produces byte-identical files. Scales keep activations O(1)
// and the output distribution neither flat nor one-hot.
package synth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/safetensors"
	"github.com/switchyard-serving/switchyard/model/tensor"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// ErrOptions reports bad synth options.
var ErrOptions = errors.New("synth: invalid options")

// Options select the model to write.
type Options struct {
	Preset       string // tiny, h-micro, h-tiny, h-small
	Layers       int    // 0: the preset's; attention where layer%10 == 5 (tiny: its own pattern)
	Vocab        int    // 0: the preset's
	DType        tensor.DType
	Seed         uint64
	AllAttention bool      // write the all-attention twin (same widths, every layer attention)
	Experts      int       // routed experts per layer (0: the preset's); top-k is capped to it
	Progress     io.Writer // progress lines (nil: silent)
}

// Presets lists the preset names.
func Presets() []string { return []string{"tiny", "h-micro", "h-tiny", "h-small"} }

// PresetConfig returns the HF config keys of a preset (before Layers/Vocab overrides).
func PresetConfig(name string) (map[string]any, error) {
	common := map[string]any{
		"architectures": []string{"GraniteMoeHybridForCausalLM"}, "model_type": "granitemoehybrid",
		"attention_bias": false, "attention_dropout": 0.0, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
		"hidden_act": "silu", "mamba_conv_bias": true, "mamba_proj_bias": false, "mamba_d_conv": 4, "mamba_expand": 2,
		"mamba_n_groups": 1, "mamba_chunk_size": 256, "mamba_d_state": 128, "mamba_d_head": 64,
		"normalization_function": "rmsnorm", "position_embedding_type": "nope", "rms_norm_eps": 1e-5,
		"rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
		"vocab_size": 100352, "num_hidden_layers": 40, "max_position_embeddings": 131072,
		"bos_token_id": 100257, "eos_token_id": 100257, "pad_token_id": 100256,
	}
	var p map[string]any
	switch name {
	case "tiny": // the shape of the shared golden fixture
		p = map[string]any{"vocab_size": 464, "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
			"num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32,
			"shared_intermediate_size": 64, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16,
			"mamba_chunk_size": 8, "logits_scaling": 6.0, "attention_multiplier": 0.0078125, "max_position_embeddings": 4096,
			"layer_types":  []string{"mamba", "mamba", "attention", "mamba", "mamba", "attention"},
			"bos_token_id": 456, "eos_token_id": 456, "pad_token_id": 457}
	case "h-micro":
		p = map[string]any{"hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 0,
			"num_experts_per_tok": 0, "intermediate_size": 8192, "shared_intermediate_size": 8192, "mamba_n_heads": 64,
			"logits_scaling": 8.0, "attention_multiplier": 0.015625}
	case "h-tiny":
		p = map[string]any{"hidden_size": 1536, "num_attention_heads": 12, "num_key_value_heads": 4, "num_local_experts": 64,
			"num_experts_per_tok": 6, "intermediate_size": 512, "shared_intermediate_size": 1024, "mamba_n_heads": 48,
			"logits_scaling": 6.0, "attention_multiplier": 0.0078125}
	case "h-small":
		p = map[string]any{"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 72,
			"num_experts_per_tok": 10, "intermediate_size": 768, "shared_intermediate_size": 1536, "mamba_n_heads": 128,
			"logits_scaling": 16.0, "attention_multiplier": 0.0078125}
	default:
		return nil, fmt.Errorf("%w: unknown preset %q (want one of %v)", ErrOptions, name, Presets())
	}
	for k, v := range p {
		common[k] = v
	}
	return common, nil
}

// Write writes the checkpoint into dir (created if needed) and returns its config.
func Write(dir string, o Options) (*config.Config, error) {
	keys, err := PresetConfig(o.Preset)
	if err != nil {
		return nil, err
	}
	if o.DType == 0 {
		o.DType = tensor.BF16
	}
	if o.DType != tensor.BF16 && o.DType != tensor.F32 && o.DType != tensor.F16 {
		return nil, fmt.Errorf("%w: dtype %s (want bf16, f16 or f32)", ErrOptions, o.DType)
	}
	if o.Layers < 0 || o.Vocab < 0 {
		return nil, fmt.Errorf("%w: layers and vocab must be >= 0", ErrOptions)
	}
	if o.Layers > 0 {
		keys["num_hidden_layers"] = o.Layers
		if o.Preset == "tiny" {
			lt := make([]string, o.Layers)
			for i := range lt {
				lt[i] = "mamba"
				if i%3 == 2 {
					lt[i] = "attention"
				}
			}
			keys["layer_types"] = lt
		}
	}
	if o.Preset != "tiny" || o.Layers > 0 {
		n := keys["num_hidden_layers"].(int)
		if _, ok := keys["layer_types"]; !ok {
			lt := make([]string, n)
			for i := range lt {
				lt[i] = "mamba"
				if i%10 == 5 {
					lt[i] = "attention"
				}
			}
			keys["layer_types"] = lt
		}
	}
	if o.AllAttention {
		lt := make([]string, keys["num_hidden_layers"].(int))
		for i := range lt {
			lt[i] = "attention"
		}
		keys["layer_types"] = lt
	}
	if o.Vocab > 0 {
		keys["vocab_size"] = o.Vocab
	}
	if o.Experts > 0 {
		keys["num_local_experts"] = o.Experts
		if k, _ := keys["num_experts_per_tok"].(int); k > o.Experts {
			keys["num_experts_per_tok"] = o.Experts
		}
	}
	vocab := keys["vocab_size"].(int)
	tokJSON, tokCfg, err := tokenizer.Synthesize(vocab)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tokJSON, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tokCfg, 0o644); err != nil {
		return nil, err
	}
	tk, err := tokenizer.LoadHF(dir)
	if err != nil {
		return nil, err
	}
	keys["bos_token_id"], keys["eos_token_id"], keys["pad_token_id"] = tk.BOS(), tk.EOS(), tk.PAD()
	cfgJSON, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return nil, err
	}
	cfg, err := config.Parse(cfgJSON)
	if err != nil {
		return nil, fmt.Errorf("synth: preset %s: %w", o.Preset, err)
	}
	files := map[string][]byte{
		"config.json":             cfgJSON,
		"generation_config.json":  fmt.Appendf(nil, `{"bos_token_id": %d, "eos_token_id": %d, "pad_token_id": %d}`, tk.BOS(), tk.EOS(), tk.PAD()),
		"special_tokens_map.json": []byte(`{"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>"}`),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	specs, gens := tensors(cfg, o.DType)
	var total int64
	for _, s := range specs {
		n := int64(1)
		for _, d := range s.Shape {
			n *= int64(d)
		}
		rb, _ := s.DType.RowBytes(int(n))
		total += int64(rb)
	}
	start := time.Now()
	var written int64
	last := time.Now()
	err = safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), specs, map[string]string{"format": "pt", "generator": "switchyard synth " + o.Preset}, func(i int, dst []byte) error {
		gens[i].fill(o.Seed, uint64(i), o.DType, dst)
		written += int64(len(dst))
		if o.Progress != nil && (time.Since(last) > 2*time.Second || i == len(specs)-1) {
			last = time.Now()
			fmt.Fprintf(o.Progress, "synth: %s %5.1f%% of %.2f GB (%.0f MB/s)\n", specs[i].Name, 100*float64(written)/float64(total),
				float64(total)/1e9, float64(written)/1e6/time.Since(start).Seconds())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// gen describes how to fill one tensor: uniform noise of a given std around mean,
// or a special initialiser.
type gen struct {
	std, mean float32
	kind      int // 0 normal-ish noise, 1 A_log, 2 dt_bias
}

const (
	kindNoise = iota
	kindALog
	kindDtBias
)

func tensors(c *config.Config, dt tensor.DType) ([]safetensors.TensorSpec, []gen) {
	var specs []safetensors.TensorSpec
	var gens []gen
	add := func(name string, g gen, d tensor.DType, shape ...int) {
		specs = append(specs, safetensors.TensorSpec{Name: name, DType: d, Shape: shape})
		gens = append(gens, g)
	}
	H, V := c.Hidden, c.VocabSize
	fan := func(n int) float32 { return float32(1 / math.Sqrt(float64(n))) }
	embStd := float32(0.02)
	add("model.embed_tokens.weight", gen{std: embStd}, dt, V, H)
	// Final norm scale chosen so logits have a std of about 3 with the tied head.
	finalScale := 3 * c.LogitsScaling / (float32(math.Sqrt(float64(H))) * embStd)
	add("model.norm.weight", gen{mean: finalScale, std: finalScale * 0.05}, dt, H)
	for i, lt := range c.LayerTypes {
		p := fmt.Sprintf("model.layers.%d.", i)
		add(p+"input_layernorm.weight", gen{mean: 1, std: 0.05}, dt, H)
		add(p+"post_attention_layernorm.weight", gen{mean: 1, std: 0.05}, dt, H)
		if lt == config.Mamba {
			din, cd, nh := c.DInner(), c.ConvDim(), c.MambaHeads
			add(p+"mamba.in_proj.weight", gen{std: fan(H)}, dt, c.InProjDim(), H)
			add(p+"mamba.conv1d.weight", gen{std: fan(c.MambaDConv)}, dt, cd, 1, c.MambaDConv)
			add(p+"mamba.conv1d.bias", gen{std: 0.1}, dt, cd)
			add(p+"mamba.dt_bias", gen{kind: kindDtBias}, dt, nh)
			add(p+"mamba.A_log", gen{kind: kindALog}, dt, nh)
			add(p+"mamba.D", gen{mean: 1, std: 0.1}, dt, nh)
			add(p+"mamba.norm.weight", gen{mean: 1, std: 0.05}, dt, din)
			add(p+"mamba.out_proj.weight", gen{std: 2 * fan(din)}, dt, H, din)
		} else {
			add(p+"self_attn.q_proj.weight", gen{std: 3 * fan(H)}, dt, c.QDim(), H)
			add(p+"self_attn.k_proj.weight", gen{std: 3 * fan(H)}, dt, c.KVDim(), H)
			add(p+"self_attn.v_proj.weight", gen{std: fan(H)}, dt, c.KVDim(), H)
			add(p+"self_attn.o_proj.weight", gen{std: 2 * fan(c.QDim())}, dt, H, c.QDim())
		}
		if c.IsMoE() {
			E, I := c.Experts, c.Intermediate
			add(p+"block_sparse_moe.router.layer.weight", gen{std: 4 * fan(H)}, dt, E, H)
			add(p+"block_sparse_moe.input_linear.weight", gen{std: fan(H)}, dt, E, 2*I, H)
			add(p+"block_sparse_moe.output_linear.weight", gen{std: 2 * fan(I)}, dt, E, H, I)
		}
		S := c.SharedIntermediate
		add(p+"shared_mlp.input_linear.weight", gen{std: fan(H)}, dt, 2*S, H)
		add(p+"shared_mlp.output_linear.weight", gen{std: 2 * fan(S)}, dt, H, S)
	}
	return specs, gens
}

// splitmix64 is a counter-based generator: value i of stream s is a pure function.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// fill writes the tensor's values into dst, in parallel over chunks.
func (g gen) fill(seed, idx uint64, dt tensor.DType, dst []byte) {
	es := 4
	if dt != tensor.F32 {
		es = 2
	}
	n := len(dst) / es
	base := splitmix64(seed*0x100000001b3 ^ idx)
	const chunk = 1 << 16
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	next := make(chan int, (n+chunk-1)/chunk)
	for c := 0; c < n; c += chunk {
		next <- c
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c0 := range next {
				for i := c0; i < min(c0+chunk, n); i++ {
					v := g.value(splitmix64(base + uint64(i)))
					switch dt {
					case tensor.F32:
						b := math.Float32bits(v)
						dst[4*i], dst[4*i+1], dst[4*i+2], dst[4*i+3] = byte(b), byte(b>>8), byte(b>>16), byte(b>>24)
					case tensor.BF16:
						h := tensor.F32ToBF16(v)
						dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
					default:
						h := tensor.F32ToF16(v)
						dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// value maps 64 random bits to one parameter value.
func (g gen) value(r uint64) float32 {
	u := float32(r>>40) / float32(1<<24) // [0,1)
	switch g.kind {
	case kindALog: // A in [1, 16]
		return float32(math.Log(1 + 15*float64(u)))
	case kindDtBias: // dt in [0.001, 0.1] log-uniform, stored as inverse softplus
		dt := math.Exp(math.Log(0.001) + float64(u)*(math.Log(0.1)-math.Log(0.001)))
		return float32(dt + math.Log(-math.Expm1(-dt)))
	}
	// Sum of two uniforms (triangular) scaled to the requested std.
	u2 := float32(r&0xffffff) / float32(1<<24)
	t := (u + u2 - 1) * float32(math.Sqrt(6)) // std 1
	return g.mean + g.std*t
}
