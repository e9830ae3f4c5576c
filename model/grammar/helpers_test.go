package grammar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// testSchemas are the grammars the walk, twin and fuzz tests run over.
var testSchemas = []struct{ name, schema string }{
	{"person", `{"type":"object","properties":{
		"name":{"type":"string"},
		"age":{"type":"integer"},
		"email":{"type":["string","null"]},
		"tags":{"type":"array","items":{"type":"string"},"maxItems":3},
		"address":{"type":"object","properties":{"street":{"type":"string"},"zip":{"type":"string"}},
			"required":["street"],"additionalProperties":false},
		"score":{"type":"number"},
		"ok":{"type":"boolean"}},
		"required":["name","age"],"additionalProperties":false}`},
	{"enum", `{"type":"object","properties":{
		"color":{"enum":["red","green","blue","日本"]},
		"n":{"enum":[1,12,123,2.5,-0.5]},
		"flag":{"const":true},
		"kind":{"const":"x\"y"},
		"mixed":{"enum":["a",1,null,{"k":[1,2]},[true]]}},
		"required":["color","flag"]}`},
	{"tree", `{"$defs":{"node":{"type":"object","properties":{
		"value":{"type":"number"},
		"children":{"type":"array","items":{"$ref":"#/$defs/node"}}},
		"required":["value"]}},"$ref":"#/$defs/node"}`},
	{"anyOf", `{"anyOf":[
		{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},
		{"type":"object","properties":{"b":{"type":"string"}},"required":["b"]},
		{"type":"array","items":{"type":"number"},"minItems":1,"maxItems":2}]}`},
	{"oneOf", `{"type":"object","properties":{"shape":{"oneOf":[
		{"type":"object","properties":{"kind":{"const":"circle"},"r":{"type":"number"}},"required":["kind","r"]},
		{"type":"object","properties":{"kind":{"const":"rect"},"w":{"type":"integer"},"h":{"type":"integer"}},"required":["kind"]}]}},
		"required":["shape"]}`},
	{"map", `{"type":"object","additionalProperties":{"type":"integer"}}`},
	{"any", `{}`},
	{"number", `{"type":"number"}`},
	{"strings", `{"type":"array","items":{"type":"string"},"minItems":2,"maxItems":4}`},
	{"json_object", `{"type":"json_object"}`},
}

func mustGrammar(t testing.TB, schema string) *Grammar {
	t.Helper()
	g, err := FromJSONSchema([]byte(schema))
	if err != nil {
		t.Fatalf("FromJSONSchema(%s): %v", schema, err)
	}
	return g
}

// tinyVocab is a small vocabulary with every single byte (so every state has
// a token), JSON punctuation combinations, UTF-8 characters and fragments of
// them, digits, whitespace runs, keys of the test schemas, an empty token and
// special tokens. The EOS token is the last.
func tinyVocab() *Vocab {
	var toks []string
	for b := range 256 {
		toks = append(toks, string([]byte{byte(b)}))
	}
	toks = append(toks,
		`",`, `"}`, `{"`, `]}`, `":`, `": "`, `", "`, `"]`, `["`, `[{`, `}]`, `},{`, `{}`, `[]`, `"\n`,
		`\"`, `\\`, `\u00`, `\n`, `\ud83d`, `",\n  "`, `}\n`, `,\n`, "{\n  \"", `":"`, `","`, `"],`, `},`, `"]}`,
		"null", "true", "false", "nu", "ll", "tr", "ue", "fal", "se", "nul",
		"12", "3.14", "-1", "1e", "e+", "E-", ".5", "00", "10", "99", "0.", "1,", "2]", "3}", "0}", "7,\"",
		" ", "  ", "    ", "\n", "\n  ", "\n    ", "\t", "\r\n", strings.Repeat(" ", 16), strings.Repeat(" ", 20),
		"é", "ü", "日本", "語", "😀", "\xf0\x9f", "\x98\x80", "\xe6\x97", "\xa5", "é\"", " 日",
		"name", `"name`, `name"`, "age", `"age":`, "email", "tags", "address", "street", "zip", "score", "ok",
		"color", "red", "green", "blue", "flag", "kind", "mixed", "value", "children", "shape", "circle", "rect",
		`"circle"`, `"kind":"`, "hello", " world", "a", "b", `{"a":`, `{"b":"`, `"k":[1,2]}`, `x\"y"`,
	)
	n := len(toks)
	tokens := make([][]byte, n+4)
	for i, s := range toks {
		tokens[i] = []byte(s)
	}
	tokens[n] = nil // an empty (non-special) token: never allowed
	tokens[n+1] = []byte("<|start|>")
	tokens[n+2] = []byte("<|pad|>")
	tokens[n+3] = []byte("<|end_of_text|>")
	special := make([]bool, n+4)
	special[n+1], special[n+2], special[n+3] = true, true, true
	return NewVocab(tokens, special, n+3)
}

