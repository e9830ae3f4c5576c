package openai

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/grammar"
)

// toolCallGrammar is the grammar of one call of one of tools:
// {"name": <one of the names>, "arguments": <that tool's parameters>}. A
// tool whose parameter schema uses keywords the grammar does not handle
// gets any JSON object as arguments.
func toolCallGrammar(tools []tool) (*grammar.Grammar, error) {
	var alts []json.RawMessage
	for _, t := range tools {
		params := t.Function.Parameters
		if len(params) == 0 || string(params) == "null" {
			params = json.RawMessage(`{"type": "object"}`)
		} else if _, err := grammar.FromJSONSchema(params); err != nil {
			params = json.RawMessage(`{"type": "object"}`)
		}
		name, _ := json.Marshal(t.Function.Name)
		alts = append(alts, json.RawMessage(fmt.Sprintf(`{"type": "object", "properties": {"name": {"const": %s}, "arguments": %s}, "required": ["name", "arguments"], "additionalProperties": false}`, name, params)))
	}
	schema, _ := json.Marshal(map[string]any{"anyOf": alts})
	g, err := grammar.FromJSONSchema(schema)
	if err != nil {
		return nil, invalid("tools: %v", err)
	}
	return g, nil
}

// constrain makes the decode-loop constraint of g: the document alone, or,
// for a forced tool call, the document between the template's call tags.
func (s *Server) constrain(g *grammar.Grammar, toolCall bool) engine.Constraint {
	m := g.NewMatcher(s.b.Vocab())
	if !toolCall {
		return m // its mask allows end-of-text once the document is complete
	}
	tok := s.b.Tokenizer()
	c := &sequence{doc: m, eos: tok.EOS()}
	c.prefix = tok.Encode("<tool_call>\n", true)
	c.suffix = tok.Encode("\n</tool_call>", true)
	if tok.AddsBOS() {
		c.prefix, c.suffix = c.prefix[1:], c.suffix[1:]
	}
	return c
}

// sequence forces the prefix tokens, then constrains the document to the
// grammar, then forces the suffix tokens, then allows only end-of-text.
type sequence struct {
	prefix, suffix []int
	doc            *grammar.Matcher
	eos            int
}

var negInf = float32(math.Inf(-1))

// only leaves tok alone allowed.
func only(logits []float32, tok int) {
	for i := range logits {
		if i != tok {
			logits[i] = negInf
		}
	}
}

func (c *sequence) Mask(logits []float32) {
	switch {
	case len(c.prefix) > 0:
		only(logits, c.prefix[0])
	case !c.doc.Done():
		c.doc.Mask(logits)
	case len(c.suffix) > 0:
		only(logits, c.suffix[0])
	default:
		only(logits, c.eos)
	}
}

func (c *sequence) Accept(tok int) error {
	switch {
	case len(c.prefix) > 0:
		if tok != c.prefix[0] {
			return fmt.Errorf("openai: constraint: token %d is not the forced %d", tok, c.prefix[0])
		}
		c.prefix = c.prefix[1:]
		return nil
	case !c.doc.Done():
		return c.doc.Accept(tok)
	case len(c.suffix) > 0:
		if tok != c.suffix[0] {
			return fmt.Errorf("openai: constraint: token %d is not the forced %d", tok, c.suffix[0])
		}
		c.suffix = c.suffix[1:]
		return nil
	}
	return fmt.Errorf("openai: constraint: token %d after the end of the document", tok)
}
