// Package chat renders conversations with a model's chat template and parses
// the model's tool calls out of its output.
//
// A Template runs the Jinja chat template a checkpoint ships (the
// chat_template of tokenizer_config.json, or tokenizer.chat_template of a
// GGUF), so real checkpoints see the prompts they saw with Hugging Face:
// system prompts, tool definitions ("tools"), assistant tool calls and tool
// results ("role": "tool") are laid out by the model's own template. A model
// without a template gets the built-in Granite markup (no tool support).
//
// Message content is user text, never markup: a user must not be able to close
// their turn and forge a system or assistant turn by writing
// "<|end_of_text|>" in a message. Encode therefore renders each content as a
// private placeholder first, checks that the template passed the placeholders
// through unchanged (it renders again with the real content and compares),
// and tokenizes the content spans so that special-token text in them stays
// plain text (tokenizer.EncodeMarked). A template that transforms content
// (trims it, slices it) falls back to rendering the real content, and then
// refuses content holding special-token text. Other user strings that reach
// the prompt (tool definitions, tool-call names and arguments) must not hold
// special-token text at all (ErrSpecialText).
package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ardanlabs/jinja"

	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// Errors a request can cause (bad input: INVALID_ARGUMENT at the edge).
var (
	// ErrTemplate means the template failed to render the request (for
	// example it raised an exception on an unsupported message order).
	ErrTemplate = errors.New("chat: the chat template could not render the conversation")
	// ErrRole means a message has a role other than system, user, assistant or tool.
	ErrRole = errors.New("chat: unknown role")
	// ErrSpecialText means a tool definition, tool name or argument holds the
	// text of a special token.
	ErrSpecialText = errors.New("chat: special-token text in a tool definition or call")
	// ErrTools means tools were given but the template does not render them.
	ErrTools = errors.New("chat: the model's chat template does not render tools")
	// ErrToolsLater means tools were given on a later turn of a kept
	// conversation, and the template renders them only at its start.
	ErrToolsLater = errors.New("chat: tools can be given on the first turn of a conversation only (the chat template shows them in its first system prompt)")
)

// Message is one turn of a conversation.
type Message struct {
	Role       string // system, user, assistant or tool
	Content    string
	ToolCalls  []ToolCall // assistant turns that called tools
	ToolCallID string     // tool results: the call they answer
	Name       string     // optional name of the author
}

// ToolCall is one call of a tool by the assistant.
type ToolCall struct {
	ID        string
	Name      string
	Arguments string // JSON text, as produced by the model
}

// Request is a conversation to render.
type Request struct {
	Messages []Message
	// Tools are the tool definitions as the client sent them (OpenAI
	// format: {"type": "function", "function": {"name", "description",
	// "parameters"}}); key order is kept, as templates serialise them.
	Tools []json.RawMessage
	// AddGenerationPrompt appends the opening of the assistant's turn.
	AddGenerationPrompt bool
}

// Template is a compiled chat template bound to a tokenizer. Safe for
// concurrent use.
type Template struct {
	tok     *tokenizer.Tokenizer
	jt      *jinja.Template
	source  string
	builtin bool
	bos     string
	eos     string
	special []string // special-token texts
}

// builtinSource is the markup used when a model ships no template: Granite
// role markup; tool results become a user turn wrapped in <tool_response>
// when the vocabulary has those tokens (wrap_tool).
const builtinSource = `{%- for message in messages -%}
{%- if message.role == 'tool' and wrap_tool -%}
{{- '<|start_of_role|>user<|end_of_role|><tool_response>' + message.content + '</tool_response><|end_of_text|>\n' -}}
{%- else -%}
{{- '<|start_of_role|>' + message.role + '<|end_of_role|>' + message.content + '<|end_of_text|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_of_role|>assistant<|end_of_role|>' -}}{%- endif -%}`

