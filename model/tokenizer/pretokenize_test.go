package tokenizer

import (
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dlclark/regexp2/v2"
)

// Reference twins of the hand-written scanners: the same regexes run by a
// backtracking engine that supports the (?!\S) lookahead.
var twinPatterns = []struct {
	name    string
	kind    stageKind
	pattern string
}{
	{"gpt2", stageScanGPT2, RegexGPT2},
	{"cl100k-llamacpp", stageScanCL100K, regexCL100KExpanded},
	// regexp2 folds case with per-character lower-casing, which does not
	// map U+017F to "s"; spell out the HF (Oniguruma) folding instead.
	{"cl100k-hf", stageScanCL100KHF, strings.Replace(regexCL100KExpanded, `'[sS]`, `'[sSſ]`, 1)},
}

type twin struct {
	name string
	kind stageKind
	re   *regexp2.Regexp
}

func twins(t testing.TB) []twin {
	t.Helper()
	var out []twin
	for _, p := range twinPatterns {
		re, err := regexp2.Compile(p.pattern, regexp2.OptionMaxBacktrackingStackSize(-1))
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		out = append(out, twin{p.name, p.kind, re})
	}
	return out
}

func scanPieces(kind stageKind, s string) []string {
	pieces := []string{}
	scan := kind.scanner()
	for i := 0; i < len(s); {
		j := scan(s, i)
		if j <= i || j > len(s) {
			panic("scanner did not advance")
		}
		pieces = append(pieces, s[i:j])
		i = j
	}
	return pieces
}

func regexPieces(t testing.TB, re *regexp2.Regexp, s string) []string {
	t.Helper()
	idx, err := re.FindAllStringIndex(s, -1)
	if err != nil {
		t.Fatalf("regexp2 on %q: %v", s, err)
	}
	pieces := []string{}
	for _, m := range idx {
		pieces = append(pieces, s[m[0]:m[1]])
	}
	return pieces
}

// sanitize replaces each byte of an invalid UTF-8 sequence with \x01, which
// has the same class (other) and width as the scanners give such bytes.
func sanitize(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b := []byte(s)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			b[i] = 1
			n = 1
		}
		i += n
	}
	return string(b)
}

// checkTwin compares a scanner with its regexp2 twin on s.
func checkTwin(t testing.TB, tw twin, s string) {
	t.Helper()
	got := scanPieces(tw.kind, s)
	if strings.Join(got, "") != s {
		t.Fatalf("%s: pieces of %q do not tile it: %q", tw.name, s, got)
	}
	clean := sanitize(s)
	want := regexPieces(t, tw.re, clean)
	gotClean := scanPieces(tw.kind, clean)
	if !reflect.DeepEqual(gotClean, want) {
		t.Fatalf("%s on %q:\n got %q\nwant %q", tw.name, clean, gotClean, want)
	}
	// Invalid bytes must cut the text exactly where their stand-ins do.
	if clean != s {
		for i := range got {
			if len(got[i]) != len(gotClean[i]) {
				t.Fatalf("%s: invalid UTF-8 %q splits as %q, sanitized as %q", tw.name, s, got, gotClean)
			}
		}
	}
}

var preTokenizeSamples = []string{
	"", "a", " ", "  ", "   ", "\n", "\n\n\n", "\r\n", " \r\n ", "\t", "\t\t", " \t",
	"Hello world", "Hello, world! How's it going?", "I'm sure you're right; they've said we'll see, she'd know, it's fine. DON'T",
	"IT'S I'M WE'LL THEY'RE YOU'VE HE'D", "'s'S's 'll 'LL 'Ll", "'", "''", "'x", "don't''s",
	"  two leading spaces, and two trailing  ", " one leading space",
	"line one\nline two\n\nline four\r\nend", "tabs\tand\t\tmore tabs",
	"digits 0123456789 and 3.14159, 1,000,000 and 2025-10-02", "1234567", "x12345y", "½²³ ٣٤٥٦ Ⅻ",
	"café ☕ 日本", "emoji 🙂🚀 and accents: naïve façade, Ünïcödé", "e\u0301 combining",
	"symbols: #include <stdio.h> x+=1; a->b && c||d (ok) [yes] {no} @home ~50% $12.50",
	"<|start_of_role|>user<|end_of_role|>Hi there!<|end_of_text|>\n",
	"a\u00a0b\u3000c\u2028d\u0085e\u000bf\u000cg", "\u00a0\u00a0x", "   \n   x", "x \n\n y", "?\n\n", "!!\r\n\r\nA",
	"(hello) [world] .Net _under", "ſ 'ſ 'ſx", "\x00\x01\x7f", "\xff\xfe bad \xe2\x98 x", "a\xf0\x9f",
	"func main() {\n\tfmt.Println(\"hi\")\n}\n", "    indented\n        more\n",
}

func TestPreTokenizeTwins(t *testing.T) {
	for _, tw := range twins(t) {
		for _, s := range preTokenizeSamples {
			checkTwin(t, tw, s)
		}
	}
}

