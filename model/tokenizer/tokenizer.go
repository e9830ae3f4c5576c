package tokenizer

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors; returned errors wrap them (test with errors.Is).
var (
	// ErrTokenID reports a token id outside the vocabulary.
	ErrTokenID = errors.New("tokenizer: invalid token id")
	// ErrUnsupportedTemplate reports a chat template ApplyChat cannot render.
	ErrUnsupportedTemplate = errors.New("tokenizer: chat template not supported")
	// ErrUnknownRole reports a chat message role ApplyChat does not know.
	ErrUnknownRole = errors.New("tokenizer: unknown chat role")
	// ErrUnsupported reports a tokenizer feature this package does not implement.
	ErrUnsupported = errors.New("tokenizer: unsupported")
)

// maxVocab bounds the id space accepted from files, so that a corrupt id
// cannot make the constructor allocate gigabytes.
const maxVocab = 1 << 24

// GGUF token types (tokenizer.ggml.token_type).
const (
	TypeNormal      = 1
	TypeUnknown     = 2
	TypeControl     = 3
	TypeUserDefined = 4
	TypeUnused      = 5
	TypeByte        = 6
)

// Vocab is the tokenizer description stored in a GGUF file. Tokens are in
// the byte-level alphabet, as in tokenizer.json; control, unknown and
// user-defined tokens are the added tokens matched as whole strings.
type Vocab struct {
	Tokens       []string
	Types        []int32 // GGUF token_type per token; nil means all normal
	Merges       []string
	Pre          string // tokenizer.ggml.pre
	BOS          int    // -1 if none
	EOS          int    // -1 if none
	PAD          int    // -1 if none
	AddBOS       bool
	ChatTemplate string
}

// AddedToken is a token matched as a whole string before BPE.
type AddedToken struct {
	ID      int
	Content string
	// Special tokens (HF "special", GGUF control/unknown) are matched only
	// when Encode is asked to parse special tokens; other added tokens
	// (GGUF user-defined) are always matched, as in HF and llama.cpp.
	Special bool
	// HF flags: LStrip/RStrip absorb whitespace left/right of a match;
	// SingleWord only matches when not inside a word.
	LStrip, RStrip, SingleWord bool
}

// Per-id flags.
const (
	flagPresent uint8 = 1 << iota
	flagAdded
	flagSpecial
	flagNormal
)

// Tokenizer is a byte-level BPE tokenizer. It is immutable and safe for
// concurrent use.
type Tokenizer struct {
	vocab    map[string]int32 // token text as stored (byte-level for normal tokens) -> id
	rawVocab map[string]int32 // raw bytes -> id of normal tokens (ignore_merges only)
	tokens   []string         // stored text per id; "" for holes
	tokBytes [][]byte         // raw bytes per id
	flags    []uint8

	byteTok      [256]int32
	merges       map[uint64]mergeRule
	mergeList    [][2]int32 // by rank
	ignoreMerges bool
	unk          int32

	pre     preTokenizer
	preName string // GGUF tokenizer.ggml.pre equivalent, "" if none

	added      []AddedToken
	matchAll   *matcher // every added token (parseSpecial)
	matchPlain *matcher // non-special added tokens only

	bos, eos, pad int
	addBOS        bool
	chatTemplate  string

	cache   *bpeCache
	noCache bool // benchmarks only
	work    sync.Pool
}

// spec is the source-independent description from which build makes a
// Tokenizer.
type spec struct {
	vocab        map[string]int // normal tokens
	added        []AddedToken
	merges       [][2]string
	pre          preTokenizer
	preName      string
	ignoreMerges bool
	unk          string
	bos, eos     int
	pad          int
	addBOS       bool
	chatTemplate string
}

// Pre-tokenizer names accepted in Vocab.Pre.
var ggufPre = map[string]struct {
	kind         stageKind
	ignoreMerges bool
}{
	"gpt-2":     {stageScanGPT2, false},
	"gpt2":      {stageScanGPT2, false},
	"phi-2":     {stageScanGPT2, false},
	"dbrx":      {stageScanCL100K, false},
	"smaug-bpe": {stageScanCL100K, false},
	"llama3":    {stageScanCL100K, true},
	"llama-v3":  {stageScanCL100K, true},
	"llama-bpe": {stageScanCL100K, true},
}

