package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/switchyard-serving/switchyard/model/synth"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

func init() {
	register("synth", "write a random-weight Granite 4.0-H checkpoint with real shapes", runSynth)
}

func parseDType(s string) (tensor.DType, error) {
	switch strings.ToLower(s) {
	case "bf16":
		return tensor.BF16, nil
	case "f16":
		return tensor.F16, nil
	case "f32":
		return tensor.F32, nil
	}
	return 0, fmt.Errorf("--dtype %q: want bf16, f16 or f32", s)
}

func runSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("synth", stderr)
	preset := fs.String("preset", "tiny", "model shape: "+strings.Join(synth.Presets(), ", "))
	layers := fs.Int("layers", 0, "number of layers (0 = the preset's; attention where layer % 10 == 5)")
	vocab := fs.Int("vocab", 0, "vocabulary size (0 = the preset's)")
	dtype := fs.String("dtype", "bf16", "weight type: bf16, f16 or f32")
	seed := fs.Uint64("seed", 1, "random seed")
	out := fs.String("out", "", "output folder (required)")
	allAttn := fs.Bool("all-attention", false, "write the all-attention twin (same widths, every layer attention)")
	experts := fs.Int("experts", 0, "routed experts per layer (0 = the preset's)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("--out is required")
	}
	dt, err := parseDType(*dtype)
	if err != nil {
		return err
	}
	cfg, err := synth.Write(*out, synth.Options{Preset: *preset, Layers: *layers, Vocab: *vocab, DType: dt, Seed: *seed,
		AllAttention: *allAttn, Experts: *experts, Progress: stderr})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %s\n", *out, cfg.Summary())
	return nil
}
