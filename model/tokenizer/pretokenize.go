package tokenizer

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2/v2"
)

// Regexes of the two pre-tokenizers that have hand-written scanners.
const (
	// RegexGPT2 is the GPT-2 pre-tokenizer regex (HF ByteLevel use_regex=true,
	// GGUF pre "gpt-2").
	RegexGPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	// RegexCL100K is the cl100k-style regex of Granite 4.0's tokenizer.json
	// Split pre-tokenizer (GGUF pre "dbrx", "llama3", "llama-bpe").
	RegexCL100K = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// regexCL100KExpanded is llama.cpp's spelling of RegexCL100K, with the
	// case-insensitive contraction group written out.
	regexCL100KExpanded = `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// Character classes used by the scanners: what \s, \p{L} and \p{N} mean in
// the regexes. Bytes that are not valid UTF-8 count as clsOther, one byte
// each (a regex engine would see U+FFFD, which is also clsOther).
const (
	clsOther uint8 = iota
	clsSpace
	clsLetter
	clsNumber
)

var asciiClass [utf8.RuneSelf]uint8

func init() {
	for c := 0; c < utf8.RuneSelf; c++ {
		r := rune(c)
		switch {
		case unicode.IsLetter(r):
			asciiClass[c] = clsLetter
		case unicode.IsNumber(r):
			asciiClass[c] = clsNumber
		case unicode.IsSpace(r):
			asciiClass[c] = clsSpace
		default:
			asciiClass[c] = clsOther
		}
	}
}

// charClass returns the class of the character starting at s[i] and its
// length in bytes. i must be < len(s).
func charClass(s string, i int) (uint8, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	switch {
	case n <= 1:
		return clsOther, 1
	case unicode.IsLetter(r):
		return clsLetter, n
	case unicode.IsNumber(r):
		return clsNumber, n
	case unicode.IsSpace(r):
		return clsSpace, n
	}
	return clsOther, n
}

// skipClass returns the end of the run of characters of class cls starting
// at s[i].
func skipClass(s string, i int, cls uint8) int {
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if asciiClass[c] != cls {
				return i
			}
			i++
			continue
		}
		k, n := charClass(s, i)
		if k != cls {
			return i
		}
		i += n
	}
	return i
}

// Case folding of the contraction group.
const (
	foldNone    uint8 = iota // GPT-2: case-sensitive
	foldASCII                // llama.cpp's expansion 's|'S|...
	foldUnicode              // HF (?i:...): also "ſ" (U+017F), which folds to "s"
)

// contraction reports the byte length (after the apostrophe) of a
// contraction suffix s, t, re, ve, m, ll or d at the start of s, or 0.
func contraction(s string, fold uint8) int {
	if len(s) == 0 {
		return 0
	}
	lower := func(c byte) byte {
		if fold != foldNone && c >= 'A' && c <= 'Z' {
			return c + ('a' - 'A')
		}
		return c
	}
	a := lower(s[0])
	switch a {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v', 'l':
		if len(s) < 2 {
			return 0
		}
		b := lower(s[1])
		if a == 'r' && b == 'e' || a == 'v' && b == 'e' || a == 'l' && b == 'l' {
			return 2
		}
	case 0xC5:
		if fold == foldUnicode && len(s) >= 2 && s[1] == 0xBF { // U+017F
			return 2
		}
	}
	return 0
}

// spaceEnd implements `\s+(?!\S)|\s+` at s[i], which must be whitespace:
// the whole whitespace run if it reaches the end of s or is a single
// character, otherwise the run minus its last character (which then starts
// the next piece, e.g. " word").
func spaceEnd(s string, i int) int {
	k, last, count := i, i, 0
	for k < len(s) {
		c, n := charClass(s, k)
		if c != clsSpace {
			break
		}
		last = k
		k += n
		count++
	}
	if k == len(s) || count <= 1 {
		return k
	}
	return last
}

// nextGPT2 returns the end of the GPT-2 regex match starting at s[i]
// (i < len(s)). Matches of this regex tile the input.
func nextGPT2(s string, i int) int {
	c := s[i]
	if c == '\'' {
		if n := contraction(s[i+1:], foldNone); n > 0 {
			return i + 1 + n
		}
	}
	cls, n := charClass(s, i)
	j := i
	if c == ' ' && i+1 < len(s) {
		if c2, n2 := charClass(s, i+1); c2 != clsSpace {
			cls, n, j = c2, n2, i+1
		}
	}
	if cls != clsSpace {
		return skipClass(s, j+n, cls)
	}
	return spaceEnd(s, i)
}

// nextCL100K returns the end of the cl100k regex match starting at s[i]
// (i < len(s)), with contractions folded as llama.cpp does (ASCII only).
// Matches of this regex tile the input.
func nextCL100K(s string, i int) int { return scanCL100K(s, i, foldASCII) }

// nextCL100KHF is nextCL100K with the case folding of the HF regex
// (?i:...), which also folds "ſ" to "s".
func nextCL100KHF(s string, i int) int { return scanCL100K(s, i, foldUnicode) }

func scanCL100K(s string, i int, fold uint8) int {
	c := s[i]
	if c == '\'' {
		if n := contraction(s[i+1:], fold); n > 0 {
			return i + 1 + n
		}
	}
	cls, n := charClass(s, i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if cls == clsLetter {
		return skipClass(s, i+n, clsLetter)
	}
	if cls != clsNumber && c != '\r' && c != '\n' && i+n < len(s) {
		if c2, n2 := charClass(s, i+n); c2 == clsLetter {
			return skipClass(s, i+n+n2, clsLetter)
		}
	}
	// \p{N}{1,3}
	if cls == clsNumber {
		k := i + n
		for d := 1; d < 3 && k < len(s); d++ {
			c2, n2 := charClass(s, k)
			if c2 != clsNumber {
				break
			}
			k += n2
		}
		return k
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	j, cj, nj := i, cls, n
	if c == ' ' && i+1 < len(s) {
		if c2, n2 := charClass(s, i+1); c2 == clsOther {
			j, cj, nj = i+1, c2, n2
		}
	}
	if cj == clsOther {
		k := skipClass(s, j+nj, clsOther)
		for k < len(s) && (s[k] == '\r' || s[k] == '\n') {
			k++
		}
		return k
	}
	// \s*[\r\n]+ : whitespace up to and including the last \r or \n of the run.
	k, lastNL := i, -1
	for k < len(s) {
		c2, n2 := charClass(s, k)
		if c2 != clsSpace {
			break
		}
		if s[k] == '\r' || s[k] == '\n' {
			lastNL = k + 1
		}
		k += n2
	}
	if lastNL > 0 {
		return lastNL
	}
	// \s+(?!\S)|\s+
	return spaceEnd(s, i)
}

// splitBehavior is the HF Split pre-tokenizer's treatment of matches.
type splitBehavior uint8

const (
	behaviorIsolated splitBehavior = iota
	behaviorRemoved
	behaviorMergedWithPrevious
	behaviorMergedWithNext
	behaviorContiguous
)

func parseBehavior(s string) (splitBehavior, error) {
	switch s {
	case "", "Isolated":
		return behaviorIsolated, nil
	case "Removed":
		return behaviorRemoved, nil
	case "MergedWithPrevious":
		return behaviorMergedWithPrevious, nil
	case "MergedWithNext":
		return behaviorMergedWithNext, nil
	case "Contiguous":
		return behaviorContiguous, nil
	}
	return 0, fmt.Errorf("tokenizer: unsupported Split behavior %q", s)
}

type stageKind uint8

const (
	stageScanGPT2     stageKind = iota // GPT-2 regex, hand-written
	stageScanCL100K                    // cl100k regex, hand-written, llama.cpp folding
	stageScanCL100KHF                  // cl100k regex, hand-written, HF (?i:) folding
	stageRegex                         // any other regex (regexp2)
	stageLiteral                       // Split on a literal string
	stagePrefixSpace                   // ByteLevel add_prefix_space
	stageDigits                        // HF Digits: numeric characters
)

// scanner returns the hand-written scanner of a scanning stage kind.
func (k stageKind) scanner() func(string, int) int {
	switch k {
	case stageScanCL100K:
		return nextCL100K
	case stageScanCL100KHF:
		return nextCL100KHF
	}
	return nextGPT2
}

// stage is one step of a pre-tokenizer pipeline: it cuts a piece of text
// into smaller pieces.
type stage struct {
	kind     stageKind
	behavior splitBehavior
	invert   bool
	re       *regexp2.Regexp
	lit      string
	pattern  string
}

// preTokenizer is a pipeline of stages applied in order.
type preTokenizer struct {
	stages []stage
}

// newRegexStage returns the stage for a Split on pattern, using a
// hand-written scanner when the pattern is one of the known regexes.
func newRegexStage(pattern string, behavior splitBehavior, invert bool) (stage, error) {
	st := stage{behavior: behavior, invert: invert, pattern: pattern}
	switch pattern {
	case RegexGPT2:
		st.kind = stageScanGPT2
		return st, nil
	case RegexCL100K:
		st.kind = stageScanCL100KHF
		return st, nil
	case regexCL100KExpanded:
		st.kind = stageScanCL100K
		return st, nil
	}
	// Unbounded backtracking stack: a long whitespace run must not make
	// the match fail (memory stays proportional to the input).
	re, err := regexp2.Compile(pattern, regexp2.OptionMaxBacktrackingStackSize(-1))
	if err != nil {
		return stage{}, fmt.Errorf("tokenizer: compiling Split regex %q: %w", pattern, err)
	}
	st.kind = stageRegex
	st.re = re
	return st, nil
}

// run calls emit for every final piece of s, in order.
func (p *preTokenizer) run(s string, emit func(string)) {
	p.runStage(0, s, emit)
}

func (p *preTokenizer) runStage(k int, s string, emit func(string)) {
	if len(s) == 0 {
		return
	}
	if k == len(p.stages) {
		emit(s)
		return
	}
	st := &p.stages[k]
	next := func(piece string) { p.runStage(k+1, piece, emit) }
	switch st.kind {
	case stagePrefixSpace:
		if s[0] != ' ' {
			s = " " + s
		}
		next(s)
		return
	case stageScanGPT2, stageScanCL100K, stageScanCL100KHF:
		if st.behavior == behaviorIsolated && !st.invert {
			scan := st.kind.scanner()
			for i := 0; i < len(s); {
				j := scan(s, i)
				next(s[i:j])
				i = j
			}
			return
		}
	}
	st.splitGeneric(s, next)
}

// matches returns the byte spans of the stage's matches in s, in order and
// non-overlapping, skipping empty matches.
func (st *stage) matches(s string) [][2]int {
	var spans [][2]int
	switch st.kind {
	case stageScanGPT2, stageScanCL100K, stageScanCL100KHF:
		scan := st.kind.scanner()
		for i := 0; i < len(s); {
			j := scan(s, i)
			spans = append(spans, [2]int{i, j})
			i = j
		}
	case stageDigits:
		for i := 0; i < len(s); {
			c, n := charClass(s, i)
			if c == clsNumber {
				spans = append(spans, [2]int{i, i + n})
			}
			i += n
		}
	case stageLiteral:
		if st.lit == "" {
			return nil
		}
		for i := 0; i < len(s); {
			j := strings.Index(s[i:], st.lit)
			if j < 0 {
				break
			}
			spans = append(spans, [2]int{i + j, i + j + len(st.lit)})
			i += j + len(st.lit)
		}
	case stageRegex:
		idx, err := st.re.FindAllStringIndex(s, -1)
		if err != nil {
			// Only a match timeout or stack limit can fail, and none is
			// set; should one trigger, keep the text unsplit rather than
			// fail the encode.
			return nil
		}
		last := 0
		for _, m := range idx {
			if len(m) < 2 || m[0] < last || m[1] < m[0] || m[1] > len(s) {
				continue
			}
			if m[0] == m[1] {
				continue
			}
			spans = append(spans, [2]int{m[0], m[1]})
			last = m[1]
		}
	}
	return spans
}

// splitGeneric implements HF Split semantics (behavior, invert) from match
// spans.
func (st *stage) splitGeneric(s string, next func(string)) {
	spans := st.matches(s)
	type piece struct {
		a, b  int
		match bool
	}
	pieces := make([]piece, 0, 2*len(spans)+1)
	pos := 0
	for _, m := range spans {
		if m[0] > pos {
			pieces = append(pieces, piece{pos, m[0], st.invert})
		}
		pieces = append(pieces, piece{m[0], m[1], !st.invert})
		pos = m[1]
	}
	if pos < len(s) {
		pieces = append(pieces, piece{pos, len(s), st.invert})
	}
	switch st.behavior {
	case behaviorIsolated:
		for _, p := range pieces {
			next(s[p.a:p.b])
		}
	case behaviorRemoved:
		for _, p := range pieces {
			if !p.match {
				next(s[p.a:p.b])
			}
		}
	case behaviorMergedWithPrevious:
		// A match is glued to the end of the piece before it, unless that
		// piece is itself a match.
		start := 0
		for i, p := range pieces {
			if i+1 < len(pieces) && pieces[i+1].match && !p.match {
				continue
			}
			next(s[start:p.b])
			start = p.b
		}
	case behaviorMergedWithNext:
		// A match is glued to the start of the piece after it, unless that
		// piece is itself a match.
		start := 0
		for i, p := range pieces {
			if p.match && i+1 < len(pieces) && !pieces[i+1].match {
				continue
			}
			next(s[start:p.b])
			start = p.b
		}
	case behaviorContiguous:
		// Adjacent matches are joined into one piece.
		start := 0
		for i, p := range pieces {
			if p.match && i+1 < len(pieces) && pieces[i+1].match {
				continue
			}
			next(s[start:p.b])
			start = p.b
		}
	}
}