// FromVocab builds a Tokenizer from GGUF tokenizer arrays.
func FromVocab(v Vocab) (*Tokenizer, error) {
	if len(v.Tokens) == 0 {
		return nil, errors.New("tokenizer: empty vocabulary")
	}
	if len(v.Tokens) > maxVocab {
		return nil, fmt.Errorf("tokenizer: vocabulary of %d tokens exceeds the limit of %d", len(v.Tokens), maxVocab)
	}
	if v.Types != nil && len(v.Types) != len(v.Tokens) {
		return nil, fmt.Errorf("tokenizer: %d token types for %d tokens", len(v.Types), len(v.Tokens))
	}
	p, ok := ggufPre[v.Pre]
	if !ok {
		return nil, fmt.Errorf("%w: pre-tokenizer %q (known: gpt-2, dbrx, llama3, llama-bpe, smaug-bpe)", ErrUnsupported, v.Pre)
	}
	sp := &spec{
		vocab:        make(map[string]int, len(v.Tokens)),
		pre:          preTokenizer{stages: []stage{{kind: p.kind}}},
		preName:      v.Pre,
		ignoreMerges: p.ignoreMerges,
		bos:          v.BOS,
		eos:          v.EOS,
		pad:          v.PAD,
		addBOS:       v.AddBOS,
		chatTemplate: v.ChatTemplate,
	}
	for id, tok := range v.Tokens {
		typ := int32(TypeNormal)
		if v.Types != nil {
			typ = v.Types[id]
		}
		switch typ {
		case TypeControl, TypeUnknown, TypeUserDefined:
			if tok == "" {
				continue
			}
			sp.added = append(sp.added, AddedToken{ID: id, Content: tok, Special: typ != TypeUserDefined})
		default:
			if tok != "" {
				sp.vocab[tok] = id // a duplicate string maps to its last id, as in llama.cpp
			}
		}
	}
	sp.merges = make([][2]string, 0, len(v.Merges))
	for i, m := range v.Merges {
		a, b, ok := splitMerge(m)
		if !ok {
			return nil, fmt.Errorf("tokenizer: merge %d %q: want two space-separated tokens", i, m)
		}
		sp.merges = append(sp.merges, [2]string{a, b})
	}
	return build(sp)
}

// splitMerge splits a "left right" merge at the first space after the first
// character.
func splitMerge(m string) (string, string, bool) {
	if len(m) < 3 {
		return "", "", false
	}
	i := strings.IndexByte(m[1:], ' ')
	if i < 0 || i+2 >= len(m) {
		return "", "", false
	}
	return m[:i+1], m[i+2:], true
}

