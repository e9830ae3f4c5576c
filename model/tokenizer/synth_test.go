package tokenizer

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// benchText is unseen by the synthetic tokenizer's training: prose, code,
// numbers and non-Latin text, so the benchmark exercises real BPE work.
const benchText = `Serving systems batch requests from many users at once. Each request
arrives as text, is tokenized, runs through the model one step at a time and
is streamed back token by token; latency matters as much as throughput.

func (s *Server) handle(ctx context.Context, req *Request) error {
	ids := s.tok.Encode(req.Prompt, true)
	if len(ids) > s.maxContext {
		return fmt.Errorf("prompt too long: %d > %d tokens", len(ids), s.maxContext)
	}
	return s.sched.Submit(ctx, ids, req.Params)
}

Quarterly revenue rose 12.5% to $4,281 million (Q3 2025), while operating
costs fell by 3.1%; the board approved a dividend of 0.42 per share.
Les modèles de langue traitent aussi le français, l'espagnol y el alemán.
日本語のテキストも処理できます。Emoji too: 🚀✨👍 — and “curly quotes”.
`

const synthSample = "The keeper climbed the ninety-nine steps. She didn't stop; 2025 storms, 120 km/h!\n" +
	"Café ☕ 日本 🙂 \t tabs   and  spaces\r\n<b>tags</b> x+=1"

