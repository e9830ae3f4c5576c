package trunknode

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// --kv-dtype takes each KV cache element type by its flag spelling and refuses
// others with the ones it takes.
func TestKVDTypeFlag(t *testing.T) {
	for _, c := range []struct {
		arg  string
		want tensor.DType
		err  string
	}{
		{"", hybrid.DefaultKVDType, ""},
		{"bf16", tensor.BF16, ""},
		{"f32", tensor.F32, ""},
		{"q8_0", tensor.Q8_0, ""},
		{"q4_0", 0, "want f32, bf16 or q8_0"},
	} {
		cfg := DefaultConfig()
		fs := flag.NewFlagSet("trunk", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.AddFlags(fs)
		var args []string
		if c.arg != "" {
			args = []string{"--kv-dtype", c.arg}
		}
		err := fs.Parse(args)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("--kv-dtype %s: %v, want an error with %q", c.arg, err, c.err)
		case c.err == "" && (err != nil || cfg.KVDType != c.want):
			t.Errorf("--kv-dtype %q: %v, %v; want %v", c.arg, cfg.KVDType, err, c.want)
		}
	}
}

// --state-pool-bytes defaults to hybrid's pool limit or an eighth of the
// default budgets, whichever is less, takes 0 (none),
// and a negative value fails validation.
func TestStatePoolFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int64
		err  string
	}{
		{nil, -1, ""}, // the default: min(256 MiB, an eighth of the default budgets)
		{[]string{"--state-pool-bytes", "0"}, 0, ""},
		{[]string{"--state-pool-bytes", "1073741824"}, 1 << 30, ""},
		{[]string{"--state-pool-bytes", "-1"}, 0, "--state-pool-bytes must be >= 0"},
	} {
		cfg := DefaultConfig()
		cfg.ModelPath, cfg.LocalExperts = "model.gguf", true
		if c.want < 0 { // the budgets this config was sized with
			c.want = min(hybrid.DefaultStatePoolLimit, (cfg.Memory.RecurrentBytes+cfg.Memory.KVBytes)/8)
		}
		fs := flag.NewFlagSet("trunk", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.AddFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		err := cfg.Validate()
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.err)
		case c.err == "" && (err != nil || cfg.Memory.StatePoolBytes != c.want):
			t.Errorf("%v: %d, %v; want %d", c.args, cfg.Memory.StatePoolBytes, err, c.want)
		}
	}
}