func build(sp *spec) (*Tokenizer, error) {
	n := 0
	for tok, id := range sp.vocab {
		if id < 0 || id >= maxVocab {
			return nil, fmt.Errorf("tokenizer: token %q has id %d outside [0,%d)", tok, id, maxVocab)
		}
		n = max(n, id+1)
	}
	for _, a := range sp.added {
		if a.ID < 0 || a.ID >= maxVocab {
			return nil, fmt.Errorf("tokenizer: added token %q has id %d outside [0,%d)", a.Content, a.ID, maxVocab)
		}
		if a.Content == "" {
			return nil, fmt.Errorf("tokenizer: added token %d has empty content", a.ID)
		}
		n = max(n, a.ID+1)
	}
	if n == 0 {
		return nil, errors.New("tokenizer: empty vocabulary")
	}
	t := &Tokenizer{
		vocab:        make(map[string]int32, len(sp.vocab)+len(sp.added)),
		tokens:       make([]string, n),
		tokBytes:     make([][]byte, n),
		flags:        make([]uint8, n),
		ignoreMerges: sp.ignoreMerges,
		unk:          -1,
		pre:          sp.pre,
		preName:      sp.preName,
		addBOS:       sp.addBOS,
		chatTemplate: sp.chatTemplate,
		cache:        newBPECache(),
	}
	for tok, id := range sp.vocab {
		if t.flags[id] != 0 {
			a, b := t.tokens[id], tok
			if b < a {
				a, b = b, a
			}
			return nil, fmt.Errorf("tokenizer: id %d assigned to both %q and %q", id, a, b)
		}
		t.tokens[id] = tok
		t.flags[id] = flagPresent | flagNormal
		t.vocab[tok] = int32(id)
		if raw, ok := byteLevelDecode(tok); ok {
			t.tokBytes[id] = raw
		} else {
			t.tokBytes[id] = []byte(tok)
		}
	}
	for b := 0; b < 256; b++ {
		t.byteTok[b] = -1
		if id, ok := sp.vocab[byteToStr[b]]; ok {
			t.byteTok[b] = int32(id)
		}
	}
	// Merges refer to normal tokens. Pairs whose parts or result are not in
	// the vocabulary can never apply and are skipped, as llama.cpp does.
	t.merges = make(map[uint64]mergeRule, len(sp.merges))
	t.mergeList = make([][2]int32, 0, len(sp.merges))
	for _, m := range sp.merges {
		a, okA := sp.vocab[m[0]]
		b, okB := sp.vocab[m[1]]
		r, okR := sp.vocab[m[0]+m[1]]
		if !okA || !okB || !okR {
			continue
		}
		k := pairKey(int32(a), int32(b))
		if _, dup := t.merges[k]; dup {
			continue
		}
		t.merges[k] = mergeRule{rank: int32(len(t.mergeList)), result: int32(r)}
		t.mergeList = append(t.mergeList, [2]int32{int32(a), int32(b)})
	}
	// Added tokens override normal tokens with the same text or id.
	added := make([]AddedToken, 0, len(sp.added))
	seen := make(map[int]int, len(sp.added))
	for _, a := range sp.added {
		if j, dup := seen[a.ID]; dup {
			if added[j].Content != a.Content {
				return nil, fmt.Errorf("tokenizer: id %d assigned to both %q and %q", a.ID, added[j].Content, a.Content)
			}
			added[j] = a
			continue
		}
		seen[a.ID] = len(added)
		added = append(added, a)
	}
	sort.Slice(added, func(i, j int) bool { return added[i].ID < added[j].ID })
	for _, a := range added {
		if t.flags[a.ID]&flagNormal != 0 && t.vocab[t.tokens[a.ID]] == int32(a.ID) {
			delete(t.vocab, t.tokens[a.ID])
		}
		t.tokens[a.ID] = a.Content
		t.tokBytes[a.ID] = []byte(a.Content)
		t.flags[a.ID] = flagPresent | flagAdded
		if a.Special {
			t.flags[a.ID] |= flagSpecial
		}
		t.vocab[a.Content] = int32(a.ID)
	}
	t.added = added
	t.matchAll = newMatcher(added, true)
	t.matchPlain = newMatcher(added, false)
	if t.ignoreMerges {
		t.rawVocab = make(map[string]int32, len(sp.vocab))
		for id, f := range t.flags {
			if f&flagNormal != 0 {
				if _, ok := byteLevelDecode(t.tokens[id]); ok {
					t.rawVocab[string(t.tokBytes[id])] = int32(id)
				}
			}
		}
	}
	if sp.unk != "" {
		id, ok := t.vocab[sp.unk]
		if !ok {
			return nil, fmt.Errorf("tokenizer: unk_token %q not in vocabulary", sp.unk)
		}
		t.unk = id
	}
	var err error
	if t.bos, err = t.checkID("bos", sp.bos); err != nil {
		return nil, err
	}
	if t.eos, err = t.checkID("eos", sp.eos); err != nil {
		return nil, err
	}
	if t.pad, err = t.checkID("pad", sp.pad); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokenizer) checkID(what string, id int) (int, error) {
	if id < 0 {
		return -1, nil
	}
	if id >= len(t.flags) || t.flags[id] == 0 {
		return -1, fmt.Errorf("%w: %s id %d not in vocabulary of size %d", ErrTokenID, what, id, len(t.flags))
	}
	return id, nil
}

