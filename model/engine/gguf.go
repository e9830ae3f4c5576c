package engine

import (
	"fmt"

	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

func openGGUF(path string) (*gguf.File, error) { return gguf.Open(path) }

// TokenizerFromGGUF builds the tokenizer from a GGUF file's tokenizer.ggml.* keys.
func TokenizerFromGGUF(f *gguf.File) (*tokenizer.Tokenizer, error) {
	if m, _ := f.String("tokenizer.ggml.model"); m != "gpt2" {
		return nil, fmt.Errorf("engine: tokenizer.ggml.model is %q; only byte-level BPE (\"gpt2\") is supported", m)
	}
	toks, ok := f.Strings("tokenizer.ggml.tokens")
	if !ok {
		return nil, fmt.Errorf("engine: GGUF has no tokenizer.ggml.tokens")
	}
	merges, _ := f.Strings("tokenizer.ggml.merges")
	types64, _ := f.Ints("tokenizer.ggml.token_type")
	types := make([]int32, len(types64))
	for i, v := range types64 {
		types[i] = int32(v)
	}
	pre, _ := f.String("tokenizer.ggml.pre")
	id := func(key string) int {
		if v, ok := f.Uint(key); ok {
			return int(v)
		}
		return -1
	}
	addBOS, _ := f.Bool("tokenizer.ggml.add_bos_token")
	tmpl, _ := f.String("tokenizer.chat_template")
	return tokenizer.FromVocab(tokenizer.Vocab{
		Tokens: toks, Types: types, Merges: merges, Pre: pre,
		BOS: id("tokenizer.ggml.bos_token_id"), EOS: id("tokenizer.ggml.eos_token_id"), PAD: id("tokenizer.ggml.padding_token_id"),
		AddBOS: addBOS, ChatTemplate: tmpl,
	})
}
