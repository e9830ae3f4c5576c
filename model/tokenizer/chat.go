package tokenizer

import (
	"fmt"
	"strings"
)

// Message is one chat turn.
type Message struct {
	Role    string
	Content string
}

// Granite chat markup.
const (
	startOfRole   = "<|start_of_role|>"
	endOfRole     = "<|end_of_role|>"
	endOfText     = "<|end_of_text|>"
	toolResponse  = "<tool_response>"
	toolResponseE = "</tool_response>"
)

// ApplyChat renders msgs with the model's chat template. Only Granite
// markup is supported (no Jinja engine): the template must contain
// "<|start_of_role|>", or be empty with "<|start_of_role|>" and
// "<|end_of_role|>" in the vocabulary. Each message renders as
//
//	<|start_of_role|>{role}<|end_of_role|>{content}<|end_of_text|>\n
//
// and the generation prompt as "<|start_of_role|>assistant<|end_of_role|>".
// Roles are system, user, assistant and tool. A tool result is rendered as
// a user turn "<tool_response>{content}</tool_response>" when the
// vocabulary has those tokens and the template mentions them (or is
// empty); otherwise it keeps the role "tool", which is what a template
// without tool handling (such as the test fixture's) produces.
func (t *Tokenizer) ApplyChat(msgs []Message, addGenerationPrompt bool) (string, error) {
	segs, err := t.chatSegments(msgs, addGenerationPrompt)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, s := range segs {
		b.WriteString(s.text)
	}
	return b.String(), nil
}

// EncodeChat renders msgs as ApplyChat does and tokenizes the result so that
// only the template's own markup becomes control tokens: special-token text
// inside a message's content (or role) is tokenized as plain text, so a user
// cannot close their turn and forge a system or assistant turn. For content
// without special-token text the ids equal Encode(ApplyChat(msgs), true).
func (t *Tokenizer) EncodeChat(msgs []Message, addGenerationPrompt bool) ([]int, error) {
	segs, err := t.chatSegments(msgs, addGenerationPrompt)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, 64)
	if t.addBOS && t.bos >= 0 {
		out = append(out, t.bos)
	}
	for _, s := range segs {
		out = t.encodeInto(out, s.text, s.markup)
	}
	return out, nil
}

// chatSegment is a piece of a rendered chat: template markup (control tokens)
// or text from a message.
type chatSegment struct {
	text   string
	markup bool
}

func (t *Tokenizer) chatSegments(msgs []Message, addGenerationPrompt bool) ([]chatSegment, error) {
	tmpl := t.chatTemplate
	granite := strings.Contains(tmpl, startOfRole)
	if tmpl == "" {
		_, ok1 := t.TokenID(startOfRole)
		_, ok2 := t.TokenID(endOfRole)
		granite = ok1 && ok2
	}
	if !granite {
		if tmpl == "" {
			return nil, fmt.Errorf("%w: the model has no chat template and no Granite role tokens", ErrUnsupportedTemplate)
		}
		return nil, fmt.Errorf("%w: only Granite <|start_of_role|> markup is rendered (template starts %q)", ErrUnsupportedTemplate, truncate(tmpl, 60))
	}
	_, ok1 := t.TokenID(toolResponse)
	_, ok2 := t.TokenID(toolResponseE)
	wrapTool := ok1 && ok2 && (tmpl == "" || strings.Contains(tmpl, "tool_response"))

	var segs []chatSegment
	add := func(text string, markup bool) {
		if text != "" {
			segs = append(segs, chatSegment{text, markup})
		}
	}
	for i, m := range msgs {
		role := m.Role
		switch role {
		case "system", "user", "assistant":
		case "tool":
			if wrapTool {
				role = "user"
			}
		default:
			return nil, fmt.Errorf("%w: message %d has role %q (want system, user, assistant or tool)", ErrUnknownRole, i, truncate(m.Role, 40))
		}
		add(startOfRole, true)
		add(role, false)
		add(endOfRole, true)
		if m.Role == "tool" && wrapTool {
			add(toolResponse, true)
			add(m.Content, false)
			add(toolResponseE, true)
		} else {
			add(m.Content, false)
		}
		add(endOfText, true)
		add("\n", false)
	}
	if addGenerationPrompt {
		add(startOfRole, true)
		add("assistant", false)
		add(endOfRole, true)
	}
	return segs, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
