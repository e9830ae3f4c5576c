package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixtureDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny", "hf")
	if _, err := os.Stat(d); err != nil {
		t.Skipf("shared fixture not present: %v", err)
	}
	return d
}

func TestLoadFixture(t *testing.T) {
	c, err := Load(filepath.Join(fixtureDir(t), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"vocab", c.VocabSize, 464},
		{"hidden", c.Hidden, 64},
		{"layers", c.Layers, 6},
		{"attention layers", c.NumLayers(Attention), 2},
		{"layer 2", c.LayerTypes[2], Attention},
		{"head dim", c.HeadDim(), 16},
		{"d_inner", c.DInner(), 128},
		{"mamba head dim", c.MambaHeadDim, 16},
		{"conv dim", c.ConvDim(), 160},
		{"in_proj", c.InProjDim(), 2*128 + 2*16 + 8},
		{"rope", c.UseRope(), false},
		{"experts", c.Experts, 8},
		{"eps", c.RMSNormEps, float32(1e-5)},
		{"logits scaling", c.LogitsScaling, float32(6)},
		{"eos", c.EOS, 456},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

const base = `{"model_type":"granitemoehybrid","vocab_size":100,"hidden_size":64,"num_hidden_layers":2,
"layer_types":["mamba","attention"],"num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":32,
"shared_intermediate_size":64,"num_local_experts":4,"num_experts_per_tok":2,"mamba_n_heads":8,"mamba_d_head":16,
"mamba_d_state":16,"mamba_n_groups":1,"mamba_d_conv":4,"mamba_expand":2,"rms_norm_eps":1e-5 %s}`

func TestParseVariants(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		check func(*Config) bool
	}{
		{"infinity literal", `,"time_step_limit":[0.0, Infinity], "x": "Infinity in a string"`, func(c *Config) bool { return c.Hidden == 64 }},
		{"dense model", `,"num_local_experts":0,"num_experts_per_tok":0`, func(c *Config) bool { return !c.IsMoE() }},
		{"layers_block_type alias", `,"layer_types":null,"layers_block_type":["attention","attention"]`, func(c *Config) bool { return c.NumLayers(Attention) == 2 }},
		{"rope", `,"position_embedding_type":"rope","rope_theta":1e7`, func(c *Config) bool { return c.UseRope() && c.RopeTheta == 1e7 }},
		{"mamba_d_head auto", `,"mamba_d_head":"auto"`, func(c *Config) bool { return c.MambaHeadDim == 16 }},
		{"eos list", `,"eos_token_id":[7,8]`, func(c *Config) bool { return c.EOS == 7 }},
		{"kv heads default", `,"num_key_value_heads":null`, func(c *Config) bool { return c.KVHeads == 4 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(strings.Replace(base, "%s", tc.extra, 1)))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config: %+v", c)
			}
		})
	}
	// No layer_types at all: every layer is mamba.
	c, err := Parse([]byte(strings.Replace(strings.Replace(base, `"layer_types":["mamba","attention"],`, "", 1), "%s", "", 1)))
	if err != nil || c.NumLayers(Mamba) != 2 {
		t.Fatalf("missing layer_types: %v %v", err, c)
	}
}

func TestParseRejects(t *testing.T) {
	cases := []struct{ extra, key string }{
		{`,"model_type":"llama"`, "model_type"},
		{`,"layer_types":["mamba","conv"]`, "layer_types"},
		{`,"layer_types":["mamba"]`, "layer_types"},
		{`,"hidden_size":0`, "hidden_size"},
		{`,"num_key_value_heads":3`, "num_key_value_heads"},
		{`,"mamba_d_head":10`, "mamba_d_head"},
		{`,"num_experts_per_tok":9`, "num_experts_per_tok"},
		{`,"rms_norm_eps":0`, "rms_norm_eps"},
		{`,"hidden_act":"gelu"`, "hidden_act"},
		{`,"hidden_size":"big"`, "hidden_size"},
		{`,"mamba_n_groups":3`, "mamba_n_groups"},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			_, err := Parse([]byte(strings.Replace(base, "%s", tc.extra, 1)))
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want ErrInvalid naming %q", err, tc.key)
			}
		})
	}
	if _, err := Parse([]byte(`{"model_type":`)); err == nil {
		t.Fatal("truncated JSON accepted")
	}
}
