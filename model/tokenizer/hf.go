package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

type hfAddedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type hfModel struct {
	Type                    string            `json:"type"`
	Vocab                   map[string]int    `json:"vocab"`
	Merges                  []json.RawMessage `json:"merges"`
	IgnoreMerges            bool              `json:"ignore_merges"`
	UnkToken                *string           `json:"unk_token"`
	ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
}

type hfTokenizer struct {
	AddedTokens  []hfAddedToken  `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Model        hfModel         `json:"model"`
}

type hfPreTokenizer struct {
	Type           string            `json:"type"`
	PreTokenizers  []json.RawMessage `json:"pretokenizers"`
	AddPrefixSpace bool              `json:"add_prefix_space"`
	UseRegex       *bool             `json:"use_regex"`
	Pattern        struct {
		Regex  *string `json:"Regex"`
		String *string `json:"String"`
	} `json:"pattern"`
	Behavior         string `json:"behavior"`
	Invert           bool   `json:"invert"`
	IndividualDigits bool   `json:"individual_digits"`
}

type hfConfig struct {
	AddBOSToken  *bool           `json:"add_bos_token"`
	BOSToken     json.RawMessage `json:"bos_token"`
	EOSToken     json.RawMessage `json:"eos_token"`
	PADToken     json.RawMessage `json:"pad_token"`
	ChatTemplate json.RawMessage `json:"chat_template"`
}

// LoadHF loads a Hugging Face tokenizer. path is a model directory holding
// tokenizer.json (and optionally tokenizer_config.json,
// special_tokens_map.json, chat_template.jinja) or a tokenizer.json file,
// whose directory is searched for the same optional files. The config gives
// the chat template, bos/eos/pad tokens and add_bos_token (default false).
func LoadHF(path string) (*Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	dir, file := path, filepath.Join(path, "tokenizer.json")
	if !st.IsDir() {
		dir, file = filepath.Dir(path), path
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var cfg hfConfig
	if b, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json")); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("tokenizer: parsing %s: %w", filepath.Join(dir, "tokenizer_config.json"), err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	// special_tokens_map.json fills in what tokenizer_config.json lacks.
	if b, err := os.ReadFile(filepath.Join(dir, "special_tokens_map.json")); err == nil {
		var sm hfConfig
		if err := json.Unmarshal(b, &sm); err != nil {
			return nil, fmt.Errorf("tokenizer: parsing %s: %w", filepath.Join(dir, "special_tokens_map.json"), err)
		}
		for _, f := range []struct{ dst, src *json.RawMessage }{{&cfg.BOSToken, &sm.BOSToken}, {&cfg.EOSToken, &sm.EOSToken}, {&cfg.PADToken, &sm.PADToken}} {
			if isNullJSON(*f.dst) {
				*f.dst = *f.src
			}
		}
	}
	tmpl, err := parseChatTemplate(cfg.ChatTemplate)
	if err != nil {
		return nil, err
	}
	if tmpl == "" {
		if b, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
			tmpl = string(b)
		}
	}
	return parseHF(data, cfg, tmpl)
}

// FromHFJSON builds a Tokenizer from the contents of tokenizer.json and,
// optionally (nil), tokenizer_config.json.
func FromHFJSON(tokenizerJSON, tokenizerConfigJSON []byte) (*Tokenizer, error) {
	var cfg hfConfig
	if tokenizerConfigJSON != nil {
		if err := json.Unmarshal(tokenizerConfigJSON, &cfg); err != nil {
			return nil, fmt.Errorf("tokenizer: parsing tokenizer_config.json: %w", err)
		}
	}
	tmpl, err := parseChatTemplate(cfg.ChatTemplate)
	if err != nil {
		return nil, err
	}
	return parseHF(tokenizerJSON, cfg, tmpl)
}

func isNullJSON(m json.RawMessage) bool {
	return len(m) == 0 || string(m) == "null"
}

// parseChatTemplate accepts a template string or a list of named templates
// (the "default" one, else the first).
func parseChatTemplate(raw json.RawMessage) (string, error) {
	if isNullJSON(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("tokenizer: chat_template is neither a string nor a list of templates: %w", err)
	}
	for _, t := range list {
		if t.Name == "default" {
			return t.Template, nil
		}
	}
	if len(list) > 0 {
		return list[0].Template, nil
	}
	return "", nil
}

// tokenContent reads a config token given as a string or as an object with
// a "content" field.
func tokenContent(raw json.RawMessage) (string, error) {
	if isNullJSON(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var obj struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", err
	}
	return obj.Content, nil
}

func parseHF(data []byte, cfg hfConfig, tmpl string) (*Tokenizer, error) {
	var tj hfTokenizer
	if err := json.Unmarshal(data, &tj); err != nil {
		return nil, fmt.Errorf("tokenizer: parsing tokenizer.json: %w", err)
	}
	m := &tj.Model
	if m.Type != "" && m.Type != "BPE" {
		return nil, fmt.Errorf("%w: model type %q (only BPE)", ErrUnsupported, m.Type)
	}
	if m.Vocab == nil {
		return nil, errors.New("tokenizer: tokenizer.json has no model.vocab")
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("%w: continuing_subword_prefix %q", ErrUnsupported, *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("%w: end_of_word_suffix %q", ErrUnsupported, *m.EndOfWordSuffix)
	}
	if err := checkNormalizer(tj.Normalizer); err != nil {
		return nil, err
	}
	pre, preName, err := parsePreTokenizer(tj.PreTokenizer, m.IgnoreMerges)
	if err != nil {
		return nil, err
	}
	sp := &spec{
		vocab:        m.Vocab,
		pre:          pre,
		preName:      preName,
		ignoreMerges: m.IgnoreMerges,
		bos:          -1,
		eos:          -1,
		pad:          -1,
		chatTemplate: tmpl,
	}
	if m.UnkToken != nil {
		sp.unk = *m.UnkToken
	}
	for _, a := range tj.AddedTokens {
		sp.added = append(sp.added, AddedToken{ID: a.ID, Content: a.Content, Special: a.Special,
			LStrip: a.LStrip, RStrip: a.RStrip, SingleWord: a.SingleWord})
	}
	sp.merges = make([][2]string, 0, len(m.Merges))
	for i, raw := range m.Merges {
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			a, b, ok := splitMerge(s)
			if !ok {
				return nil, fmt.Errorf("tokenizer: merge %d %q: want two space-separated tokens", i, s)
			}
			sp.merges = append(sp.merges, [2]string{a, b})
			continue
		}
		var pair []string
		if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("tokenizer: merge %d: want \"a b\" or [\"a\", \"b\"], got %s", i, truncate(string(raw), 40))
		}
		sp.merges = append(sp.merges, [2]string{pair[0], pair[1]})
	}
	if cfg.AddBOSToken != nil {
		sp.addBOS = *cfg.AddBOSToken
	}
	t, err := build(sp)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *int
	}{{"bos_token", cfg.BOSToken, &t.bos}, {"eos_token", cfg.EOSToken, &t.eos}, {"pad_token", cfg.PADToken, &t.pad}} {
		s, err := tokenContent(f.raw)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: tokenizer_config.json %s: %w", f.name, err)
		}
		if s == "" {
			continue
		}
		id, ok := t.TokenID(s)
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s %q not in vocabulary", f.name, s)
		}
		*f.dst = id
	}
	return t, nil
}

func checkNormalizer(raw json.RawMessage) error {
	if isNullJSON(raw) {
		return nil
	}
	var n struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
	}
	if err := json.Unmarshal(raw, &n); err != nil {
		return fmt.Errorf("tokenizer: parsing normalizer: %w", err)
	}
	if n.Type == "Sequence" {
		for _, s := range n.Normalizers {
			if err := checkNormalizer(s); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%w: normalizer %q", ErrUnsupported, n.Type)
}

// parsePreTokenizer turns the HF pre_tokenizer into a pipeline. It must
// contain a ByteLevel step; supported steps are Sequence, Split and
// ByteLevel.
func parsePreTokenizer(raw json.RawMessage, ignoreMerges bool) (preTokenizer, string, error) {
	var p preTokenizer
	if isNullJSON(raw) {
		return p, "", fmt.Errorf("%w: tokenizer.json has no pre_tokenizer (only byte-level BPE is supported)", ErrUnsupported)
	}
	byteLevel := false
	var add func(raw json.RawMessage, depth int) error
	add = func(raw json.RawMessage, depth int) error {
		if depth > 8 {
			return errors.New("tokenizer: pre_tokenizer nested too deeply")
		}
		var h hfPreTokenizer
		if err := json.Unmarshal(raw, &h); err != nil {
			return fmt.Errorf("tokenizer: parsing pre_tokenizer: %w", err)
		}
		switch h.Type {
		case "Sequence":
			for _, s := range h.PreTokenizers {
				if err := add(s, depth+1); err != nil {
					return err
				}
			}
		case "ByteLevel":
			byteLevel = true
			if h.AddPrefixSpace {
				p.stages = append(p.stages, stage{kind: stagePrefixSpace})
			}
			if h.UseRegex == nil || *h.UseRegex {
				p.stages = append(p.stages, stage{kind: stageScanGPT2, pattern: RegexGPT2})
			}
		case "Split":
			b, err := parseBehavior(h.Behavior)
			if err != nil {
				return err
			}
			switch {
			case h.Pattern.Regex != nil:
				st, err := newRegexStage(*h.Pattern.Regex, b, h.Invert)
				if err != nil {
					return err
				}
				p.stages = append(p.stages, st)
			case h.Pattern.String != nil:
				p.stages = append(p.stages, stage{kind: stageLiteral, lit: *h.Pattern.String, behavior: b, invert: h.Invert})
			default:
				return errors.New("tokenizer: Split pre_tokenizer has no pattern")
			}
		case "Digits":
			b := behaviorContiguous
			if h.IndividualDigits {
				b = behaviorIsolated
			}
			p.stages = append(p.stages, stage{kind: stageDigits, behavior: b})
		default:
			return fmt.Errorf("%w: pre_tokenizer type %q (supported: Sequence, Split, ByteLevel, Digits)", ErrUnsupported, h.Type)
		}
		return nil
	}
	if err := add(raw, 0); err != nil {
		return p, "", err
	}
	if !byteLevel {
		return p, "", fmt.Errorf("%w: pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)", ErrUnsupported)
	}
	return p, ggufPreName(p, ignoreMerges), nil
}

// ggufPreName names the GGUF pre-tokenizer equivalent to p, or "".
func ggufPreName(p preTokenizer, ignoreMerges bool) string {
	if len(p.stages) != 1 {
		return ""
	}
	st := p.stages[0]
	if st.behavior != behaviorIsolated || st.invert {
		return ""
	}
	switch st.kind {
	case stageScanGPT2:
		if !ignoreMerges {
			return "gpt-2"
		}
	case stageScanCL100K, stageScanCL100KHF:
		if ignoreMerges {
			return "llama-bpe"
		}
		return "dbrx"
	}
	return ""
}
