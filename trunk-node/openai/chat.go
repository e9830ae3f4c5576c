package openai

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/switchyard-serving/switchyard/model/chat"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/grammar"
)

// chatPlan is a validated chat request, ready to generate.
type chatPlan struct {
	gen       Generation
	tools     bool // parse tool calls out of the output
	newSess   bool // the session was created for this request
	sessionID string
}

// planChat validates a chat request and encodes its prompt. A request with
// session_id continues that session: its messages are the new turns only
// ("new" creates a session and keeps the conversation in it).
func (s *Server) planChat(ctx context.Context, req *chatRequest) (*chatPlan, error) {
	if err := s.checkModel(req.Model); err != nil {
		return nil, err
	}
	if len(req.Messages) == 0 {
		return nil, invalid("messages is empty; send at least one message")
	}
	tmpl, err := s.b.Template()
	if err != nil {
		return nil, invalid("%v", err)
	}
	cr := chat.Request{AddGenerationPrompt: true}
	size := 0
	for _, m := range req.Messages {
		size += len(m.Content.Text) + len(m.Role) + len(m.Name)
		for _, tc := range m.ToolCalls {
			size += len(tc.Function.Arguments) + len(tc.Function.Name)
		}
	}
	for _, t := range req.Tools {
		size += len(t.raw)
	}
	if lim := s.b.Model().MaxPromptText; lim > 0 && size > lim {
		return nil, invalid("messages and tools total %d bytes, the limit is %d", size, lim)
	}
	for i, m := range req.Messages {
		if m.Role == "developer" {
			m.Role = "system" // OpenAI's newer name for system instructions
		}
		msg := chat.Message{Role: m.Role, Content: m.Content.Text, Name: m.Name, ToolCallID: m.ToolCallID}
		for j, tc := range m.ToolCalls {
			if tc.Function.Name == "" {
				return nil, invalid("messages[%d].tool_calls[%d].function.name is empty", i, j)
			}
			msg.ToolCalls = append(msg.ToolCalls, chat.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
		}
		cr.Messages = append(cr.Messages, msg)
	}
	// Tools: rendered unless tool_choice is "none"; "required" or a named
	// function constrains the output to one call.
	choice, forced, err := toolChoiceOf(req.ToolChoice, req.Tools)
	if err != nil {
		return nil, err
	}
	plan := &chatPlan{}
	if req.SessionID != "" && req.SessionID != "new" {
		// A kept conversation shows its tools from its first turn; clients
		// send them again on every turn: they are parsed, not rendered again
		// (tools first given on a later turn do not reach the model).
		req.toolsKnown = true
	}
	var forceTools []tool
	if len(req.Tools) > 0 && choice != "none" {
		for i, t := range req.Tools {
			if t.Type != "function" || t.Function.Name == "" {
				return nil, invalid("tools[%d] must be {\"type\": \"function\", \"function\": {\"name\": ...}}", i)
			}
			if !req.toolsKnown {
				cr.Tools = append(cr.Tools, t.raw)
			}
			if forced == "" || forced == t.Function.Name {
				forceTools = append(forceTools, t)
			}
		}
		plan.tools = true
	}
	if forced != "" && len(forceTools) == 0 {
		return nil, invalid("tool_choice names %q, which is not in tools", clip(forced, 60))
	}
	var g *grammar.Grammar
	if choice == "required" || forced != "" {
		if req.ResponseFormat != nil && req.ResponseFormat.Type != "" && req.ResponseFormat.Type != "text" {
			return nil, invalid("response_format cannot be combined with tool_choice %q", choice)
		}
		g, err = toolCallGrammar(forceTools)
	} else {
		g, err = s.constraintOf(req.ResponseFormat)
	}
	if err != nil {
		return nil, err
	}
	var prompt []int
	switch req.SessionID {
	case "":
		prompt, err = tmpl.Encode(cr)
	case "new":
		plan.newSess = true
		prompt, err = tmpl.Encode(cr)
	default:
		plan.sessionID = req.SessionID
		prompt, err = tmpl.EncodeTurn(cr)
	}
	if err != nil {
		return nil, invalid("%v", err)
	}
	sampling, err := samplingOf(knobs{maxTokens: req.MaxTokens, maxCompletion: req.MaxCompletionTokens, temperature: req.Temperature,
		topP: req.TopP, seed: req.Seed, n: req.N, topK: req.TopK, minP: req.MinP, repetitionPenalty: req.RepetitionPenalty,
		frequency: req.FrequencyPenalty, presence: req.PresencePenalty})
	if err != nil {
		return nil, err
	}
	maxTokens, err := s.maxTokensOf(knobs{maxTokens: req.MaxTokens, maxCompletion: req.MaxCompletionTokens})
	if err != nil {
		return nil, err
	}
	top := 0
	if req.TopLogprobs != nil {
		if *req.TopLogprobs < 0 || *req.TopLogprobs > 20 {
			return nil, invalid("top_logprobs must be in [0, 20], got %d", *req.TopLogprobs)
		}
		if !req.Logprobs && *req.TopLogprobs > 0 {
			return nil, invalid("top_logprobs needs logprobs: true")
		}
		top = *req.TopLogprobs
	}
	plan.gen = Generation{Prompt: prompt, Sampling: sampling, MaxTokens: maxTokens, Stop: req.Stop, IgnoreEOS: req.IgnoreEOS,
		LogProbs: req.Logprobs, TopLogProbs: top, API: "openai_chat"}
	if g != nil {
		plan.gen.Constraint = s.constrain(g, forced != "" || choice == "required")
	}
	return plan, nil
}

// toolChoiceOf reads tool_choice: "none", "auto", "required", or
// {"type": "function", "function": {"name": ...}} (returned as forced).
func toolChoiceOf(raw json.RawMessage, tools []tool) (choice, forced string, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "auto", "", nil
	}
	if err := json.Unmarshal(raw, &choice); err == nil {
		switch choice {
		case "none", "auto", "required":
			if choice == "required" && len(tools) == 0 {
				return "", "", invalid("tool_choice \"required\" needs tools")
			}
			return choice, "", nil
		}
		return "", "", invalid("tool_choice %q is not one of none, auto, required", clip(choice, 40))
	}
	var named struct {
		Type     string `json:"type"`
		Name     string `json:"name"` // the Responses API's flat form
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	err = json.Unmarshal(raw, &named)
	if named.Function.Name == "" {
		named.Function.Name = named.Name
	}
	if err != nil || named.Type != "function" || named.Function.Name == "" {
		return "", "", invalid("tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}")
	}
	return "function", named.Function.Name, nil
}

func (s *Server) chatCompletions(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if err := decode(r, &req); err != nil {
		writeStatus(w, err)
		return
	}
	ctx := r.Context()
	plan, err := s.planChat(ctx, &req)
	if err != nil {
		writeStatus(w, err)
		return
	}
	if plan.newSess {
		id, err := s.b.CreateSession(ctx)
		if err != nil {
			writeStatus(w, err)
			return
		}
		plan.sessionID = id
	}
	plan.gen.SessionID = plan.sessionID
	id, created, model := newID("chatcmpl-"), time.Now().Unix(), s.b.Model().Name
	tok := s.b.Tokenizer()
	if !req.Stream {
		var text strings.Builder
		var lps []tokenLogprob
		res, err := s.b.Generate(ctx, plan.gen, func(evs []engine.Event) error {
			for _, ev := range evs {
				text.WriteString(ev.Text)
				if req.Logprobs && ev.Token >= 0 {
					lps = append(lps, logprobOf(tok.TokenBytes(ev.Token), ev, tok.TokenBytes))
				}
			}
			return nil
		})
		if err != nil {
			s.dropNew(ctx, plan)
			writeStatus(w, err)
			return
		}
		msg := &replyMsg{Role: "assistant"}
		content := text.String()
		var calls []toolCall
		if plan.tools {
			var parsed []chat.ParsedCall
			content, parsed = chat.ParseToolCalls(content)
			calls = toolCallsOf(parsed, 0)
		}
		if content != "" || len(calls) == 0 {
			msg.Content = &content
		}
		msg.ToolCalls = calls
		choice := chatChoice{Index: 0, Message: msg, FinishReason: ptr(finishReason(res.Reason, len(calls) > 0))}
		if req.Logprobs {
			choice.Logprobs = &logprobsObj{Content: lps}
		}
		writeJSON(w, http.StatusOK, chatCompletion{ID: id, Object: "chat.completion", Created: created, Model: model,
			Choices: []chatChoice{choice}, Usage: usageOf(res), SessionID: plan.sessionID})
		return
	}
	release, err := s.admitStream(ctx)
	if err != nil {
		s.dropNew(ctx, plan)
		writeStatus(w, err)
		return
	}
	defer release()
	out := newSSE(w)
	chunk := func(delta *replyMsg, finish *string, lp *logprobsObj) chatCompletion {
		return chatCompletion{ID: id, Object: "chat.completion.chunk", Created: created, Model: model, SessionID: plan.sessionID,
			Choices: []chatChoice{{Index: 0, Delta: delta, FinishReason: finish, Logprobs: lp}}}
	}
	// The first chunk carries the role, as OpenAI's does. It is sent with the
	// first output, so an error before any (a busy session, a limit) is still
	// answered with its HTTP status.
	roleSent := false
	sendRole := func() error {
		if roleSent {
			return nil
		}
		roleSent = true
		return out.send("", chunk(&replyMsg{Role: "assistant", Content: ptr("")}, nil, nil))
	}
	var parser chat.ToolParser
	ncalls := 0
	emitText := func(text string, lps []tokenLogprob) error {
		if sendRole() != nil {
			return errClientGone
		}
		var calls []chat.ParsedCall
		if plan.tools {
			text, calls = parser.Feed(text)
		}
		if text != "" || len(lps) > 0 {
			var lp *logprobsObj
			if req.Logprobs {
				lp = &logprobsObj{Content: lps}
			}
			if err := out.send("", chunk(&replyMsg{Content: ptr(text)}, nil, lp)); err != nil {
				return errClientGone
			}
		}
		for _, c := range toolCallsOf(calls, ncalls) {
			ncalls++
			if err := out.send("", chunk(&replyMsg{ToolCalls: []toolCall{c}}, nil, nil)); err != nil {
				return errClientGone
			}
		}
		return nil
	}
	res, err := s.b.Generate(ctx, plan.gen, func(evs []engine.Event) error {
		var text strings.Builder
		var lps []tokenLogprob
		for _, ev := range evs {
			text.WriteString(ev.Text)
			if req.Logprobs && ev.Token >= 0 {
				lps = append(lps, logprobOf(tok.TokenBytes(ev.Token), ev, tok.TokenBytes))
			}
		}
		return emitText(text.String(), lps)
	})
	if err != nil {
		s.dropNew(ctx, plan)
		out.fail(err)
		return
	}
	if sendRole() != nil {
		return
	}
	if plan.tools {
		text, calls := parser.Flush()
		if text != "" {
			if out.send("", chunk(&replyMsg{Content: ptr(text)}, nil, nil)) != nil {
				return
			}
		}
		for _, c := range toolCallsOf(calls, ncalls) {
			ncalls++
			if out.send("", chunk(&replyMsg{ToolCalls: []toolCall{c}}, nil, nil)) != nil {
				return
			}
		}
	}
	if out.send("", chunk(&replyMsg{}, ptr(finishReason(res.Reason, ncalls > 0)), nil)) != nil {
		return
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		final := chatCompletion{ID: id, Object: "chat.completion.chunk", Created: created, Model: model, Choices: []chatChoice{}, Usage: usageOf(res), SessionID: plan.sessionID}
		if out.send("", final) != nil {
			return
		}
	}
	out.done()
}

// dropNew deletes a session created for a request that failed.
func (s *Server) dropNew(ctx context.Context, plan *chatPlan) {
	if plan.newSess && plan.sessionID != "" {
		_ = s.b.DeleteSession(context.WithoutCancel(ctx), plan.sessionID)
	}
}

// toolCallsOf gives parsed calls OpenAI ids and stream indices from first.
func toolCallsOf(parsed []chat.ParsedCall, first int) []toolCall {
	var out []toolCall
	for i, p := range parsed {
		idx := first + i
		out = append(out, toolCall{Index: &idx, ID: newID("call_"), Type: "function", Function: toolCallFunction{Name: p.Name, Arguments: p.Arguments}})
	}
	return out
}

// logprobOf describes one generated token.
func logprobOf(b []byte, ev engine.Event, bytesOf func(int) []byte) tokenLogprob {
	lp := tokenLogprob{Token: string(b), Logprob: ev.LogProb, Bytes: intsOf(b), TopLogprobs: []topLogprob{}}
	for _, t := range ev.Top {
		tb := bytesOf(t.Token)
		lp.TopLogprobs = append(lp.TopLogprobs, topLogprob{Token: string(tb), Logprob: t.LogProb, Bytes: intsOf(tb)})
	}
	return lp
}

func intsOf(b []byte) []int {
	out := make([]int, len(b))
	for i, x := range b {
		out[i] = int(x)
	}
	return out
}

func ptr[T any](v T) *T { return &v }