// New compiles source (a Jinja chat template) for tok. An empty source takes
// the tokenizer's own template; a model without one gets the built-in Granite
// markup, which needs the Granite role tokens in the vocabulary.
func New(tok *tokenizer.Tokenizer, source string) (*Template, error) {
	t := &Template{tok: tok, source: source}
	if t.source == "" {
		t.source = tok.ChatTemplate()
	}
	if t.source == "" {
		_, ok1 := tok.TokenID("<|start_of_role|>")
		_, ok2 := tok.TokenID("<|end_of_role|>")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: the model has no chat template and no Granite role tokens", tokenizer.ErrUnsupportedTemplate)
		}
		t.source, t.builtin = builtinSource, true
	}
	jt, err := jinja.Compile(t.source)
	if err != nil {
		return nil, fmt.Errorf("%w: compiling the chat template: %v", tokenizer.ErrUnsupportedTemplate, err)
	}
	t.jt = jt
	if id := tok.BOS(); id >= 0 {
		t.bos = tok.TokenString(id)
	}
	if id := tok.EOS(); id >= 0 {
		t.eos = tok.TokenString(id)
	}
	for _, a := range tok.SpecialTokens() {
		if a.Content != "" {
			t.special = append(t.special, a.Content)
		}
	}
	return t, nil
}

// Source returns the template's Jinja source.
func (t *Template) Source() string { return t.source }

// Builtin reports whether the template is the built-in markup.
func (t *Template) Builtin() bool { return t.builtin }

// SupportsTools reports whether the template renders tool definitions.
func (t *Template) SupportsTools() bool { return !t.builtin && strings.Contains(t.source, "tools") }

// Placeholders wrap a content index in private-use characters no tokenizer
// merges with their neighbours' text.
const (
	phOpen  = "\ue000"
	phClose = "\ue001"
)

// Render returns the rendered prompt text.
func (t *Template) Render(r Request) (string, error) {
	if err := t.check(r); err != nil {
		return "", err
	}
	return t.render(r, nil)
}

// Encode renders r and tokenizes it so that only the template's own markup
// becomes control tokens (see the package comment).
func (t *Template) Encode(r Request) ([]int, error) {
	if err := t.check(r); err != nil {
		return nil, err
	}
	real, err := t.render(r, nil)
	if err != nil {
		return nil, err
	}
	contents := make([]string, len(r.Messages))
	usable := true
	for i, m := range r.Messages {
		contents[i] = m.Content
		if strings.Contains(m.Content, phOpen) || strings.Contains(m.Content, phClose) {
			usable = false
		}
	}
	if usable {
		marked, err := t.render(r, contents)
		if err == nil {
			if text, plain, ok := substitute(marked, contents); ok && text == real {
				return t.tok.EncodeMarked(text, plain), nil
			}
		}
	}
	// The template changed the content (or the content holds placeholder
	// characters): render the real text and refuse special-token text in it.
	for i, m := range r.Messages {
		if s := t.specialIn(m.Content); s != "" {
			return nil, fmt.Errorf("%w: messages[%d].content holds %q, which this model's template cannot keep as plain text", ErrSpecialText, i, s)
		}
	}
	return t.tok.EncodeMarked(real, nil), nil
}

// Turn stubs: a continuation is rendered after a stand-in first exchange and
// cut after the stand-in assistant text, so it starts with the template's
// closing of the previous assistant turn.
const (
	stubUser      = "\ue002u"
	stubAssistant = "\ue002a"
)

// EncodeTurn renders r's messages as the continuation of a conversation that
// a session already holds (up to the end of the assistant's last reply): the
// template's closing of that reply, the new turns and, with
// AddGenerationPrompt, the opening of the next reply. Content stays plain
// text as in Encode. A template that does not render a conversation as a
// sequence of turns (a later turn changes an earlier one) is refused with
// ErrTemplate.
func (t *Template) EncodeTurn(r Request) ([]int, error) {
	full := r
	full.Messages = append([]Message{{Role: "user", Content: stubUser}, {Role: "assistant", Content: stubAssistant}}, r.Messages...)
	if err := t.check(full); err != nil {
		return nil, err
	}
	real, err := t.render(full, nil)
	if err != nil {
		return nil, err
	}
	if len(r.Tools) > 0 {
		// Tools the template renders before the cut would be dropped.
		bare := full
		bare.Tools = nil
		plain, err := t.render(bare, nil)
		if err != nil {
			return nil, err
		}
		if tail := func(x string) string { return x[strings.Index(x, stubAssistant):] }; tail(plain) == tail(real) {
			return nil, ErrToolsLater
		}
	}
	cut := strings.Index(real, stubAssistant)
	if cut < 0 || strings.Count(real, stubAssistant) != 1 {
		return nil, fmt.Errorf("%w: the template does not render a conversation turn by turn", ErrTemplate)
	}
	cut += len(stubAssistant)
	contents := make([]string, len(full.Messages))
	usable := true
	for i, m := range full.Messages {
		contents[i] = m.Content
		if i >= 2 && (strings.Contains(m.Content, phOpen) || strings.Contains(m.Content, phClose) || strings.Contains(m.Content, "\ue002")) {
			usable = false
		}
	}
	if usable {
		if marked, err := t.render(full, contents); err == nil {
			if text, plain, ok := substitute(marked, contents); ok && text == real {
				var spans []tokenizer.Span
				for _, sp := range plain {
					if sp.Start >= cut {
						spans = append(spans, tokenizer.Span{Start: sp.Start - cut, End: sp.End - cut})
					}
				}
				return t.tok.EncodeMarked(real[cut:], spans)[t.bosLen():], nil
			}
		}
	}
	for i, m := range r.Messages {
		if s := t.specialIn(m.Content); s != "" {
			return nil, fmt.Errorf("%w: messages[%d].content holds %q, which this model's template cannot keep as plain text", ErrSpecialText, i, s)
		}
	}
	return t.tok.EncodeMarked(real[cut:], nil)[t.bosLen():], nil
}

