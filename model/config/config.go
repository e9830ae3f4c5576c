// Package config parses and validates the hyper-parameters of a Granite 4.0 hybrid
// model (Hugging Face `granitemoehybrid` config.json, or the equivalent GGUF
// metadata) into Config, the options struct the whole engine reads.
//
// JSON keys are the Hugging Face names verbatim. The parser accepts the
// non-standard JSON literals Infinity, -Infinity and NaN that newer transformers
// versions write (e.g. "time_step_limit": [0.0, Infinity]).
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
)

// ErrInvalid is wrapped by every validation error; the message names the key.
var ErrInvalid = errors.New("config: invalid")

// LayerType is the mixer kind of one decoder layer.
type LayerType uint8

const (
	// Mamba is a Mamba-2 state-space mixer layer.
	Mamba LayerType = iota
	// Attention is a grouped-query attention layer.
	Attention
)

func (t LayerType) String() string {
	if t == Attention {
		return "attention"
	}
	return "mamba"
}

// Config holds every hyper-parameter the forward pass needs. Derived sizes are
// methods. Widths are element counts.
type Config struct {
	ModelType  string      `json:"model_type"`
	VocabSize  int         `json:"vocab_size"`
	Hidden     int         `json:"hidden_size"`
	Layers     int         `json:"num_hidden_layers"`
	LayerTypes []LayerType `json:"-"`

	// Attention.
	Heads            int     `json:"num_attention_heads"`
	KVHeads          int     `json:"num_key_value_heads"`
	HeadDimOverride  int     `json:"head_dim"` // 0: Hidden / Heads
	AttentionBias    bool    `json:"attention_bias"`
	AttentionMult    float32 `json:"attention_multiplier"`
	PositionEmbed    string  `json:"position_embedding_type"` // "rope" or anything else (NoPE)
	RopeTheta        float32 `json:"rope_theta"`
	MaxPositionEmbed int     `json:"max_position_embeddings"`
	// RopeInterleaved selects ggml's interleaved-pair rotation (GGUF q/k rows are
	// permuted by the converter); false means HF rotate_half. Set by the loader.
	RopeInterleaved bool `json:"-"`

	// Feed-forward.
	Intermediate       int `json:"intermediate_size"`        // per routed expert
	SharedIntermediate int `json:"shared_intermediate_size"` // always-on shared MLP
	Experts            int `json:"num_local_experts"`
	ExpertsPerTok      int `json:"num_experts_per_tok"`

	// Mamba-2.
	MambaHeads     int  `json:"mamba_n_heads"`
	MambaHeadDim   int  `json:"-"` // from mamba_d_head ("auto" = d_inner / heads)
	MambaExpand    int  `json:"mamba_expand"`
	MambaDState    int  `json:"mamba_d_state"`
	MambaGroups    int  `json:"mamba_n_groups"`
	MambaDConv     int  `json:"mamba_d_conv"`
	MambaChunkSize int  `json:"mamba_chunk_size"`
	MambaConvBias  bool `json:"mamba_conv_bias"`
	MambaProjBias  bool `json:"mamba_proj_bias"`

	// Scalars.
	RMSNormEps          float32 `json:"rms_norm_eps"`
	EmbeddingMultiplier float32 `json:"embedding_multiplier"`
	ResidualMultiplier  float32 `json:"residual_multiplier"`
	LogitsScaling       float32 `json:"logits_scaling"`
	TieWordEmbeddings   bool    `json:"tie_word_embeddings"`
	HiddenAct           string  `json:"hidden_act"`

	BOS int `json:"bos_token_id"`
	EOS int `json:"eos_token_id"`
	PAD int `json:"pad_token_id"`
}

// Derived sizes.

// HeadDim is the attention head width.
func (c *Config) HeadDim() int {
	if c.HeadDimOverride > 0 {
		return c.HeadDimOverride
	}
	return c.Hidden / c.Heads
}

// DInner is the Mamba inner width (heads x head dim).
func (c *Config) DInner() int { return c.MambaExpand * c.Hidden }

