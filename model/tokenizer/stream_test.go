package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func streamAll(tok *Tokenizer, ids []int) (pieces []string, all string) {
	d := tok.NewStreamDecoder()
	var b strings.Builder
	for _, id := range ids {
		s := d.Add(id)
		pieces = append(pieces, s)
		b.WriteString(s)
	}
	f := d.Flush()
	pieces = append(pieces, f)
	b.WriteString(f)
	return pieces, b.String()
}

func TestStreamDecoder(t *testing.T) {
	tok := fixtureTokenizer(t)
	texts := []string{
		"emoji 🙂🚀 and accents: naïve façade, Ünïcödé",
		"café ☕ 日本語のテキスト",
		"👩‍👩‍👧‍👦 family, 🇯🇵 flag",
		"plain ascii",
		"<|start_of_role|>user<|end_of_role|>日本<|end_of_text|>\n",
	}
	for _, text := range texts {
		ids := tok.Encode(text, true)
		pieces, all := streamAll(tok, ids)
		if whole := tok.Decode(ids); all != whole || all != text {
			t.Errorf("stream of %q = %q, Decode = %q", text, all, whole)
		}
		for i, p := range pieces {
			if !utf8.ValidString(p) {
				t.Errorf("%q: piece %d = %q is not valid UTF-8", text, i, p)
			}
		}
	}
	// The fixture spells 🙂 (F0 9F 99 82) with four byte tokens: nothing
	// comes out until the last one.
	ids := tok.Encode("🙂", false)
	if len(ids) != 4 {
		t.Fatalf("Encode(🙂) = %v, want 4 byte tokens", ids)
	}
	pieces, _ := streamAll(tok, ids)
	if pieces[0] != "" || pieces[1] != "" || pieces[2] != "" || pieces[3] != "🙂" || pieces[4] != "" {
		t.Errorf("pieces = %q", pieces)
	}
}

func TestStreamDecoderInvalid(t *testing.T) {
	tok := fixtureTokenizer(t)
	// Byte tokens have id == byte value in the fixture.
	tests := []struct {
		bytes []int
		want  string
	}{
		{[]int{0xE6, 0x97, 0xA5}, "日"},
		{[]int{0xFF, 'a'}, "\uFFFDa"},
		{[]int{0xE6, 0x97, 'x'}, "\uFFFD\uFFFDx"},
		{[]int{'a', 0xF0, 0x9F}, "a\uFFFD\uFFFD"}, // incomplete at the end: flushed
		{[]int{0x80, 0x80}, "\uFFFD\uFFFD"},
		{[]int{-1, 'a', 10000}, "a"},
	}
	for _, tc := range tests {
		_, got := streamAll(tok, tc.bytes)
		if got != tc.want {
			t.Errorf("stream %v = %q, want %q", tc.bytes, got, tc.want)
		}
		// Same as decoding the whole sequence and replacing invalid bytes.
		if whole := string([]rune(tok.Decode(tc.bytes))); whole != tc.want {
			t.Errorf("Decode %v = %q, want %q", tc.bytes, whole, tc.want)
		}
	}
	d := tok.NewStreamDecoder()
	if s := d.Add(0xE6); s != "" {
		t.Errorf("Add(E6) = %q", s)
	}
	d.Reset()
	if s := d.Add('a'); s != "a" {
		t.Errorf("after Reset: %q", s)
	}
	if s := d.Flush(); s != "" {
		t.Errorf("Flush = %q", s)
	}
}
