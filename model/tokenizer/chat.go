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
	tmpl := t.chatTemplate
	granite := strings.Contains(tmpl, startOfRole)
	if tmpl == "" {
		_, ok1 := t.TokenID(startOfRole)
		_, ok2 := t.TokenID(endOfRole)
		granite = ok1 && ok2
	}
	if !granite {
		if tmpl == "" {
			return "", fmt.Errorf("%w: the model has no chat template and no Granite role tokens", ErrUnsupportedTemplate)
		}
		return "", fmt.Errorf("%w: only Granite <|start_of_role|> markup is rendered (template starts %q)", ErrUnsupportedTemplate, truncate(tmpl, 60))
	}
	_, ok1 := t.TokenID(toolResponse)
	_, ok2 := t.TokenID(toolResponseE)
	wrapTool := ok1 && ok2 && (tmpl == "" || strings.Contains(tmpl, "tool_response"))

	var b strings.Builder
	for i, m := range msgs {
		role, content := m.Role, m.Content
		switch role {
		case "system", "user", "assistant":
		case "tool":
			if wrapTool {
				role = "user"
				content = toolResponse + content + toolResponseE
			}
		default:
			return "", fmt.Errorf("%w: message %d has role %q (want system, user, assistant or tool)", ErrUnknownRole, i, m.Role)
		}
		b.WriteString(startOfRole)
		b.WriteString(role)
		b.WriteString(endOfRole)
		b.WriteString(content)
		b.WriteString(endOfText)
		b.WriteByte('\n')
	}
	if addGenerationPrompt {
		b.WriteString(startOfRole + "assistant" + endOfRole)
	}
	return b.String(), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
