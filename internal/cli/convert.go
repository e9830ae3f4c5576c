package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/switchyard-serving/switchyard/model/convert"
)

func init() {
	register("convert", "convert a Hugging Face checkpoint to GGUF (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, mxfp4, and llama.cpp's q4_k_m, q5_k_m and mxfp4_moe mixes)", runConvert)
}

func runConvert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("convert", stderr)
	model := fs.String("model", "", "Hugging Face model folder (required)")
	typ := fs.String("type", "f16", "weight type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, or a mix as llama-quantize makes it: q4_k_m, q5_k_m")
	out := fs.String("out", "", "output .gguf path (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *model == "" || *out == "" {
		return fmt.Errorf("--model and --out are required")
	}
	dt, mix, err := convert.ParseType(*typ)
	if err != nil {
		return fmt.Errorf("--type: %w", err)
	}
	if err := convert.HFToGGUF(*model, *out, convert.Options{Type: dt, Mix: mix, Progress: stderr}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", *out)
	return nil
}