func loadSynth(t testing.TB, vocabSize int) *Tokenizer {
	t.Helper()
	tj, cfg, err := Synthesize(vocabSize)
	if err != nil {
		t.Fatalf("Synthesize(%d): %v", vocabSize, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := LoadHF(dir)
	if err != nil {
		t.Fatalf("LoadHF(Synthesize(%d)): %v", vocabSize, err)
	}
	return tok
}

func TestSynthesize(t *testing.T) {
	for _, n := range []int{264, 300, 464, 1000, 5000, GraniteVocabSize} {
		tok := loadSynth(t, n)
		if tok.VocabSize() != n {
			t.Errorf("%d: VocabSize = %d", n, tok.VocabSize())
		}
		for id := 0; id < n; id++ {
			if tok.TokenString(id) == "" {
				t.Fatalf("%d: id %d has no token", n, id)
			}
		}
		if tok.Pre() != "dbrx" || tok.AddsBOS() {
			t.Errorf("%d: Pre %q AddsBOS %v", n, tok.Pre(), tok.AddsBOS())
		}
		ids := tok.Encode(synthSample+"<|end_of_text|>", true)
		if got := tok.Decode(ids); got != synthSample+"<|end_of_text|>" {
			t.Errorf("%d: round trip = %q", n, got)
		}
		if ids[len(ids)-1] != tok.EOS() {
			t.Errorf("%d: <|end_of_text|> encoded as %d, EOS is %d", n, ids[len(ids)-1], tok.EOS())
		}
		for _, id := range ids {
			if id < 0 || id >= n {
				t.Errorf("%d: id %d out of range", n, id)
			}
		}
		if n >= 5000 {
			// Enough merges that common words are single tokens.
			if got := tok.Encode(" keeper", false); len(got) != 1 {
				t.Errorf("%d: Encode(\" keeper\") = %v", n, got)
			}
		}
		// The GGUF view of the synthesized tokenizer encodes the same.
		gguf, err := FromVocab(tok.Vocab())
		if err != nil {
			t.Fatal(err)
		}
		if got := gguf.Encode(synthSample, true); !reflect.DeepEqual(got, tok.Encode(synthSample, true)) {
			t.Errorf("%d: GGUF view encodes differently", n)
		}
	}
}

func TestSynthesizeSpecialIDs(t *testing.T) {
	small := loadSynth(t, 464)
	want464 := map[string]int{
		"<|end_of_text|>": 456, "<|pad|>": 457, "<|start_of_role|>": 458, "<|end_of_role|>": 459,
		"<|tool_call|>": 460, "<tool_response>": 461, "</tool_response>": 462, "<tool_call>": 463,
	}
	checkIDs(t, small, want464)
	if small.BOS() != 456 || small.EOS() != 456 || small.PAD() != 457 {
		t.Errorf("464: BOS/EOS/PAD = %d/%d/%d", small.BOS(), small.EOS(), small.PAD())
	}
	// Same special ids as the fixture for the tokens both have.
	fixture := fixtureTokenizer(t)
	for _, s := range []string{"<|end_of_text|>", "<|pad|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"} {
		a, _ := fixture.TokenID(s)
		if b, _ := small.TokenID(s); a != b {
			t.Errorf("%s: fixture %d, synthesized %d", s, a, b)
		}
	}

	granite := loadSynth(t, GraniteVocabSize)
	checkIDs(t, granite, map[string]int{
		"<|pad|>": 100256, "<|end_of_text|>": 100257, "<|fim_prefix|>": 100258, "<|fim_pad|>": 100261,
		"<|filename|>": 100262, "<|reponame|>": 100263, "<|start_of_role|>": 100264, "<|end_of_role|>": 100265,
		"<|unused_1|>": 100266, "<|start_of_plugin|>": 100267, "<|end_of_plugin|>": 100268, "<|unk|>": 100269,
		"<tool_call>": 100270, "</tool_call>": 100271, "<tool_response>": 100272, "</tool_response>": 100273,
		"<think>": 100274, "</think>": 100275, "<think_on>": 100276, "<think_off>": 100277,
		"<schema>": 100278, "</schema>": 100279, "<tools>": 100280, "</tools>": 100281,
		"<documents>": 100282, "</documents>": 100283, "<|tool_call|>": 100284,
	})
	if granite.BOS() != 100257 || granite.EOS() != 100257 || granite.PAD() != 100256 {
		t.Errorf("100352: BOS/EOS/PAD = %d/%d/%d", granite.BOS(), granite.EOS(), granite.PAD())
	}
	for id := 0; id < 100256; id++ {
		if granite.IsSpecial(id) {
			t.Fatalf("regular id %d is special", id)
		}
	}
}

func checkIDs(t *testing.T, tok *Tokenizer, want map[string]int) {
	t.Helper()
	for s, id := range want {
		got, ok := tok.TokenID(s)
		if !ok || got != id || !tok.IsSpecial(id) {
			t.Errorf("%s: id %d (found %v, special %v), want %d", s, got, ok, tok.IsSpecial(id), id)
		}
	}
}

func TestSynthesizeDeterministicAndFast(t *testing.T) {
	start := time.Now()
	a1, c1, err := Synthesize(GraniteVocabSize)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	t.Logf("Synthesize(%d): %v, tokenizer.json %d bytes", GraniteVocabSize, elapsed, len(a1))
	if elapsed > 2*time.Second && !raceEnabled {
		t.Errorf("Synthesize(%d) took %v, want < 2s", GraniteVocabSize, elapsed)
	}
	a2, c2, err := Synthesize(GraniteVocabSize)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a1, a2) || !bytes.Equal(c1, c2) {
		t.Error("Synthesize is not deterministic")
	}
	if !json.Valid(a1) || !json.Valid(c1) {
		t.Error("Synthesize produced invalid JSON")
	}
	for _, n := range []int{0, 263, -5, maxVocab + 1} {
		if _, _, err := Synthesize(n); err == nil {
			t.Errorf("Synthesize(%d) succeeded", n)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	tok := loadSynth(b, GraniteVocabSize)
	text := benchText + synthCorpus
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(text, true)
	}
}

func BenchmarkEncodeParallel(b *testing.B) {
	tok := loadSynth(b, GraniteVocabSize)
	text := benchText + synthCorpus
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tok.Encode(text, true)
		}
	})
}

// BenchmarkEncodeUncached measures BPE without the per-word cache.
func BenchmarkEncodeUncached(b *testing.B) {
	tok := loadSynth(b, GraniteVocabSize)
	tok.noCache = true
	text := benchText + synthCorpus
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(text, true)
	}
}
