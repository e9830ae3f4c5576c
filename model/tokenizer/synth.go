package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"unicode/utf8"
)

// GraniteVocabSize is the embedding size of real Granite 4.0 models; for
// this size Synthesize places the special tokens at Granite's real ids.
const GraniteVocabSize = 100352

// synthChatTemplate is the Jinja chat template of synthesized tokenizers:
// Granite markup, tool results as user turns wrapped in <tool_response>.
// ApplyChat renders exactly what this template renders.
const synthChatTemplate = "{%- for message in messages %}" +
	"{%- if message['role'] == 'tool' %}" +
	"{{- '<|start_of_role|>user<|end_of_role|><tool_response>' + message['content'] + '</tool_response><|end_of_text|>\n' }}" +
	"{%- else %}" +
	"{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}" +
	"{%- endif %}" +
	"{%- endfor %}" +
	"{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"

// graniteAdded is Granite 4.0's added-token table (ids 100256-100283),
// followed by <|tool_call|>, which Granite 4.0 does not have, placed in the
// first padding row so that every synthesized vocabulary has it.
var graniteAdded = []string{
	"<|pad|>", "<|end_of_text|>",
	"<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
	"<|filename|>", "<|reponame|>",
	"<|start_of_role|>", "<|end_of_role|>",
	"<|unused_1|>",
	"<|start_of_plugin|>", "<|end_of_plugin|>",
	"<|unk|>",
	"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
	"<think>", "</think>", "<think_on>", "<think_off>",
	"<schema>", "</schema>", "<tools>", "</tools>", "<documents>", "</documents>",
	"<|tool_call|>",
}

// graniteAddedBase is the id of graniteAdded[0] (<|pad|>).
const graniteAddedBase = 100256

// smallAdded is the special-token block placed at the end of other
// vocabulary sizes; the first five ids match the test fixture's layout.
var smallAdded = []string{
	"<|end_of_text|>", "<|pad|>", "<|start_of_role|>", "<|end_of_role|>",
	"<|tool_call|>", "<tool_response>", "</tool_response>", "<tool_call>",
}

