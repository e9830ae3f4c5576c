package grammar_test

import (
	"fmt"

	"github.com/switchyard-serving/switchyard/model/grammar"
)

// A toy decode loop: a vocabulary of a few tokens, a schema, and greedy
// decoding from logits that prefer the wrong tokens; the mask keeps the
// output a document of the schema.
func ExampleFromJSONSchema() {
	g, err := grammar.FromJSONSchema([]byte(`{
		"type": "object",
		"properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
		"required": ["ok", "n"],
		"additionalProperties": false}`))
	if err != nil {
		panic(err)
	}
	words := []string{`{"`, `ok`, `":`, `true`, `false`, `,"`, `n`, `7`, `}`, `hello`, `[`, ` `, "<eos>"}
	tokens := make([][]byte, len(words))
	for i, w := range words {
		tokens[i] = []byte(w)
	}
	special := make([]bool, len(words))
	special[len(words)-1] = true
	v := grammar.NewVocab(tokens, special, len(words)-1) // once per model

	m := g.NewMatcher(v) // once per generation
	var out []byte
	for !m.Done() {
		logits := []float32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -1, 12} // the "model" wants "<eos>", "[", "hello"…
		m.Mask(logits)
		best := 0
		for i, l := range logits {
			if l > logits[best] {
				best = i
			}
		}
		if err := m.Accept(best); err != nil {
			panic(err)
		}
		out = append(out, tokens[best]...)
	}
	fmt.Println(string(out))
	fmt.Println(g.Validate(out) == nil, g.Validate([]byte(`{"n":7,"ok":true}`)) == nil)
	// Output:
	// {"ok":false,"n":7}
	// true false
}