// matcher finds added tokens in text: leftmost match first, and the
// longest token among those starting at the same position.
type matcher struct {
	byFirst  [256][]AddedToken // candidates by first byte, longest first
	firstSet string            // the first bytes, when all are ASCII
	allASCII bool
	empty    bool
}

func newMatcher(added []AddedToken, includeSpecial bool) *matcher {
	m := &matcher{allASCII: true, empty: true}
	var first []byte
	for _, a := range added {
		if a.Special && !includeSpecial {
			continue
		}
		c := a.Content[0]
		if len(m.byFirst[c]) == 0 {
			first = append(first, c)
			if c >= utf8.RuneSelf {
				m.allASCII = false
			}
		}
		m.byFirst[c] = append(m.byFirst[c], a)
		m.empty = false
	}
	for _, c := range first {
		l := m.byFirst[c]
		sort.SliceStable(l, func(i, j int) bool { return len(l[i].Content) > len(l[j].Content) })
	}
	m.firstSet = string(first)
	return m
}

// find returns the first added token match in s at or after from, with the
// span it consumes (including stripped whitespace).
func (m *matcher) find(s string, from int) (start, end, id int, ok bool) {
	start, end, _, id, ok = m.findAt(s, from)
	return start, end, id, ok
}

// findAt is find that also returns where the token's own text starts (at,
// after any stripped whitespace).
func (m *matcher) findAt(s string, from int) (start, end, at, id int, ok bool) {
	if m.empty {
		return 0, 0, 0, 0, false
	}
	for p := from; p < len(s); p++ {
		if m.allASCII {
			k := strings.IndexAny(s[p:], m.firstSet)
			if k < 0 {
				return 0, 0, 0, 0, false
			}
			p += k
		}
		for _, a := range m.byFirst[s[p]] {
			if !strings.HasPrefix(s[p:], a.Content) {
				continue
			}
			e := p + len(a.Content)
			if a.SingleWord && (isWordBefore(s, p) || isWordAfter(s, e)) {
				continue
			}
			st := p
			if a.LStrip {
				for st > from {
					r, n := utf8.DecodeLastRuneInString(s[from:st])
					if !unicode.IsSpace(r) {
						break
					}
					st -= n
				}
			}
			if a.RStrip {
				for e < len(s) {
					r, n := utf8.DecodeRuneInString(s[e:])
					if !unicode.IsSpace(r) {
						break
					}
					e += n
				}
			}
			return st, e, p, a.ID, true
		}
	}
	return 0, 0, 0, 0, false
}

func isWordRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

func isWordBefore(s string, i int) bool {
	if i == 0 {
		return false
	}
	r, _ := utf8.DecodeLastRuneInString(s[:i])
	return isWordRune(r)
}