// Synthesize builds a byte-level BPE tokenizer with exactly vocabSize ids
// for random-weight test models and returns its tokenizer.json and
// tokenizer_config.json. Ids 0-255 are the GPT-2 byte alphabet (id = byte
// value); then come merges learned deterministically on a small embedded
// English text, then "[PADn]" placeholder tokens. The pre-tokenizer is
// Granite 4.0's (Split with the cl100k regex, then ByteLevel; GGUF pre
// "dbrx"). Special tokens sit at Granite's real ids when vocabSize is
// GraniteVocabSize (<|pad|> 100256, <|end_of_text|> 100257, ...), and
// otherwise at the end of the vocabulary (for 464: <|end_of_text|> 456,
// <|pad|> 457, <|start_of_role|> 458, <|end_of_role|> 459, <|tool_call|>
// 460, <tool_response> 461, </tool_response> 462, <tool_call> 463).
// <|end_of_text|> is both BOS and EOS; add_bos_token is false.
func Synthesize(vocabSize int) (tokenizerJSON, tokenizerConfigJSON []byte, err error) {
	minSize := 256 + len(smallAdded)
	if vocabSize < minSize || vocabSize > maxVocab {
		return nil, nil, fmt.Errorf("tokenizer: Synthesize: vocabulary size %d outside [%d, %d]", vocabSize, minSize, maxVocab)
	}
	// Layout: regular tokens (bytes, merges, placeholders) in [0, regular),
	// added tokens at addedIDs, placeholders at any remaining id.
	var addedNames []string
	var addedBase int
	if vocabSize == GraniteVocabSize {
		addedNames, addedBase = graniteAdded, graniteAddedBase
	} else {
		addedNames, addedBase = smallAdded, vocabSize-len(smallAdded)
	}
	regular := addedBase
	tokens, merges := trainBPE(synthCorpus, regular)

	vocab := make([]string, vocabSize)
	for id, raw := range tokens {
		vocab[id] = byteLevelEncode(raw)
	}
	isAdded := make([]bool, vocabSize)
	for i, name := range addedNames {
		vocab[addedBase+i] = name
		isAdded[addedBase+i] = true
	}
	for id := range vocab {
		if vocab[id] == "" {
			vocab[id] = "[PAD" + strconv.Itoa(id) + "]"
		}
	}

	var tj bytes.Buffer
	tj.Grow(vocabSize * 24)
	tj.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [")
	first := true
	for id := range vocab {
		if !isAdded[id] {
			continue
		}
		if !first {
			tj.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&tj, "\n    {\"id\": %d, \"content\": ", id)
		writeJSONString(&tj, vocab[id])
		tj.WriteString(", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}")
	}
	tj.WriteString("\n  ],\n  \"normalizer\": null,\n  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [" +
		"{\"type\": \"Split\", \"pattern\": {\"Regex\": ")
	writeJSONString(&tj, RegexCL100K)
	tj.WriteString("}, \"behavior\": \"Isolated\", \"invert\": false}, " +
		"{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]},\n" +
		"  \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false, \"use_regex\": true},\n" +
		"  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n" +
		"  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n" +
		"    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n" +
		"    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n    \"vocab\": {")
	first = true
	for id, s := range vocab {
		if isAdded[id] {
			continue
		}
		if !first {
			tj.WriteByte(',')
		}
		first = false
		tj.WriteString("\n      ")
		writeJSONString(&tj, s)
		tj.WriteString(": ")
		tj.WriteString(strconv.Itoa(id))
	}
	tj.WriteString("\n    },\n    \"merges\": [")
	for i, m := range merges {
		if i > 0 {
			tj.WriteByte(',')
		}
		tj.WriteString("\n      ")
		writeJSONString(&tj, vocab[m[0]]+" "+vocab[m[1]])
	}
	tj.WriteString("\n    ]\n  }\n}\n")

	type addedDecoder struct {
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	cfg := struct {
		AddBOSToken        bool                    `json:"add_bos_token"`
		AddEOSToken        bool                    `json:"add_eos_token"`
		AddPrefixSpace     bool                    `json:"add_prefix_space"`
		AddedTokensDecoder map[string]addedDecoder `json:"added_tokens_decoder"`
		BOSToken           string                  `json:"bos_token"`
		EOSToken           string                  `json:"eos_token"`
		PADToken           string                  `json:"pad_token"`
		UNKToken           *string                 `json:"unk_token"`
		CleanUp            bool                    `json:"clean_up_tokenization_spaces"`
		ModelMaxLength     int                     `json:"model_max_length"`
		PaddingSide        string                  `json:"padding_side"`
		TokenizerClass     string                  `json:"tokenizer_class"`
		ChatTemplate       string                  `json:"chat_template"`
	}{
		AddedTokensDecoder: make(map[string]addedDecoder, len(addedNames)),
		BOSToken:           "<|end_of_text|>",
		EOSToken:           "<|end_of_text|>",
		PADToken:           "<|pad|>",
		ModelMaxLength:     1 << 20,
		PaddingSide:        "left",
		TokenizerClass:     "GPT2Tokenizer",
		ChatTemplate:       synthChatTemplate,
	}
	for i, name := range addedNames {
		cfg.AddedTokensDecoder[strconv.Itoa(addedBase+i)] = addedDecoder{Content: name, Special: true}
		if name == "<|unk|>" {
			unk := name
			cfg.UNKToken = &unk
		}
	}
	var cj bytes.Buffer
	enc := json.NewEncoder(&cj)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(cfg); err != nil {
		return nil, nil, fmt.Errorf("tokenizer: Synthesize: encoding tokenizer_config.json: %w", err)
	}
	return tj.Bytes(), cj.Bytes(), nil
}

// writeJSONString writes s as a JSON string literal (without HTML escaping).
func writeJSONString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b.WriteString(`\ufffd`)
			} else {
				b.WriteString(s[i : i+n])
			}
			i += n
			continue
		}
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20 || c == 0x7f:
			b.WriteString(`\u00`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		default:
			b.WriteByte(c)
		}
		i++
	}
	b.WriteByte('"')
}