// ConvDim is the number of channels through the causal conv (x, B and C).
func (c *Config) ConvDim() int { return c.DInner() + 2*c.MambaGroups*c.MambaDState }

// InProjDim is the number of rows of the Mamba in_proj (z, xBC, dt).
func (c *Config) InProjDim() int { return 2*c.DInner() + 2*c.MambaGroups*c.MambaDState + c.MambaHeads }

// QDim and KVDim are the widths of the query and of one of key/value projections.
func (c *Config) QDim() int  { return c.Heads * c.HeadDim() }
func (c *Config) KVDim() int { return c.KVHeads * c.HeadDim() }

// UseRope reports whether attention layers rotate q and k.
func (c *Config) UseRope() bool { return c.PositionEmbed == "rope" }

// NumLayers of each kind.
func (c *Config) NumLayers(t LayerType) int {
	n := 0
	for _, lt := range c.LayerTypes {
		if lt == t {
			n++
		}
	}
	return n
}

// IsMoE reports whether the FFN has routed experts (false for dense models).
func (c *Config) IsMoE() bool { return c.Experts > 0 }

// rawConfig carries the keys whose JSON form needs interpretation.
type rawConfig struct {
	LayerTypes      []string        `json:"layer_types"`
	LayersBlockType []string        `json:"layers_block_type"`
	MambaDHead      json.RawMessage `json:"mamba_d_head"`
	KVHeads         *int            `json:"num_key_value_heads"`
	EOS             json.RawMessage `json:"eos_token_id"`
}

// defaults mirrors GraniteMoeHybridConfig's class defaults (not Granite 4 values).
func defaults() Config {
	return Config{
		VocabSize: 32000, Hidden: 4096, Layers: 32, Heads: 32,
		AttentionMult: 1, RopeTheta: 10000, MaxPositionEmbed: 2048,
		Intermediate: 11008, SharedIntermediate: 1024, Experts: 8, ExpertsPerTok: 2,
		MambaHeads: 128, MambaExpand: 2, MambaDState: 256, MambaGroups: 1, MambaDConv: 4,
		MambaChunkSize: 256, MambaConvBias: true,
		RMSNormEps: 1e-6, EmbeddingMultiplier: 1, ResidualMultiplier: 1, LogitsScaling: 1,
		HiddenAct: "silu", BOS: 1, EOS: 2, PAD: -1,
	}
}

