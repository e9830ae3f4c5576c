package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/switchyard-serving/switchyard/model/convert"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

func init() {
	register("convert", "convert a Hugging Face checkpoint to GGUF (f32, f16, bf16, q8_0, q4_k)", runConvert)
}

func runConvert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("convert", stderr)
	model := fs.String("model", "", "Hugging Face model folder (required)")
	typ := fs.String("type", "f16", "weight type: f32, f16, bf16, q8_0 or q4_k")
	out := fs.String("out", "", "output .gguf path (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *model == "" || *out == "" {
		return fmt.Errorf("--model and --out are required")
	}
	dt, ok := map[string]tensor.DType{"f32": tensor.F32, "f16": tensor.F16, "bf16": tensor.BF16, "q8_0": tensor.Q8_0, "q4_k": tensor.Q4_K}[strings.ToLower(*typ)]
	if !ok {
		return fmt.Errorf("--type %q: want f32, f16, bf16, q8_0 or q4_k", *typ)
	}
	if err := convert.HFToGGUF(*model, *out, convert.Options{Type: dt, Progress: stderr}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", *out)
	return nil
}
