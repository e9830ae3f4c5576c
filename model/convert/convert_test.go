package convert

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

func fixture(t *testing.T) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny")
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("shared fixture missing: %v", err)
	}
	return d
}

// Converting the fixture's HF folder to F32 reproduces the fixture's GGUF (written
// by llama.cpp's converter) tensor for tensor, byte for byte, with the same
// architecture metadata.
func TestConvertMatchesReferenceGGUF(t *testing.T) {
	dir := fixture(t)
	outPath := filepath.Join(t.TempDir(), "out.gguf")
	if err := HFToGGUF(filepath.Join(dir, "hf"), outPath, Options{Type: tensor.F32}); err != nil {
		t.Fatal(err)
	}
	got, err := gguf.Open(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	ref, err := gguf.Open(filepath.Join(dir, "model.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if len(got.Tensors()) != len(ref.Tensors()) {
		t.Errorf("%d tensors, reference has %d", len(got.Tensors()), len(ref.Tensors()))
	}
	for _, ti := range ref.Tensors() {
		rdt, rshape, rdata, err := ref.Tensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		gdt, gshape, gdata, err := got.Tensor(ti.Name)
		if err != nil {
			t.Errorf("%s: %v", ti.Name, err)
			continue
		}
		if strings.HasSuffix(ti.Name, "ssm_a") && rdt == gdt && len(rdata) == len(gdata) {
			// A = -exp(A_log): the reference used float32 exp, we round float64 exp;
			// they may differ in the last bit.
			r, g := make([]float32, len(rdata)/4), make([]float32, len(gdata)/4)
			tensor.DequantizeRow(tensor.F32, rdata, r)
			tensor.DequantizeRow(tensor.F32, gdata, g)
			for i := range r {
				if math.Abs(float64(r[i]-g[i])) > 1e-6*math.Abs(float64(r[i])) {
					t.Errorf("%s[%d] = %v, reference %v", ti.Name, i, g[i], r[i])
				}
			}
			continue
		}
		if rdt != gdt || !slices.Equal(rshape, gshape) || !bytes.Equal(rdata, gdata) {
			t.Errorf("%s: got %s %v (%d bytes), reference %s %v (%d bytes), equal data %v", ti.Name, gdt, gshape, len(gdata), rdt, rshape, len(rdata), bytes.Equal(rdata, gdata))
		}
	}
	for _, key := range ref.Keys() {
		if key == "general.name" || key == "general.type" || key == "general.file_type" || key == "general.quantization_version" {
			continue
		}
		if _, ok := got.Value(key); !ok {
			t.Errorf("metadata key %s missing", key)
		}
	}
	for _, key := range []string{"granitehybrid.block_count", "granitehybrid.ssm.time_step_rank", "granitehybrid.expert_count", "granitehybrid.context_length"} {
		a, _ := got.Uint(key)
		b, _ := ref.Uint(key)
		if a != b {
			t.Errorf("%s = %d, reference %d", key, a, b)
		}
	}
	for _, key := range []string{"granitehybrid.attention.scale", "granitehybrid.logit_scale", "granitehybrid.embedding_scale", "granitehybrid.residual_scale"} {
		a, _ := got.Float(key)
		b, _ := ref.Float(key)
		if a != b {
			t.Errorf("%s = %v, reference %v", key, a, b)
		}
	}
	gt, _ := got.Strings("tokenizer.ggml.tokens")
	rt, _ := ref.Strings("tokenizer.ggml.tokens")
	if !slices.Equal(gt, rt) {
		t.Errorf("tokens differ")
	}
	gm, _ := got.Strings("tokenizer.ggml.merges")
	rm, _ := ref.Strings("tokenizer.ggml.merges")
	if !slices.Equal(gm, rm) {
		t.Errorf("merges differ")
	}
}
