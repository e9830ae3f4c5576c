package tokenizer

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// readGGUFMetadata is a minimal GGUF (v2/v3) metadata reader for tests: it
// returns the key/value pairs, with arrays as []any.
func readGGUFMetadata(path string) (map[string]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var hdr struct {
		Magic   [4]byte
		Version uint32
		Tensors uint64
		KVs     uint64
	}
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, err
	}
	if string(hdr.Magic[:]) != "GGUF" || hdr.Version < 2 {
		return nil, fmt.Errorf("not a GGUF v2+ file")
	}
	readStr := func() (string, error) {
		var n uint64
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			return "", err
		}
		if n > 1<<30 {
			return "", fmt.Errorf("string of %d bytes", n)
		}
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return string(b), err
	}
	var readVal func(typ uint32) (any, error)
	readVal = func(typ uint32) (any, error) {
		num := func(v any) (any, error) { err := binary.Read(r, binary.LittleEndian, v); return v, err }
		switch typ {
		case 0:
			return num(new(uint8))
		case 1:
			return num(new(int8))
		case 2:
			return num(new(uint16))
		case 3:
			return num(new(int16))
		case 4:
			return num(new(uint32))
		case 5:
			return num(new(int32))
		case 6:
			return num(new(float32))
		case 7:
			return num(new(bool))
		case 8:
			return readStr()
		case 9:
			var et uint32
			var n uint64
			if err := binary.Read(r, binary.LittleEndian, &et); err != nil {
				return nil, err
			}
			if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
				return nil, err
			}
			if n > 1<<26 {
				return nil, fmt.Errorf("array of %d items", n)
			}
			out := make([]any, n)
			for i := range out {
				v, err := readVal(et)
				if err != nil {
					return nil, err
				}
				out[i] = v
			}
			return out, nil
		case 10:
			return num(new(uint64))
		case 11:
			return num(new(int64))
		case 12:
			return num(new(float64))
		}
		return nil, fmt.Errorf("unknown GGUF value type %d", typ)
	}
	kv := make(map[string]any, hdr.KVs)
	for i := uint64(0); i < hdr.KVs; i++ {
		k, err := readStr()
		if err != nil {
			return nil, err
		}
		var typ uint32
		if err := binary.Read(r, binary.LittleEndian, &typ); err != nil {
			return nil, err
		}
		v, err := readVal(typ)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", k, err)
		}
		kv[k] = v
	}
	return kv, nil
}

func ggufInt(v any) int {
	switch x := v.(type) {
	case *uint32:
		return int(*x)
	case *int32:
		return int(*x)
	case *uint64:
		return int(*x)
	case *int64:
		return int(*x)
	}
	return -1
}

// The fixture's GGUF tokenizer arrays, through FromVocab, must reproduce
// llama.cpp's golden tokenization and agree with the HF files.
func TestGGUFFixtureVocab(t *testing.T) {
	dir := tinyFixtureDir(t)
	kv, err := readGGUFMetadata(filepath.Join(dir, "model.gguf"))
	if err != nil {
		t.Skipf("model.gguf: %v", err)
	}
	var v Vocab
	for _, x := range kv["tokenizer.ggml.tokens"].([]any) {
		v.Tokens = append(v.Tokens, x.(string))
	}
	for _, x := range kv["tokenizer.ggml.token_type"].([]any) {
		v.Types = append(v.Types, int32(ggufInt(x)))
	}
	for _, x := range kv["tokenizer.ggml.merges"].([]any) {
		v.Merges = append(v.Merges, x.(string))
	}
	v.Pre, _ = kv["tokenizer.ggml.pre"].(string)
	v.BOS, v.EOS, v.PAD = -1, -1, -1
	if x, ok := kv["tokenizer.ggml.bos_token_id"]; ok {
		v.BOS = ggufInt(x)
	}
	if x, ok := kv["tokenizer.ggml.eos_token_id"]; ok {
		v.EOS = ggufInt(x)
	}
	if x, ok := kv["tokenizer.ggml.padding_token_id"]; ok {
		v.PAD = ggufInt(x)
	}
	if x, ok := kv["tokenizer.ggml.add_bos_token"].(*bool); ok {
		v.AddBOS = *x
	}
	v.ChatTemplate, _ = kv["tokenizer.chat_template"].(string)

	tok, err := FromVocab(v)
	if err != nil {
		t.Fatalf("FromVocab: %v", err)
	}
	hf, cases := loadGolden(t, dir)
	if tok.VocabSize() != hf.VocabSize() || tok.BOS() != hf.BOS() || tok.EOS() != hf.EOS() || tok.PAD() != hf.PAD() || tok.AddsBOS() != hf.AddsBOS() {
		t.Errorf("GGUF vs HF: vocab %d/%d BOS %d/%d EOS %d/%d PAD %d/%d", tok.VocabSize(), hf.VocabSize(),
			tok.BOS(), hf.BOS(), tok.EOS(), hf.EOS(), tok.PAD(), hf.PAD())
	}
	for id := 0; id < tok.VocabSize(); id++ {
		if string(tok.tokenBytes(id)) != string(hf.tokenBytes(id)) || tok.IsSpecial(id) != hf.IsSpecial(id) {
			t.Fatalf("token %d: GGUF %q special=%v, HF %q special=%v", id, tok.tokenBytes(id), tok.IsSpecial(id), hf.tokenBytes(id), hf.IsSpecial(id))
		}
	}
	for _, c := range cases {
		if got := tok.Encode(c.text, true); !slices.Equal(got, c.ids) {
			t.Errorf("%s: Encode(%q)\n got %v\nwant %v", c.name, c.text, got, c.ids)
		}
	}
	if got, err := tok.ApplyChat([]Message{{"user", "hi"}}, true); err != nil || got != "<|start_of_role|>user<|end_of_role|>hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>" {
		t.Errorf("ApplyChat via GGUF template: %q, %v", got, err)
	}
}