func isWordAfter(s string, i int) bool {
	if i >= len(s) {
		return false
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return isWordRune(r)
}

// Encode tokenizes text. With parseSpecial, special tokens written in the
// text (e.g. "<|end_of_text|>") become their ids; without it they are
// tokenized as plain text. Non-special added tokens are always matched.
// A BOS token is prepended only when the tokenizer's configuration asks
// for it. Any byte string is accepted: bytes that are not valid UTF-8 are
// treated as punctuation by the pre-tokenizer, and Decode gives them back
// unchanged.
func (t *Tokenizer) Encode(text string, parseSpecial bool) []int {
	out := make([]int, 0, len(text)/3+2)
	if t.addBOS && t.bos >= 0 {
		out = append(out, t.bos)
	}
	return t.encodeInto(out, text, parseSpecial)
}

// encodeInto appends the ids of text (no BOS).
func (t *Tokenizer) encodeInto(out []int, text string, parseSpecial bool) []int {
	m := t.matchPlain
	if parseSpecial {
		m = t.matchAll
	}
	var scratch []int32
	emit := func(piece string) {
		out, scratch = t.encodePiece(out, scratch, piece)
	}
	for pos := 0; pos < len(text); {
		st, en, id, ok := m.find(text, pos)
		if !ok {
			t.pre.run(text[pos:], emit)
			break
		}
		if st > pos {
			t.pre.run(text[pos:st], emit)
		}
		out = append(out, id)
		pos = en
	}
	return out
}

// Span is a byte range [Start, End) of a text.
type Span struct{ Start, End int }

// EncodeMarked tokenizes a rendered template: special-token text becomes
// control tokens except where it overlaps a plain span (text that came from
// a user, such as a chat message's content), where it is tokenized as plain
// text. Everything else is tokenized as Encode(text, true) does, across span
// boundaries, so for text whose plain spans hold no special-token text the
// ids equal Encode(text, true). plain must be sorted and non-overlapping.
func (t *Tokenizer) EncodeMarked(text string, plain []Span) []int {
	out := make([]int, 0, len(text)/3+2)
	if t.addBOS && t.bos >= 0 {
		out = append(out, t.bos)
	}
	var scratch []int32
	emit := func(piece string) {
		out, scratch = t.encodePiece(out, scratch, piece)
	}
	// Matches come in increasing order: one pass over the sorted spans.
	si := 0
	overlaps := func(a, b int) bool {
		for si < len(plain) && plain[si].End <= a {
			si++
		}
		return si < len(plain) && plain[si].Start < b
	}
	for pos, from := 0, 0; pos < len(text); {
		st, en, at, id, ok := t.matchAll.findAt(text, from)
		if !ok {
			t.pre.run(text[pos:], emit)
			break
		}
		if t.IsSpecial(id) && overlaps(at, at+len(t.tokBytes[id])) {
			from = at + 1 // user text: not a control token; look further
			continue
		}
		st = max(st, pos)
		if st > pos {
			t.pre.run(text[pos:st], emit)
		}
		out = append(out, id)
		pos, from = en, en
	}
	return out
}

// encodePiece appends the ids of one pre-token.
func (t *Tokenizer) encodePiece(out []int, scratch []int32, piece string) ([]int, []int32) {
	if len(piece) == 1 {
		if id := t.byteTok[piece[0]]; id >= 0 {
			return append(out, int(id)), scratch
		}
	}
	if t.ignoreMerges {
		if id, ok := t.rawVocab[piece]; ok {
			return append(out, int(id)), scratch
		}
	}
	useCache := len(piece) <= cacheMaxKeyLen && !t.noCache
	if useCache {
		if ids, ok := t.cache.get(piece); ok {
			for _, id := range ids {
				out = append(out, int(id))
			}
			return out, scratch
		}
	}
	scratch = t.bpe(scratch[:0], piece)
	for _, id := range scratch {
		out = append(out, int(id))
	}
	if useCache {
		t.cache.put(piece, append([]int32(nil), scratch...))
	}
	return out, scratch
}

// Decode returns the text of ids. Special tokens give their text; ids that
// are not in the vocabulary are skipped (see DecodeChecked). Bytes are
// returned as the tokens produce them, so the result may hold invalid UTF-8
// when ids split a character.
func (t *Tokenizer) Decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		if id >= 0 && id < len(t.tokBytes) {
			b.Write(t.tokBytes[id])
		}
	}
	return b.String()
}

// DecodeChecked is Decode that fails on an id outside the vocabulary.
func (t *Tokenizer) DecodeChecked(ids []int) (string, error) {
	var b strings.Builder
	for i, id := range ids {
		if id < 0 || id >= len(t.flags) || t.flags[id] == 0 {
			return "", fmt.Errorf("%w: ids[%d] = %d (vocabulary size %d)", ErrTokenID, i, id, len(t.flags))
		}
		b.Write(t.tokBytes[id])
	}
	return b.String(), nil
}

// tokenBytes returns the internal byte slice of id, or nil.
func (t *Tokenizer) tokenBytes(id int) []byte {
	if id < 0 || id >= len(t.tokBytes) {
		return nil
	}
	return t.tokBytes[id]
}