// trainBPE learns byte-level BPE merges on text until there are limit
// tokens (or no pair is left). It returns the raw bytes of each token
// (ids 0-255 are the bytes) and the merges as id pairs in rank order.
// Ties between equally frequent pairs are broken by the bytes of the left
// and then the right token, so the result is deterministic.
func trainBPE(text string, limit int) (tokens [][]byte, merges [][2]int32) {
	tokens = make([][]byte, 256, max(limit, 256))
	for b := range tokens {
		tokens[b] = []byte{byte(b)}
	}
	if limit <= 256 {
		return tokens[:limit:limit], nil
	}
	// Distinct pre-tokens with their counts, in a fixed order.
	counts := map[string]int{}
	for i := 0; i < len(text); {
		j := nextCL100K(text, i)
		counts[text[i:j]]++
		i = j
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	type word struct {
		syms  []int32
		count int
	}
	words := make([]word, len(keys))
	pairs := map[uint64]int{}
	for i, k := range keys {
		w := word{syms: make([]int32, len(k)), count: counts[k]}
		for j := 0; j < len(k); j++ {
			w.syms[j] = int32(k[j])
		}
		for j := 0; j+1 < len(w.syms); j++ {
			pairs[pairKey(w.syms[j], w.syms[j+1])] += w.count
		}
		words[i] = w
	}
	byBytes := make(map[string]int32, limit)
	for b := range tokens {
		byBytes[string(tokens[b])] = int32(b)
	}
	used := map[uint64]bool{}
	for len(tokens) < limit && len(pairs) > 0 {
		var best uint64
		bestCount := 0
		for k, c := range pairs {
			if c > bestCount || c == bestCount && pairLess(tokens, k, best) {
				best, bestCount = k, c
			}
		}
		a, b := int32(best>>32), int32(uint32(best))
		merged := append(append([]byte(nil), tokens[a]...), tokens[b]...)
		id, exists := byBytes[string(merged)]
		if !exists {
			id = int32(len(tokens))
			tokens = append(tokens, merged)
			byBytes[string(merged)] = id
		}
		if !used[best] {
			used[best] = true
			merges = append(merges, [2]int32{a, b})
		}
		// Replace every occurrence of (a, b), updating the pair counts.
		for wi := range words {
			w := &words[wi]
			s := w.syms
			found := false
			for j := 0; j+1 < len(s); j++ {
				if s[j] == a && s[j+1] == b {
					found = true
					break
				}
			}
			if !found {
				continue
			}
			for j := 0; j+1 < len(s); j++ {
				decPair(pairs, pairKey(s[j], s[j+1]), w.count)
			}
			out := s[:0]
			for j := 0; j < len(s); j++ {
				if j+1 < len(s) && s[j] == a && s[j+1] == b {
					out = append(out, id)
					j++
					continue
				}
				out = append(out, s[j])
			}
			w.syms = out
			for j := 0; j+1 < len(out); j++ {
				pairs[pairKey(out[j], out[j+1])] += w.count
			}
		}
	}
	return tokens, merges
}

func decPair(pairs map[uint64]int, k uint64, n int) {
	if c := pairs[k] - n; c > 0 {
		pairs[k] = c
	} else {
		delete(pairs, k)
	}
}

// pairLess orders pairs by the bytes of the left token, then the right.
func pairLess(tokens [][]byte, x, y uint64) bool {
	if c := bytes.Compare(tokens[x>>32], tokens[y>>32]); c != 0 {
		return c < 0
	}
	return bytes.Compare(tokens[uint32(x)], tokens[uint32(y)]) < 0
}
