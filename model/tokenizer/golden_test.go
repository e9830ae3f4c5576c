package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// goldenDirs lists fixture directories (each with hf/ and golden.json):
// $SWITCHYARD_GOLDEN_DIRS (colon-separated) or the shared tiny fixture.
func goldenDirs(t testing.TB) []string {
	t.Helper()
	if env := os.Getenv("SWITCHYARD_GOLDEN_DIRS"); env != "" {
		var dirs []string
		for _, d := range strings.Split(env, ":") {
			if d != "" {
				dirs = append(dirs, d)
			}
		}
		return dirs
	}
	return []string{tinyFixtureDir(t)}
}

// tinyFixtureDir is the shared granite-hybrid-tiny fixture, which the
// fixture-specific tests (ids, special tokens, chat template) rely on.
func tinyFixtureDir(t testing.TB) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny")
	if _, err := os.Stat(filepath.Join(d, "hf", "tokenizer.json")); err != nil {
		t.Skipf("fixture not found: %v", err)
	}
	return d
}

type goldenFile struct {
	Prompts []struct {
		Name     string `json:"name"`
		Text     string `json:"text"`
		TokenIDs []int  `json:"token_ids"`
	} `json:"prompts"`
	Tokenization struct {
		Cases []struct {
			Text string `json:"text"`
			IDs  []int  `json:"ids"`
		} `json:"cases"`
	} `json:"tokenization"`
}

type goldenCase struct {
	name string
	text string
	ids  []int
}

func loadGolden(t testing.TB, dir string) (*Tokenizer, []goldenCase) {
	t.Helper()
	tok, err := LoadHF(filepath.Join(dir, "hf"))
	if err != nil {
		t.Fatalf("LoadHF(%s): %v", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("golden.json: %v", err)
	}
	var cases []goldenCase
	for i, c := range g.Tokenization.Cases {
		cases = append(cases, goldenCase{name: fmt.Sprintf("case%02d", i), text: c.Text, ids: c.IDs})
	}
	for _, p := range g.Prompts {
		cases = append(cases, goldenCase{name: "prompt_" + p.Name, text: p.Text, ids: p.TokenIDs})
	}
	if len(cases) == 0 {
		t.Fatalf("%s: no tokenization cases", dir)
	}
	return tok, cases
}

func TestGoldenEncode(t *testing.T) {
	for _, dir := range goldenDirs(t) {
		tok, cases := loadGolden(t, dir)
		// The same tokenizer through the GGUF path must agree.
		var viaVocab *Tokenizer
		if tok.Pre() != "" {
			var err error
			if viaVocab, err = FromVocab(tok.Vocab()); err != nil {
				t.Fatalf("FromVocab(Vocab()): %v", err)
			}
		}
		for _, c := range cases {
			t.Run(filepath.Base(dir)+"/"+c.name, func(t *testing.T) {
				got := tok.Encode(c.text, true)
				if !slices.Equal(got, c.ids) {
					t.Errorf("Encode(%q)\n got %v\nwant %v", c.text, got, c.ids)
				}
				if viaVocab != nil {
					if got := viaVocab.Encode(c.text, true); !slices.Equal(got, c.ids) {
						t.Errorf("FromVocab Encode(%q)\n got %v\nwant %v", c.text, got, c.ids)
					}
				}
				if dec := tok.Decode(got); dec != c.text {
					t.Errorf("Decode(Encode(%q)) = %q", c.text, dec)
				}
				if dec, err := tok.DecodeChecked(c.ids); err != nil || dec != c.text {
					t.Errorf("DecodeChecked(golden ids) = %q, %v; want %q", dec, err, c.text)
				}
			})
		}
	}
}