// TokenBytes returns a copy of the raw bytes of token id: the decoded bytes
// of a normal token, the text of an added or special token, nil for an id
// not in the vocabulary.
func (t *Tokenizer) TokenBytes(id int) []byte {
	b := t.tokenBytes(id)
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

// VocabSize returns max(id)+1 over the vocabulary and the added tokens.
func (t *Tokenizer) VocabSize() int { return len(t.flags) }

// BOS returns the beginning-of-sequence id, or -1.
func (t *Tokenizer) BOS() int { return t.bos }

// EOS returns the end-of-sequence id, or -1.
func (t *Tokenizer) EOS() int { return t.eos }

// PAD returns the padding id, or -1.
func (t *Tokenizer) PAD() int { return t.pad }

// AddsBOS reports whether Encode prepends the BOS token.
func (t *Tokenizer) AddsBOS() bool { return t.addBOS && t.bos >= 0 }

// IsSpecial reports whether id is a special token (HF special added token,
// GGUF control or unknown token).
func (t *Tokenizer) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.flags) && t.flags[id]&flagSpecial != 0
}

// IsAdded reports whether id is an added token (matched as a whole string).
func (t *Tokenizer) IsAdded(id int) bool {
	return id >= 0 && id < len(t.flags) && t.flags[id]&flagAdded != 0
}

// TokenID returns the id of a token given as stored in the vocabulary: the
// text of an added token ("<|end_of_text|>") or the byte-level form of a
// normal token ("Ġthe").
func (t *Tokenizer) TokenID(s string) (int, bool) {
	id, ok := t.vocab[s]
	return int(id), ok
}

// TokenString returns token id as stored in the vocabulary (byte-level form
// for normal tokens), or "" for an id not in the vocabulary.
func (t *Tokenizer) TokenString(id int) string {
	if id < 0 || id >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// SpecialTokens returns the special added tokens, by id.
func (t *Tokenizer) SpecialTokens() []AddedToken {
	var out []AddedToken
	for _, a := range t.added {
		if a.Special {
			out = append(out, a)
		}
	}
	return out
}

// AddedTokens returns all added tokens (special or not), by id.
func (t *Tokenizer) AddedTokens() []AddedToken {
	return append([]AddedToken(nil), t.added...)
}

// ChatTemplate returns the chat template from the model files, or "".
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }

// Pre returns the GGUF tokenizer.ggml.pre name equivalent to the
// pre-tokenizer ("gpt-2", "dbrx", "llama-bpe", ...), or "" when it has no
// GGUF equivalent.
func (t *Tokenizer) Pre() string { return t.preName }

// Vocab returns the tokenizer as GGUF arrays: FromVocab(t.Vocab()) encodes
// like t (when Pre is not ""). Ids with no token are filled with "[PADn]"
// entries of type TypeUnused.
func (t *Tokenizer) Vocab() Vocab {
	v := Vocab{
		Tokens:       make([]string, len(t.tokens)),
		Types:        make([]int32, len(t.tokens)),
		Merges:       make([]string, len(t.mergeList)),
		Pre:          t.preName,
		BOS:          t.bos,
		EOS:          t.eos,
		PAD:          t.pad,
		AddBOS:       t.addBOS,
		ChatTemplate: t.chatTemplate,
	}
	for id, f := range t.flags {
		switch {
		case f == 0:
			v.Tokens[id] = fmt.Sprintf("[PAD%d]", id)
			v.Types[id] = TypeUnused
		case f&flagSpecial != 0:
			v.Tokens[id] = t.tokens[id]
			v.Types[id] = TypeControl
			if int32(id) == t.unk {
				v.Types[id] = TypeUnknown
			}
		case f&flagAdded != 0:
			v.Tokens[id] = t.tokens[id]
			v.Types[id] = TypeUserDefined
		default:
			v.Tokens[id] = t.tokens[id]
			v.Types[id] = TypeNormal
		}
	}
	for i, m := range t.mergeList {
		v.Merges[i] = t.tokens[m[0]] + " " + t.tokens[m[1]]
	}
	return v
}