// randomText draws strings from an alphabet rich in the characters the
// regexes treat specially.
func randomText(r *rand.Rand, maxLen int) string {
	alphabet := []string{"a", "b", "Z", "s", "S", "t", "T", "r", "e", "E", "v", "m", "l", "L", "d", "D",
		"'", " ", " ", " ", "\t", "\n", "\r", "0", "7", "9", ".", ",", "!", "-", "(", "<", "|", ">", "\"",
		"\u00a0", "\u3000", "\u2028", "\u0085", "\v", "\f", "é", "ß", "日", "😀", "²", "½", "٣", "\u0301",
		"\ufffd", "ſ", "K", "\x1c", "\u200b", "\ufeff", "Ⅻ", "𝟘", "ǅ", "ʰ", "\xff", "\xe2\x98"}
	n := r.Intn(maxLen + 1)
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString(alphabet[r.Intn(len(alphabet))])
	}
	return b.String()
}

func TestPreTokenizeTwinsRandom(t *testing.T) {
	r := rand.New(rand.NewSource(42))
	tws := twins(t)
	n := 5000
	if testing.Short() {
		n = 500
	}
	for i := 0; i < n; i++ {
		s := randomText(r, 24)
		for _, tw := range tws {
			checkTwin(t, tw, s)
		}
	}
}

func FuzzPreTokenize(f *testing.F) {
	for _, s := range preTokenizeSamples {
		f.Add(s)
	}
	tws := twins(f)
	f.Fuzz(func(t *testing.T, s string) {
		for _, tw := range tws {
			checkTwin(t, tw, s)
		}
	})
}

// An unrecognised Split regex runs through regexp2 and must behave like
// the scanner of the equivalent known regex.
func TestRegexStageFallback(t *testing.T) {
	for _, p := range []struct {
		pattern string
		kind    stageKind
	}{
		{"(?:" + RegexGPT2 + ")", stageScanGPT2},
		{"(?:" + regexCL100KExpanded + ")", stageScanCL100K},
	} {
		st, err := newRegexStage(p.pattern, behaviorIsolated, false)
		if err != nil {
			t.Fatal(err)
		}
		if st.kind != stageRegex {
			t.Fatalf("pattern %q recognised as a known regex", p.pattern)
		}
		pre := preTokenizer{stages: []stage{st}}
		for _, s := range preTokenizeSamples {
			var got []string
			pre.run(s, func(x string) { got = append(got, x) })
			want := scanPieces(p.kind, s)
			if len(want) == 0 {
				want = nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("regexp2 stage %q on %q:\n got %q\nwant %q", p.pattern, s, got, want)
			}
		}
	}
	if _, err := newRegexStage("(unclosed", behaviorIsolated, false); err == nil {
		t.Error("invalid regex compiled")
	}
}

// Split behaviors, as documented for HF tokenizers' SplitDelimiterBehavior.
func TestSplitBehaviors(t *testing.T) {
	const text = "the-final--countdown"
	tests := []struct {
		behavior string
		invert   bool
		want     []string
	}{
		{"Removed", false, []string{"the", "final", "countdown"}},
		{"Isolated", false, []string{"the", "-", "final", "-", "-", "countdown"}},
		{"MergedWithPrevious", false, []string{"the-", "final-", "-", "countdown"}},
		{"MergedWithNext", false, []string{"the", "-final", "-", "-countdown"}},
		{"Contiguous", false, []string{"the", "-", "final", "--", "countdown"}},
		{"Removed", true, []string{"-", "-", "-"}},
	}
	for _, tc := range tests {
		b, err := parseBehavior(tc.behavior)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range []stage{
			{kind: stageLiteral, lit: "-", behavior: b, invert: tc.invert},
			mustRegexStage(t, "-", b, tc.invert),
		} {
			pre := preTokenizer{stages: []stage{st}}
			var got []string
			pre.run(text, func(x string) { got = append(got, x) })
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s invert=%v kind=%d: got %q, want %q", tc.behavior, tc.invert, st.kind, got, tc.want)
			}
		}
	}
	// HF Digits: runs of digits, or single digits.
	for _, tc := range []struct {
		b    splitBehavior
		want []string
	}{
		{behaviorContiguous, []string{"a", "123", "b", "4٣٤"}},
		{behaviorIsolated, []string{"a", "1", "2", "3", "b", "4", "٣", "٤"}},
	} {
		pre := preTokenizer{stages: []stage{{kind: stageDigits, behavior: tc.b}}}
		var got []string
		pre.run("a123b4٣٤", func(x string) { got = append(got, x) })
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Digits %d: got %q, want %q", tc.b, got, tc.want)
		}
	}
	if _, err := parseBehavior("Sideways"); err == nil {
		t.Error("unknown behavior accepted")
	}
}

func mustRegexStage(t *testing.T, pattern string, b splitBehavior, invert bool) stage {
	t.Helper()
	st, err := newRegexStage(pattern, b, invert)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