// Load reads and validates a config.json file.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates config.json bytes.
func Parse(b []byte) (*Config, error) {
	b = sanitizeNonFinite(b)
	c := defaults()
	var raw rawConfig
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: not valid JSON: %v", ErrInvalid, err)
	}
	// Decode the plain keys; eos_token_id may be a list, so decode it separately.
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrInvalid, err)
	}
	delete(probe, "eos_token_id")
	delete(probe, "mamba_d_head")
	for k, v := range probe {
		if string(v) == "null" {
			delete(probe, k)
		}
	}
	clean, _ := json.Marshal(probe)
	if err := json.Unmarshal(clean, &c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%w: key %q: expected %s, got %s", ErrInvalid, te.Field, te.Type, te.Value)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(raw.EOS) > 0 && string(raw.EOS) != "null" {
		var one int
		var many []int
		switch {
		case json.Unmarshal(raw.EOS, &one) == nil:
			c.EOS = one
		case json.Unmarshal(raw.EOS, &many) == nil && len(many) > 0:
			c.EOS = many[0]
		default:
			return nil, fmt.Errorf("%w: key \"eos_token_id\": want an integer or a list of integers", ErrInvalid)
		}
	}
	if raw.KVHeads == nil {
		c.KVHeads = c.Heads
	}
	names := raw.LayerTypes
	key := "layer_types"
	if names == nil {
		names, key = raw.LayersBlockType, "layers_block_type"
	}
	if names == nil {
		c.LayerTypes = make([]LayerType, c.Layers) // HF: all mamba when absent
	} else {
		if len(names) != c.Layers {
			return nil, fmt.Errorf("%w: key %q has %d entries, num_hidden_layers is %d", ErrInvalid, key, len(names), c.Layers)
		}
		c.LayerTypes = make([]LayerType, len(names))
		for i, n := range names {
			switch n {
			case "mamba":
				c.LayerTypes[i] = Mamba
			case "attention":
				c.LayerTypes[i] = Attention
			default:
				return nil, fmt.Errorf("%w: key %q entry %d is %q, want \"mamba\" or \"attention\"", ErrInvalid, key, i, n)
			}
		}
	}
	c.MambaHeadDim = 0
	if len(raw.MambaDHead) > 0 && string(raw.MambaDHead) != "null" && string(raw.MambaDHead) != `"auto"` {
		if err := json.Unmarshal(raw.MambaDHead, &c.MambaHeadDim); err != nil {
			return nil, fmt.Errorf("%w: key \"mamba_d_head\": want an integer or \"auto\"", ErrInvalid)
		}
	}
	if c.MambaHeadDim == 0 && c.MambaHeads > 0 {
		c.MambaHeadDim = c.DInner() / c.MambaHeads
	}
	if c.ModelType == "" {
		c.ModelType = "granitemoehybrid"
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// sanitizeNonFinite rewrites the bare literals Infinity, -Infinity and NaN (outside
// strings) to large finite or null values so encoding/json accepts the document.
// Infinity becomes 1e308 (only time_step_limit carries it, and only as "no clamp").
func sanitizeNonFinite(b []byte) []byte {
	if !bytes.Contains(b, []byte("Infinity")) && !bytes.Contains(b, []byte("NaN")) {
		return b
	}
	var out bytes.Buffer
	inStr, esc := false, false
	for i := 0; i < len(b); i++ {
		ch := b[i]
		if inStr {
			out.WriteByte(ch)
			switch {
			case esc:
				esc = false
			case ch == '\\':
				esc = true
			case ch == '"':
				inStr = false
			}
			continue
		}
		switch {
		case ch == '"':
			inStr = true
			out.WriteByte(ch)
		case bytes.HasPrefix(b[i:], []byte("-Infinity")):
			out.WriteString("-1e308")
			i += len("-Infinity") - 1
		case bytes.HasPrefix(b[i:], []byte("Infinity")):
			out.WriteString("1e308")
			i += len("Infinity") - 1
		case bytes.HasPrefix(b[i:], []byte("NaN")):
			out.WriteString("null")
			i += len("NaN") - 1
		default:
			out.WriteByte(ch)
		}
	}
	return out.Bytes()
}

func bad(key string, format string, args ...any) error {
	return fmt.Errorf("%w: key %q: %s", ErrInvalid, key, fmt.Sprintf(format, args...))
}

// Validate checks every value the engine depends on and names the offending key.
func (c *Config) Validate() error {
	if c.ModelType != "granitemoehybrid" && c.ModelType != "granitehybrid" {
		return bad("model_type", "%q is not supported (want \"granitemoehybrid\")", c.ModelType)
	}
	pos := []struct {
		key string
		v   int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.Hidden}, {"num_hidden_layers", c.Layers},
		{"shared_intermediate_size", c.SharedIntermediate},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return bad(p.key, "must be positive, got %d", p.v)
		}
	}
	if len(c.LayerTypes) != c.Layers {
		return bad("layer_types", "has %d entries, num_hidden_layers is %d", len(c.LayerTypes), c.Layers)
	}
	if c.NumLayers(Attention) > 0 {
		if c.Heads <= 0 {
			return bad("num_attention_heads", "must be positive, got %d", c.Heads)
		}
		if c.KVHeads <= 0 || c.Heads%c.KVHeads != 0 {
			return bad("num_key_value_heads", "%d must be positive and divide num_attention_heads (%d)", c.KVHeads, c.Heads)
		}
		if c.HeadDimOverride == 0 && c.Hidden%c.Heads != 0 {
			return bad("num_attention_heads", "%d does not divide hidden_size %d", c.Heads, c.Hidden)
		}
		if c.UseRope() && c.HeadDim()%2 != 0 {
			return bad("head_dim", "rope needs an even head dim, got %d", c.HeadDim())
		}
		if c.AttentionBias {
			return bad("attention_bias", "true is not supported (Granite 4 has no attention bias)")
		}
	}
	if c.NumLayers(Mamba) > 0 {
		for _, p := range []struct {
			key string
			v   int
		}{
			{"mamba_n_heads", c.MambaHeads}, {"mamba_expand", c.MambaExpand}, {"mamba_d_state", c.MambaDState},
			{"mamba_n_groups", c.MambaGroups}, {"mamba_d_conv", c.MambaDConv}, {"mamba_chunk_size", c.MambaChunkSize},
			{"mamba_d_head", c.MambaHeadDim},
		} {
			if p.v <= 0 {
				return bad(p.key, "must be positive, got %d", p.v)
			}
		}
		if c.MambaHeads*c.MambaHeadDim != c.DInner() {
			return bad("mamba_d_head", "mamba_n_heads (%d) x mamba_d_head (%d) must equal mamba_expand x hidden_size (%d)", c.MambaHeads, c.MambaHeadDim, c.DInner())
		}
		if c.MambaHeads%c.MambaGroups != 0 {
			return bad("mamba_n_groups", "%d does not divide mamba_n_heads %d", c.MambaGroups, c.MambaHeads)
		}
		if c.MambaProjBias {
			return bad("mamba_proj_bias", "true is not supported (Granite 4 has no projection bias)")
		}
	}
	if c.Experts < 0 {
		return bad("num_local_experts", "must be >= 0, got %d", c.Experts)
	}
	if c.Experts > 0 {
		if c.ExpertsPerTok <= 0 || c.ExpertsPerTok > c.Experts {
			return bad("num_experts_per_tok", "%d must be in [1, num_local_experts=%d]", c.ExpertsPerTok, c.Experts)
		}
		if c.Intermediate <= 0 {
			return bad("intermediate_size", "must be positive, got %d", c.Intermediate)
		}
	}
	if c.HiddenAct != "" && c.HiddenAct != "silu" {
		return bad("hidden_act", "%q is not supported (want \"silu\")", c.HiddenAct)
	}
	for _, f := range []struct {
		key string
		v   float32
	}{
		{"rms_norm_eps", c.RMSNormEps}, {"logits_scaling", c.LogitsScaling},
	} {
		if !(f.v > 0) || math.IsInf(float64(f.v), 0) {
			return bad(f.key, "must be a positive finite number, got %v", f.v)
		}
	}
	for _, f := range []struct {
		key string
		v   float32
	}{
		{"embedding_multiplier", c.EmbeddingMultiplier}, {"residual_multiplier", c.ResidualMultiplier},
		{"attention_multiplier", c.AttentionMult}, {"rope_theta", c.RopeTheta},
	} {
		if math.IsNaN(float64(f.v)) || math.IsInf(float64(f.v), 0) {
			return bad(f.key, "must be finite, got %v", f.v)
		}
	}
	return nil
}

// Summary is a one-line human description.
func (c *Config) Summary() string {
	var att []string
	for i, t := range c.LayerTypes {
		if t == Attention {
			att = append(att, fmt.Sprint(i))
		}
	}
	pe := "NoPE"
	if c.UseRope() {
		pe = "RoPE"
	}
	return fmt.Sprintf("%d layers (attention at [%s], %s), hidden %d, vocab %d, experts %d top-%d (I=%d) + shared %d, mamba %dx%d state %d",
		c.Layers, strings.Join(att, " "), pe, c.Hidden, c.VocabSize, c.Experts, c.ExpertsPerTok, c.Intermediate,
		c.SharedIntermediate, c.MambaHeads, c.MambaHeadDim, c.MambaDState)
}
