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
