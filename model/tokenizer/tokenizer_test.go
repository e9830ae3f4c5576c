package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func fixtureTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	tok, err := LoadHF(filepath.Join(tinyFixtureDir(t), "hf"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tinyHF builds a tokenizer.json with the 256 byte tokens, extra normal
// tokens (byte-level form), merges and added tokens.
func tinyHF(t testing.TB, extra []string, merges any, added []hfAddedToken, preTokenizer string, ignoreMerges bool) []byte {
	t.Helper()
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[byteToStr[b]] = b
	}
	for i, s := range extra {
		vocab[s] = 256 + i
	}
	if preTokenizer == "" {
		preTokenizer = `{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}`
	}
	doc := map[string]any{
		"added_tokens":  added,
		"normalizer":    nil,
		"pre_tokenizer": json.RawMessage(preTokenizer),
		"model": map[string]any{
			"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": ignoreMerges,
		},
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustHF(t testing.TB, tj []byte, cfg string) *Tokenizer {
	t.Helper()
	var c []byte
	if cfg != "" {
		c = []byte(cfg)
	}
	tok, err := FromHFJSON(tj, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestParseSpecial(t *testing.T) {
	tok := fixtureTokenizer(t)
	eot, ok := tok.TokenID("<|end_of_text|>")
	if !ok || eot != 456 {
		t.Fatalf("TokenID(<|end_of_text|>) = %d, %v", eot, ok)
	}
	tests := []struct {
		text         string
		parseSpecial bool
		wantEOT      int // occurrences of id 456
	}{
		{"<|end_of_text|>", true, 1},
		{"<|end_of_text|>", false, 0},
		{"Hi<|end_of_text|>there<|end_of_text|>", true, 2},
		{"Hi<|end_of_text|>there<|end_of_text|>", false, 0},
		{"<|end_of_text", true, 0},
		{"<<|end_of_text|>>", true, 1},
	}
	for _, tc := range tests {
		ids := tok.Encode(tc.text, tc.parseSpecial)
		n := 0
		for _, id := range ids {
			if id == eot {
				n++
			}
			if !tc.parseSpecial && tok.IsSpecial(id) {
				t.Errorf("Encode(%q, false) produced special id %d", tc.text, id)
			}
		}
		if n != tc.wantEOT {
			t.Errorf("Encode(%q, %v) = %v: %d <|end_of_text|>, want %d", tc.text, tc.parseSpecial, ids, n, tc.wantEOT)
		}
		if got := tok.Decode(ids); got != tc.text {
			t.Errorf("Decode(Encode(%q, %v)) = %q", tc.text, tc.parseSpecial, got)
		}
	}
	if got, want := tok.Encode("<|end_of_text|>", true), []int{456}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// As plain text the special token is spelled with byte-level tokens.
	if got := tok.Encode("<|end_of_text|>", false); len(got) < 3 {
		t.Errorf("Encode(<|end_of_text|>, false) = %v", got)
	}
}

func TestFixtureAccessors(t *testing.T) {
	tok := fixtureTokenizer(t)
	if tok.VocabSize() != 464 {
		t.Errorf("VocabSize = %d, want 464", tok.VocabSize())
	}
	if tok.BOS() != 456 || tok.EOS() != 456 || tok.PAD() != 457 {
		t.Errorf("BOS/EOS/PAD = %d/%d/%d, want 456/456/457", tok.BOS(), tok.EOS(), tok.PAD())
	}
	if tok.AddsBOS() {
		t.Error("AddsBOS = true, want false")
	}
	if tok.Pre() != "gpt-2" {
		t.Errorf("Pre = %q, want gpt-2", tok.Pre())
	}
	if !strings.Contains(tok.ChatTemplate(), "<|start_of_role|>") {
		t.Errorf("ChatTemplate = %q", tok.ChatTemplate())
	}
	specials := tok.SpecialTokens()
	if len(specials) != 8 || specials[0].ID != 456 || specials[0].Content != "<|end_of_text|>" || specials[7].ID != 463 {
		t.Errorf("SpecialTokens = %+v", specials)
	}
	if len(tok.AddedTokens()) != 8 {
		t.Errorf("AddedTokens = %+v", tok.AddedTokens())
	}
	for id := 0; id < 464; id++ {
		if want := id >= 456; tok.IsSpecial(id) != want || tok.IsAdded(id) != want {
			t.Errorf("IsSpecial/IsAdded(%d) = %v/%v, want %v", id, tok.IsSpecial(id), tok.IsAdded(id), want)
		}
	}
	if tok.IsSpecial(-1) || tok.IsSpecial(464) {
		t.Error("IsSpecial true out of range")
	}
	if id, ok := tok.TokenID("Ġthe"); !ok || id != 258 {
		t.Errorf("TokenID(Ġthe) = %d, %v; want 258", id, ok)
	}
	if _, ok := tok.TokenID("no such token"); ok {
		t.Error("TokenID found a missing token")
	}
	if tok.TokenString(258) != "Ġthe" || tok.TokenString(457) != "<|pad|>" || tok.TokenString(999) != "" {
		t.Errorf("TokenString: %q %q %q", tok.TokenString(258), tok.TokenString(457), tok.TokenString(999))
	}
	for _, tc := range []struct {
		id   int
		want []byte
	}{
		{258, []byte(" the")}, {32, []byte(" ")}, {10, []byte("\n")}, {0, []byte{0}}, {255, []byte{255}},
		{456, []byte("<|end_of_text|>")}, {-1, nil}, {464, nil},
	} {
		got := tok.TokenBytes(tc.id)
		if !bytes.Equal(got, tc.want) || (tc.want == nil) != (got == nil) {
			t.Errorf("TokenBytes(%d) = %q, want %q", tc.id, got, tc.want)
		}
	}
	// TokenBytes returns a copy.
	b := tok.TokenBytes(258)
	b[0] = 'X'
	if string(tok.TokenBytes(258)) != " the" {
		t.Error("TokenBytes exposes internal storage")
	}
}

func TestDecodeInvalidIDs(t *testing.T) {
	tok := fixtureTokenizer(t)
	ids := []int{289, -5, 420, 464, 1 << 40, 456}
	if got, want := tok.Decode(ids), "The keeper<|end_of_text|>"; got != want {
		t.Errorf("Decode = %q, want %q", got, want)
	}
	for _, bad := range [][]int{{-1}, {464}, {289, 100000}} {
		_, err := tok.DecodeChecked(bad)
		if !errors.Is(err, ErrTokenID) || !strings.HasPrefix(err.Error(), "tokenizer: ") {
			t.Errorf("DecodeChecked(%v) error = %v, want ErrTokenID", bad, err)
		}
	}
	if s, err := tok.DecodeChecked(nil); s != "" || err != nil {
		t.Errorf("DecodeChecked(nil) = %q, %v", s, err)
	}
}

func TestLoadHFFileAndDir(t *testing.T) {
	dir := filepath.Join(tinyFixtureDir(t), "hf")
	byDir, err := LoadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	byFile, err := LoadHF(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if byFile.EOS() != byDir.EOS() || byFile.ChatTemplate() != byDir.ChatTemplate() || byFile.VocabSize() != byDir.VocabSize() {
		t.Error("loading the file and the directory differ")
	}
	// tokenizer.json alone: no config, so no BOS/EOS.
	tmp := t.TempDir()
	data, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "tokenizer.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	alone, err := LoadHF(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if alone.EOS() != -1 || alone.BOS() != -1 || alone.ChatTemplate() != "" {
		t.Errorf("without config: BOS %d EOS %d template %q", alone.BOS(), alone.EOS(), alone.ChatTemplate())
	}
	// chat_template.jinja and special_tokens_map.json are picked up.
	if err := os.WriteFile(filepath.Join(tmp, "chat_template.jinja"), []byte("{{ '<|start_of_role|>' }}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "special_tokens_map.json"), []byte(`{"eos_token": {"content": "<|end_of_text|>"}, "pad_token": "<|pad|>"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	withExtra, err := LoadHF(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if withExtra.EOS() != 456 || withExtra.PAD() != 457 || withExtra.ChatTemplate() != "{{ '<|start_of_role|>' }}" {
		t.Errorf("EOS %d PAD %d template %q", withExtra.EOS(), withExtra.PAD(), withExtra.ChatTemplate())
	}
}

func TestLoadErrors(t *testing.T) {
	good := tinyHF(t, nil, []string{}, nil, "", false)
	tests := []struct {
		name string
		tj   []byte
		cfg  string
	}{
		{"bad json", []byte("{"), ""},
		{"wordpiece", []byte(`{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "WordPiece", "vocab": {"a": 0}}}`), ""},
		{"no vocab", []byte(`{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE"}}`), ""},
		{"no pre-tokenizer", tinyHF(t, nil, []string{}, nil, "null", false), ""},
		{"no byte level", tinyHF(t, nil, []string{}, nil, `{"type": "Split", "pattern": {"String": " "}}`, false), ""},
		{"unknown pre-tokenizer", tinyHF(t, nil, []string{}, nil, `{"type": "Metaspace"}`, false), ""},
		{"bad split regex", tinyHF(t, nil, []string{}, nil, `{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "("}}, {"type": "ByteLevel"}]}`, false), ""},
		{"bad behavior", tinyHF(t, nil, []string{}, nil, `{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"String": "x"}, "behavior": "Up"}, {"type": "ByteLevel"}]}`, false), ""},
		{"normalizer", []byte(strings.Replace(string(good), `"normalizer":null`, `"normalizer":{"type":"NFKC"}`, 1)), ""},
		{"bad merge", tinyHF(t, nil, []string{"nospace"}, nil, "", false), ""},
		{"bad merge pair", tinyHF(t, nil, [][]string{{"a"}}, nil, "", false), ""},
		{"negative id", tinyHF(t, nil, []string{}, []hfAddedToken{{ID: -1, Content: "<x>"}}, "", false), ""},
		{"huge id", tinyHF(t, nil, []string{}, []hfAddedToken{{ID: 1 << 30, Content: "<x>"}}, "", false), ""},
		{"empty added", tinyHF(t, nil, []string{}, []hfAddedToken{{ID: 300, Content: ""}}, "", false), ""},
		{"eos missing", good, `{"eos_token": "<|nope|>"}`},
		{"bad config", good, `{`},
		{"bad template", good, `{"chat_template": 5}`},
	}
	for _, tc := range tests {
		var cfg []byte
		if tc.cfg != "" {
			cfg = []byte(tc.cfg)
		}
		_, err := FromHFJSON(tc.tj, cfg)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "tokenizer: ") {
			t.Errorf("%s: error %q lacks the package prefix", tc.name, err)
		}
	}
	if _, err := FromHFJSON(good, nil); err != nil {
		t.Errorf("good tokenizer: %v", err)
	}
	if _, err := LoadHF(filepath.Join(t.TempDir(), "missing")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadHF(missing) = %v", err)
	}
}

func TestFromVocab(t *testing.T) {
	base := func() Vocab {
		v := Vocab{Pre: "gpt-2", BOS: -1, EOS: -1, PAD: -1}
		for b := 0; b < 256; b++ {
			v.Tokens = append(v.Tokens, byteToStr[b])
			v.Types = append(v.Types, TypeNormal)
		}
		add := func(s string, typ int32) {
			v.Tokens = append(v.Tokens, s)
			v.Types = append(v.Types, typ)
		}
		add("Ġt", TypeNormal)          // 256
		add("he", TypeNormal)          // 257
		add("Ġthe", TypeNormal)        // 258
		add("<|eot|>", TypeControl)    // 259
		add("<user>", TypeUserDefined) // 260
		add("<|unk|>", TypeUnknown)    // 261
		add("[PAD262]", TypeUnused)    // 262
		v.Merges = []string{"Ġ t", "h e", "Ġt he"}
		v.EOS = 259
		return v
	}
	tok, err := FromVocab(base())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Encode(" the<|eot|><user>", true), []int{258, 259, 260}; !reflect.DeepEqual(got, want) {
		t.Errorf("parseSpecial: got %v, want %v", got, want)
	}
	// User-defined tokens are matched even without parseSpecial.
	got := tok.Encode(" the<|eot|><user>", false)
	if got[0] != 258 || got[len(got)-1] != 260 || len(got) < 4 {
		t.Errorf("plain: got %v", got)
	}
	if !tok.IsSpecial(259) || !tok.IsSpecial(261) || tok.IsSpecial(260) || !tok.IsAdded(260) {
		t.Error("token types not mapped to special/added")
	}
	if tok.EOS() != 259 || tok.VocabSize() != 263 {
		t.Errorf("EOS %d VocabSize %d", tok.EOS(), tok.VocabSize())
	}

	bad := []struct {
		name string
		edit func(v *Vocab)
	}{
		{"unknown pre", func(v *Vocab) { v.Pre = "mystery" }},
		{"empty pre", func(v *Vocab) { v.Pre = "" }},
		{"empty", func(v *Vocab) { v.Tokens, v.Types = nil, nil }},
		{"types mismatch", func(v *Vocab) { v.Types = v.Types[:3] }},
		{"bad merge", func(v *Vocab) { v.Merges = append(v.Merges, "abc") }},
		{"bos out of range", func(v *Vocab) { v.BOS = 10000 }},
		{"eos out of range", func(v *Vocab) { v.EOS = 263 }},
	}
	for _, tc := range bad {
		v := base()
		tc.edit(&v)
		_, err := FromVocab(v)
		if err == nil || !strings.HasPrefix(err.Error(), "tokenizer: ") {
			t.Errorf("%s: error = %v", tc.name, err)
		}
	}
	// Merges referring to unknown tokens are skipped, not fatal.
	v := base()
	v.Merges = append(v.Merges, "x yz", "Ġthe Ġthe")
	if _, err := FromVocab(v); err != nil {
		t.Errorf("unknown merge parts: %v", err)
	}
	for _, pre := range []string{"dbrx", "llama3", "llama-bpe", "gpt-2"} {
		v := base()
		v.Pre = pre
		tok, err := FromVocab(v)
		if err != nil {
			t.Fatalf("pre %q: %v", pre, err)
		}
		if tok.Pre() != pre {
			t.Errorf("Pre() = %q, want %q", tok.Pre(), pre)
		}
	}
}

func TestMergeFormatsAndIgnoreMerges(t *testing.T) {
	extra := []string{"bc", "abc", "ab"}
	asStrings := mustHF(t, tinyHF(t, extra, []string{"b c", "a b"}, nil, "", false), "")
	asPairs := mustHF(t, tinyHF(t, extra, [][]string{{"b", "c"}, {"a", "b"}}, nil, "", false), "")
	ignore := mustHF(t, tinyHF(t, extra, []string{"b c", "a b"}, nil, "", true), "")
	// Rank order: "b c" first, so "abc" -> a + bc; "abc" itself is reachable
	// only through ignore_merges.
	want := []int{'a', 256}
	for name, tok := range map[string]*Tokenizer{"strings": asStrings, "pairs": asPairs} {
		if got := tok.Encode("abc", false); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Encode(abc) = %v, want %v", name, got, want)
		}
	}
	if got := ignore.Encode("abc", false); !reflect.DeepEqual(got, []int{257}) {
		t.Errorf("ignore_merges: Encode(abc) = %v, want [257]", got)
	}
	if got := ignore.Encode("abcab", false); !reflect.DeepEqual(got, []int{'a', 256, 258}) {
		t.Errorf("ignore_merges: Encode(abcab) = %v", got)
	}
	// Leftmost first among equal ranks: "aaa" with merge "a a" -> aa + a.
	aa := mustHF(t, tinyHF(t, []string{"aa"}, []string{"a a"}, nil, "", false), "")
	if got := aa.Encode("aaaaa", false); !reflect.DeepEqual(got, []int{256, 256, 'a'}) {
		t.Errorf("Encode(aaaaa) = %v", got)
	}
}

func TestAddedTokenOptions(t *testing.T) {
	added := []hfAddedToken{
		{ID: 300, Content: "<l>", LStrip: true, Special: true},
		{ID: 301, Content: "<r>", RStrip: true, Special: true},
		{ID: 302, Content: "word", SingleWord: true},
		{ID: 303, Content: "<long>", Special: true},
		{ID: 304, Content: "<long>>", Special: true},
	}
	tok := mustHF(t, tinyHF(t, nil, []string{}, added, "", false), `{"add_bos_token": true, "bos_token": "<long>"}`)
	tests := []struct {
		text string
		want []int
	}{
		{"x  <l>", []int{303, 'x', 300}},
		{"<r> \t y", []int{303, 301, 'y'}},
		{"a word b", []int{303, 'a', ' ', 302, ' ', 'b'}},
		{"swordfish", []int{303, 's', 'w', 'o', 'r', 'd', 'f', 'i', 's', 'h'}},
		{"<long>>", []int{303, 304}},
		{"<long>", []int{303, 303}},
	}
	for _, tc := range tests {
		got := tok.Encode(tc.text, true)
		// Byte tokens in the GPT-2 regex split: compare by decoded text
		// where pieces are single bytes.
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
	if !tok.AddsBOS() {
		t.Error("add_bos_token not honoured")
	}
}

func TestPrefixSpace(t *testing.T) {
	tok := mustHF(t, tinyHF(t, []string{"Ġh"}, []string{"Ġ h"}, nil,
		`{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}`, false), "")
	if got := tok.Encode("hi", false); !reflect.DeepEqual(got, []int{256, 'i'}) {
		t.Errorf("Encode(hi) = %v, want [256 105]", got)
	}
	if got := tok.Encode(" hi", false); !reflect.DeepEqual(got, []int{256, 'i'}) {
		t.Errorf("Encode( hi) = %v, want [256 105]", got)
	}
}

// The real Granite 4.0 layout (Sequence of Split + ByteLevel without regex)
// must match the GGUF "dbrx" path.
func TestGraniteSequencePreTokenizer(t *testing.T) {
	split := `{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": ` +
		mustJSON(t, RegexCL100K) + `}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}`
	tok := mustHF(t, tinyHF(t, []string{"Ġt", "he", "Ġthe", "12", "123"}, []string{"Ġ t", "h e", "Ġt he", "1 2", "12 3"}, nil, split, false), "")
	if tok.Pre() != "dbrx" {
		t.Errorf("Pre = %q, want dbrx", tok.Pre())
	}
	gguf, err := FromVocab(tok.Vocab())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(preTokenizeSamples, "the 1234567 THE'S the") {
		a, b := tok.Encode(s, true), gguf.Encode(s, true)
		if !strings.Contains(s, "ſ") && !reflect.DeepEqual(a, b) {
			t.Errorf("%q: HF %v, GGUF %v", s, a, b)
		}
		if tok.Decode(a) != s {
			t.Errorf("round trip of %q: %q", s, tok.Decode(a))
		}
	}
	if got := tok.Encode("12123", false); !reflect.DeepEqual(got, []int{259, '1', '2', '3'}) {
		t.Errorf("digits split in threes: %v", got)
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConcurrentEncode(t *testing.T) {
	tok := fixtureTokenizer(t)
	texts := append([]string{synthCorpus}, preTokenizeSamples...)
	want := make([][]int, len(texts))
	for i, s := range texts {
		want[i] = tok.Encode(s, true)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for rep := 0; rep < 20; rep++ {
				for i := range texts {
					k := (i + g + rep) % len(texts)
					if got := tok.Encode(texts[k], true); !reflect.DeepEqual(got, want[k]) {
						select {
						case errs <- texts[k]:
						default:
						}
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("concurrent Encode(%q) differs", s)
	}
}

func TestLongInputs(t *testing.T) {
	tok := fixtureTokenizer(t)
	for _, s := range []string{
		strings.Repeat("a", 100000), strings.Repeat(" ", 50000) + "x", strings.Repeat("1", 70001),
		strings.Repeat("ab", 40000), strings.Repeat("\xff", 1000), strings.Repeat("the ", 20000),
	} {
		ids := tok.Encode(s, true)
		if got := tok.Decode(ids); got != s {
			t.Errorf("round trip of %d-byte input failed", len(s))
		}
	}
}

func FuzzEncode(f *testing.F) {
	tok := fixtureTokenizer(f)
	for _, s := range preTokenizeSamples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, ps := range []bool{false, true} {
			ids := tok.Encode(s, ps)
			if got := tok.Decode(ids); got != s {
				t.Fatalf("Decode(Encode(%q, %v)) = %q", s, ps, got)
			}
		}
	})
}