// bosLen is the number of BOS ids the tokenizer puts before an encoding.
func (t *Template) bosLen() int {
	if t.tok.AddsBOS() {
		return 1
	}
	return 0
}

// substitute replaces the placeholders in marked by the contents, returning
// the text and the spans the contents occupy. ok is false when a placeholder
// is malformed (the template altered it).
func substitute(marked string, contents []string) (text string, plain []tokenizer.Span, ok bool) {
	var b strings.Builder
	for {
		i := strings.Index(marked, phOpen)
		if i < 0 {
			if strings.Contains(marked, phClose) {
				return "", nil, false
			}
			b.WriteString(marked)
			return b.String(), plain, true
		}
		if strings.Contains(marked[:i], phClose) {
			return "", nil, false
		}
		b.WriteString(marked[:i])
		rest := marked[i+len(phOpen):]
		j := strings.Index(rest, phClose)
		if j < 0 {
			return "", nil, false
		}
		k, err := strconv.Atoi(rest[:j])
		if err != nil || k < 0 || k >= len(contents) {
			return "", nil, false
		}
		if c := contents[k]; c != "" {
			plain = append(plain, tokenizer.Span{Start: b.Len(), End: b.Len() + len(c)})
			b.WriteString(c)
		}
		marked = rest[j+len(phClose):]
	}
}

// check validates roles and the user strings that are not content.
func (t *Template) check(r Request) error {
	if len(r.Tools) > 0 && !t.SupportsTools() {
		return ErrTools
	}
	for i, m := range r.Messages {
		switch m.Role {
		case "system", "user", "assistant", "tool":
		default:
			return fmt.Errorf("%w: messages[%d] has role %q (want system, user, assistant or tool)", ErrRole, i, clip(m.Role, 40))
		}
		for j, c := range m.ToolCalls {
			for _, s := range []string{c.ID, c.Name, c.Arguments, jsonText(c.Arguments)} {
				if sp := t.specialIn(s); sp != "" {
					return fmt.Errorf("%w: messages[%d].tool_calls[%d] holds %q", ErrSpecialText, i, j, sp)
				}
			}
		}
		for _, s := range []string{m.Name, m.ToolCallID} {
			if sp := t.specialIn(s); sp != "" {
				return fmt.Errorf("%w: messages[%d] holds %q in its name or tool_call_id", ErrSpecialText, i, sp)
			}
		}
	}
	for i, tool := range r.Tools {
		// The raw text and the decoded strings: "\u003c|end_of_text|\u003e"
		// is "<|end_of_text|>" once a template serialises it again.
		for _, s := range []string{string(tool), jsonText(string(tool))} {
			if sp := t.specialIn(s); sp != "" {
				return fmt.Errorf("%w: tools[%d] holds %q", ErrSpecialText, i, sp)
			}
		}
	}
	return nil
}

// jsonText is every key and string value of a JSON text, decoded, joined by
// newlines ("" when it is not JSON).
func jsonText(s string) string {
	dec := json.NewDecoder(strings.NewReader(s))
	var b strings.Builder
	for {
		tok, err := dec.Token()
		if err != nil {
			return b.String()
		}
		if str, ok := tok.(string); ok {
			b.WriteString(str)
			b.WriteByte('\n')
		}
	}
}