// synthVocab is a deterministic byte-level-BPE-like vocabulary of n tokens
// (the last 64 special, the last of all EOS): every single byte; English-ish
// word pieces with and without a leading space and capitalised; numbers;
// punctuation combinations with quotes, braces, brackets, commas and colons;
// whitespace and newline+indent runs; multi-byte UTF-8 characters, words and
// partial sequences; escapes.
func synthVocab(n int) *Vocab {
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[string]bool{}
	var toks []string
	add := func(s string) {
		if len(toks) < n-64 && s != "" && !seen[s] {
			seen[s] = true
			toks = append(toks, s)
		}
	}
	for b := range 256 {
		add(string([]byte{byte(b)}))
	}
	for i := range 1000 {
		add(strconv.Itoa(i))
		add(" " + strconv.Itoa(i))
	}
	for i := range 100 {
		add(fmt.Sprintf("%02d", i))
		add(fmt.Sprintf(".%d", i))
	}
	for i := 1; i <= 32; i++ {
		add(strings.Repeat(" ", i))
		add("\n" + strings.Repeat(" ", i))
		if i <= 8 {
			add(strings.Repeat("\t", i))
			add("\n" + strings.Repeat("\t", i))
			add(strings.Repeat("\n", i))
		}
	}
	punct := []string{`"`, `{`, `}`, `[`, `]`, `,`, `:`, `.`, ` `, "\n", `(`, `)`, `;`, `'`, `\`, `-`}
	for _, a := range punct {
		for _, b := range punct {
			add(a + b)
			for _, c := range punct[:9] {
				add(a + b + c)
			}
		}
	}
	for _, s := range []string{`\n`, `\t`, `\"`, `\\`, `\u00`, `\u`, `\/`, `":"`, `": "`, `", "`, `","`, `":{"`,
		`":["`, `"},{"`, `"}]`, `null`, `true`, `false`, `":null`, `":true`, `":false`, `":0`, `":1`} {
		add(s)
	}
	for _, s := range []string{"name", "age", "email", "tags", "address", "street", "zip", "score", "value"} {
		add(s)
		add(`"` + s)
		add(`"` + s + `"`)
		add(`"` + s + `":`)
		add(`"` + s + `": "`)
		add(`,"` + s + `":`)
	}
	var runes []rune
	for r := rune(0xC0); r < 0x250; r++ {
		runes = append(runes, r)
	}
	for r := rune(0x391); r < 0x3CA; r++ {
		runes = append(runes, r)
	}
	for r := rune(0x410); r < 0x450; r++ {
		runes = append(runes, r)
	}
	for r := rune(0x3041); r < 0x3097; r++ {
		runes = append(runes, r)
	}
	for i := 0; i < 3000; i++ {
		runes = append(runes, rune(0x4E00+rng.IntN(0x5200)))
	}
	for r := rune(0x1F600); r < 0x1F650; r++ {
		runes = append(runes, r)
	}
	for _, r := range runes {
		s := string(r)
		add(s)
		add(" " + s)
		if len(s) >= 3 {
			add(s[:2])
			add(s[1:])
			add(s[:len(s)-1])
		}
	}
	for i := 0; i < 4000; i++ {
		k := 2 + rng.IntN(3)
		var sb strings.Builder
		for range k {
			sb.WriteRune(runes[rng.IntN(len(runes))])
		}
		add(sb.String())
	}
	cons := []string{"b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s", "t", "v", "w", "x", "z",
		"th", "ch", "sh", "st", "tr", "pr", "gr", "bl", "cl", "str", "ng", "nt", "rs", "ck"}
	vows := []string{"a", "e", "i", "o", "u", "y", "ea", "ou", "io", "ai", "ee", "oo", "é"}
	word := func() string {
		var sb strings.Builder
		for range 1 + rng.IntN(3) {
			sb.WriteString(cons[rng.IntN(len(cons))])
			sb.WriteString(vows[rng.IntN(len(vows))])
		}
		if rng.IntN(2) == 0 {
			sb.WriteString(cons[rng.IntN(len(cons))])
		}
		return sb.String()
	}
	tails := []string{`"`, `",`, `.`, `,`, `:`, `."`, `")`, `s`, `ed`, `ing`, `'s`, `\n`}
	for len(toks) < n-64 {
		w := word()
		switch r := rng.IntN(20); {
		case r < 8:
			add(" " + w)
		case r < 13:
			add(w)
		case r < 15:
			add(" " + strings.ToUpper(w[:1]) + w[1:])
		case r < 16:
			add(strings.ToUpper(w[:1]) + w[1:])
		case r < 18:
			add(w + tails[rng.IntN(len(tails))])
		default:
			add(`"` + w)
		}
	}
	tokens := make([][]byte, n)
	special := make([]bool, n)
	for i, s := range toks {
		tokens[i] = []byte(s)
	}
	for i := len(toks); i < n; i++ {
		tokens[i] = fmt.Appendf(nil, "<|special_%d|>", i-len(toks))
		special[i] = true
	}
	return NewVocab(tokens, special, n-1)
}

var (
	tinyOnce  sync.Once
	tinyV     *Vocab
	synthOnce sync.Once
	synth3K   *Vocab
)

func testVocabs() []*Vocab {
	tinyOnce.Do(func() { tinyV = tinyVocab() })
	synthOnce.Do(func() { synth3K = synthVocab(3000) })
	return []*Vocab{tinyV, synth3K}
}

// closingBias favours tokens that close things (quotes, braces, brackets, end
// of text) and disfavours openers and whitespace, so random walks past a
// length finish their document.
func closingBias(v *Vocab) []float32 {
	bias := make([]float32, v.n)
	for i, t := range v.tokens {
		switch {
		case i == v.eos:
			bias[i] = 40
		case bytes.ContainsAny(t, "{["):
			bias[i] = -10
		case bytes.ContainsAny(t, "\"}]"):
			bias[i] = 10
		case len(bytes.TrimLeft(t, " \t\r\n")) == 0:
			bias[i] = -10
		}
	}
	return bias
}

type walkOpts struct {
	steps   int  // give up after this many tokens
	closeAt int  // switch to the closing bias after this many tokens
	ref     bool // compare every mask with the reference twin
}

// randomWalk samples tokens under the mask (argmax of random logits) until
// EOS. It checks at every step that the mask allows something, agrees with
// AllowedCount (and with the reference when asked), and that Accept takes
// the sampled token. It returns the document and whether EOS was reached.
func randomWalk(t testing.TB, g *Grammar, v *Vocab, rng *rand.Rand, o walkOpts) ([]byte, bool) {
	t.Helper()
	mt := g.NewMatcher(v)
	logits := make([]float32, v.n)
	bias := closingBias(v)
	var doc []byte
	for step := 0; step < o.steps; step++ {
		for i := range logits {
			logits[i] = rng.Float32() * 4
			if step >= o.closeAt {
				logits[i] += bias[i]
			}
		}
		mt.Mask(logits)
		best, allowed := -1, 0
		for i, l := range logits {
			if l == negInf {
				continue
			}
			allowed++
			if best < 0 || l > logits[best] {
				best = i
			}
		}
		if allowed == 0 {
			t.Fatalf("no token allowed after %q", doc)
		}
		if allowed != mt.AllowedCount() {
			t.Fatalf("AllowedCount %d, mask allows %d, after %q", mt.AllowedCount(), allowed, doc)
		}
		if o.ref {
			want := refMask(mt)
			for i, l := range logits {
				if (l != negInf) != want[i] {
					t.Fatalf("after %q: token %d %q: mask allows=%v, reference=%v", doc, i, v.tokens[i], l != negInf, want[i])
				}
			}
		}
		if allowed == 1 && best == v.eos && !mt.Done() {
			t.Fatalf("only EOS allowed but not Done after %q", doc)
		}
		if err := mt.Accept(best); err != nil {
			t.Fatalf("Accept(%d %q) after %q: %v", best, v.tokens[best], doc, err)
		}
		if best == v.eos {
			if !mt.Done() {
				t.Fatalf("EOS accepted but not Done after %q", doc)
			}
			return doc, true
		}
		doc = append(doc, v.tokens[best]...)
	}
	return doc, false
}

// checkDoc checks doc with encoding/json and against the schema with
// validateSchema (an independent validator of the supported subset).
func checkDoc(t testing.TB, schema string, doc []byte) {
	t.Helper()
	if !json.Valid(doc) || !utf8.Valid(doc) {
		t.Fatalf("not valid JSON / UTF-8: %q", doc)
	}
	var anyDoc any
	if err := json.Unmarshal(doc, &anyDoc); err != nil {
		t.Fatalf("encoding/json: %v: %q", err, doc)
	}
	s, err := parseJSON([]byte(schema), false)
	if err != nil {
		t.Fatal(err)
	}
	s, jsonObject := unwrap(s)
	if jsonObject {
		s = &jval{kind: '{', keys: []string{"type"}, vals: []*jval{{kind: 's', str: "object"}}}
	}
	d, err := parseJSON(doc, true)
	if err != nil {
		t.Fatalf("parse %q: %v", doc, err)
	}
	if err := validateSchema(s, s, d, "$"); err != nil {
		t.Fatalf("document %q does not match the schema: %v", doc, err)
	}
}

// validateSchema is a plain validator for the supported keywords under JSON
// Schema semantics (open objects, oneOf exactly one), plus the generator's
// promise that declared properties come in schema order.
func validateSchema(root, s, d *jval, at string) error {
	switch s.kind {
	case 'b':
		if !s.b {
			return fmt.Errorf("%s: schema false", at)
		}
		return nil
	case '{':
	default:
		return fmt.Errorf("bad schema")
	}
	if r := s.get("$ref"); r != nil {
		target := root
		if frag := strings.TrimPrefix(r.str, "#"); frag != "" {
			for _, tok := range strings.Split(frag[1:], "/") {
				target = target.get(tok)
			}
		}
		return validateSchema(root, target, d, at)
	}
	if a := s.get("allOf"); a != nil {
		for _, x := range a.items {
			if err := validateSchema(root, x, d, at); err != nil {
				return err
			}
		}
	}
	if a := s.get("anyOf"); a != nil {
		ok := false
		for _, x := range a.items {
			ok = ok || validateSchema(root, x, d, at) == nil
		}
		if !ok {
			return fmt.Errorf("%s: no anyOf alternative matches", at)
		}
	}
	if a := s.get("oneOf"); a != nil {
		n := 0
		for _, x := range a.items {
			if validateSchema(root, x, d, at) == nil {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: %d oneOf alternatives match", at, n)
		}
	}
	if e := s.get("enum"); e != nil {
		ok := false
		for _, x := range e.items {
			ok = ok || jsonEqual(x, d)
		}
		if !ok {
			return fmt.Errorf("%s: not in enum", at)
		}
	}
	if c := s.get("const"); c != nil && !jsonEqual(c, d) {
		return fmt.Errorf("%s: not the const", at)
	}
	if ty := s.get("type"); ty != nil {
		names := []*jval{ty}
		if ty.kind == '[' {
			names = ty.items
		}
		ok := false
		for _, n := range names {
			switch n.str {
			case "object":
				ok = ok || d.kind == '{'
			case "array":
				ok = ok || d.kind == '['
			case "string":
				ok = ok || d.kind == 's'
			case "number":
				ok = ok || d.kind == 'n'
			case "integer":
				ok = ok || d.kind == 'n' && isInteger(d.num)
			case "boolean":
				ok = ok || d.kind == 'b'
			case "null":
				ok = ok || d.kind == 'z'
			}
		}
		if !ok {
			return fmt.Errorf("%s: type is not %s", at, appendCompact(nil, ty))
		}
	}
	switch d.kind {
	case '{':
		props := s.get("properties")
		last := -1
		for i, k := range d.keys {
			var ps *jval
			if props != nil {
				for j, pk := range props.keys {
					if pk == k {
						ps = props.vals[j]
						if j <= last {
							return fmt.Errorf("%s: property %q out of schema order or repeated", at, k)
						}
						last = j
					}
				}
			}
			if ps == nil {
				if ap := s.get("additionalProperties"); ap != nil {
					ps = ap
				} else {
					ps = &jval{kind: 'b', b: true}
				}
			}
			if err := validateSchema(root, ps, d.vals[i], at+"."+k); err != nil {
				return err
			}
		}
		if r := s.get("required"); r != nil {
			for _, name := range r.items {
				if d.get(name.str) == nil {
					return fmt.Errorf("%s: required %q missing", at, name.str)
				}
			}
		}
	case '[':
		if it := s.get("items"); it != nil {
			for i, x := range d.items {
				if err := validateSchema(root, it, x, at+"["+strconv.Itoa(i)+"]"); err != nil {
					return err
				}
			}
		}
		if mn := s.get("minItems"); mn != nil {
			if n, _ := strconv.Atoi(mn.num); len(d.items) < n {
				return fmt.Errorf("%s: fewer than %d items", at, n)
			}
		}
		if mx := s.get("maxItems"); mx != nil {
			if n, _ := strconv.Atoi(mx.num); len(d.items) > n {
				return fmt.Errorf("%s: more than %d items", at, n)
			}
		}
	}
	return nil
}
