package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixture(t *testing.T) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny")
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("shared fixture missing: %v", err)
	}
	return d
}

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// The model tools through the real command-line entry point (table-driven).
func TestCommands(t *testing.T) {
	fx := fixture(t)
	hf, gg := filepath.Join(fx, "hf"), filepath.Join(fx, "model.gguf")
	out := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		want string // substring of stdout (or stderr when code != 0)
	}{
		{"tokenize hf", []string{"tokenize", "--model", hf, "--text", "Hello world"}, 0, "299 304 111 260 280 303"},
		{"tokenize gguf", []string{"tokenize", "--model", gg, "--text", "Hello world"}, 0, "299 304 111 260 280 303"},
		{"tokenize special", []string{"tokenize", "--model", hf, "--text", "<|end_of_text|>"}, 0, "456"},
		{"tokenize special as text", []string{"tokenize", "--model", hf, "--text", "<|end_of_text|>", "--special=false"}, 0, " "},
		{"detokenize", []string{"detokenize", "--model", hf, "--ids", "299 304 111 260 280 303"}, 0, "Hello world"},
		{"detokenize bad id", []string{"detokenize", "--model", hf, "--ids", "99999"}, 1, "99999"},
		{"generate greedy ids", []string{"generate", "--model", hf, "--prompt", "A", "--greedy", "--max-tokens", "4", "--print-ids", "--ignore-eos"}, 0, "402 426 200 117"},
		{"generate gguf ids", []string{"generate", "--model", gg, "--prompt", "A", "--greedy", "--max-tokens", "4", "--print-ids", "--ignore-eos"}, 0, "402 426 200 117"},
		{"generate chat", []string{"generate", "--model", hf, "--prompt", "hi", "--chat", "--max-tokens", "3", "--seed", "5"}, 0, ""},
		{"generate no model", []string{"generate", "--prompt", "x"}, 1, "--model"},
		{"generate bad temperature", []string{"generate", "--model", hf, "--prompt", "x", "--temperature", "-1"}, 1, "temperature"},
		{"synth", []string{"synth", "--preset", "tiny", "--out", filepath.Join(out, "m")}, 0, "6 layers"},
		{"synth bad preset", []string{"synth", "--preset", "huge", "--out", filepath.Join(out, "x")}, 1, "unknown preset"},
		{"convert", []string{"convert", "--model", hf, "--type", "q8_0", "--out", filepath.Join(out, "q.gguf")}, 0, "wrote"},
		{"generate converted q8_0", []string{"generate", "--model", filepath.Join(out, "q.gguf"), "--prompt", "A", "--greedy", "--max-tokens", "2", "--print-ids"}, 0, ""},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"bad flag", []string{"tokenize", "--nope"}, 2, "flag provided but not defined"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			text := stdout
			if code != 0 {
				text = stderr
			}
			if !strings.Contains(text, tc.want) {
				t.Fatalf("output %q does not contain %q", text, tc.want)
			}
		})
	}
}