func (t *Template) specialIn(s string) string {
	if !strings.Contains(s, "<") && !strings.Contains(s, "[") {
		// Fast path: Granite's and most models' special tokens start with one of these.
		ok := true
		for _, sp := range t.special {
			if sp[0] != '<' && sp[0] != '[' {
				ok = false
				break
			}
		}
		if ok {
			return ""
		}
	}
	for _, sp := range t.special {
		if strings.Contains(s, sp) {
			return sp
		}
	}
	return ""
}

// render runs the template; with marks, message i's content is replaced by
// its placeholder.
func (t *Template) render(r Request, marks []string) (string, error) {
	msgs := make([]jinja.Value, len(r.Messages))
	for i, m := range r.Messages {
		d := jinja.NewDict()
		dict := d.AsDict()
		dict.Set("role", jinja.NewString(m.Role))
		content := m.Content
		if marks != nil && content != "" {
			// Empty content has nothing to protect and stays empty (a
			// template may test it for truth).
			content = phOpen + strconv.Itoa(i) + phClose
		}
		dict.Set("content", jinja.NewString(content))
		if m.Name != "" {
			dict.Set("name", jinja.NewString(m.Name))
		}
		if m.ToolCallID != "" {
			dict.Set("tool_call_id", jinja.NewString(m.ToolCallID))
		}
		if len(m.ToolCalls) > 0 {
			calls := make([]jinja.Value, len(m.ToolCalls))
			for j, c := range m.ToolCalls {
				fn := jinja.NewDict()
				fn.AsDict().Set("name", jinja.NewString(c.Name))
				// Arguments go to the template parsed, as Hugging Face and
				// vLLM pass them (a template may serialise them with tojson);
				// text that is not JSON stays a string.
				args, err := fromJSON([]byte(c.Arguments))
				if err != nil {
					args = jinja.NewString(c.Arguments)
				}
				fn.AsDict().Set("arguments", args)
				call := jinja.NewDict()
				if c.ID != "" {
					call.AsDict().Set("id", jinja.NewString(c.ID))
				}
				call.AsDict().Set("type", jinja.NewString("function"))
				call.AsDict().Set("function", fn)
				calls[j] = call
			}
			dict.Set("tool_calls", jinja.NewList(calls))
		}
		msgs[i] = d
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(msgs),
		"add_generation_prompt": jinja.NewBool(r.AddGenerationPrompt),
		"bos_token":             jinja.NewString(t.bos),
		"eos_token":             jinja.NewString(t.eos),
	}
	if len(r.Tools) > 0 {
		tools := make([]jinja.Value, len(r.Tools))
		for i, raw := range r.Tools {
			v, err := fromJSON(raw)
			if err != nil {
				return "", fmt.Errorf("%w: tools[%d] is not valid JSON: %v", ErrTemplate, i, err)
			}
			tools[i] = v
		}
		data["tools"] = jinja.NewList(tools)
	} else {
		data["tools"] = jinja.None()
	}
	if t.builtin {
		_, ok1 := t.tok.TokenID("<tool_response>")
		_, ok2 := t.tok.TokenID("</tool_response>")
		data["wrap_tool"] = jinja.NewBool(ok1 && ok2)
	}
	out, err := t.jt.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	return out, nil
}

// fromJSON converts JSON to a template value keeping object key order (a
// template's tojson then writes keys in the order the client sent them, as
// Python's json.dumps does for a parsed dict).
func fromJSON(b []byte) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := readValue(dec)
	if err != nil {
		return jinja.Undefined(), err
	}
	if _, err := dec.Token(); err == nil {
		return jinja.Undefined(), errors.New("trailing data after the JSON value")
	}
	return v, nil
}

func readValue(dec *json.Decoder) (jinja.Value, error) {
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch x := tok.(type) {
	case json.Delim:
		switch x {
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				k, _ := kt.(string)
				v, err := readValue(dec)
				if err != nil {
					return jinja.Undefined(), err
				}
				d.AsDict().Set(k, v)
			}
			_, err := dec.Token() // '}'
			return d, err
		case '[':
			var items []jinja.Value
			for dec.More() {
				v, err := readValue(dec)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, v)
			}
			_, err := dec.Token() // ']'
			return jinja.NewList(items), err
		}
		return jinja.Undefined(), fmt.Errorf("unexpected %v", x)
	default:
		return jinja.FromGoValue(x), nil
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
