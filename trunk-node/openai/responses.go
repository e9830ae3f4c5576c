package openai

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/model/chat"
	"github.com/switchyard-serving/switchyard/model/engine"
)

// The Responses API keeps conversation state on the server. Each stored
// response records the Switchyard session holding the conversation's state
// and the conversation's tokens. A follow-up (previous_response_id) on the
// latest response of its session continues that session in place: only the
// new turn is read, the recurrent state and KV cache are reused. A
// follow-up on an older response (a branch), on a response whose session has
// expired (--session-ttl) or with store: false re-reads the recorded tokens
// into a new session: the same tokens as continuing, at the cost of a
// prefill. A response id that is no longer stored (ResponsesConfig) gets 404.

// ResponsesConfig bounds the store of responses.
type ResponsesConfig struct {
	MaxResponses int           // responses kept (least recently used dropped first; default 10000)
	TTL          time.Duration // a response is dropped this long after its last use (default 1 h)
}

type responseRecord struct {
	id, client, session string
	history             []int32 // the conversation's tokens up to the end of this response
	tools               string  // the tools its conversation was given (JSON)
	obj                 *responseObj
	used                time.Time
	elem                *list.Element
}

type responseStore struct {
	cfg    ResponsesConfig
	mu     sync.Mutex
	byID   map[string]*responseRecord
	latest map[string]string // session -> id of its latest response
	lru    *list.List        // front: most recently used
}

func newResponseStore(cfg ResponsesConfig) *responseStore {
	if cfg.MaxResponses <= 0 {
		cfg.MaxResponses = 10000
	}
	if cfg.TTL <= 0 {
		cfg.TTL = time.Hour
	}
	return &responseStore{cfg: cfg, byID: map[string]*responseRecord{}, latest: map[string]string{}, lru: list.New()}
}

// orphan is a session no stored response can reach any more, and its owner.
type orphan struct{ session, owner string }

// get returns a record of client (touching it), or nil, and the sessions
// that expiring records orphaned.
func (st *responseStore) get(client, id string) (*responseRecord, []orphan) {
	st.mu.Lock()
	defer st.mu.Unlock()
	orphans := st.expire(time.Now())
	r := st.byID[id]
	if r == nil || r.client != client {
		return nil, orphans
	}
	r.used = time.Now()
	st.lru.MoveToFront(r.elem)
	return r, orphans
}

// claim takes r's session for one follow-up in place: true when r is its
// session's latest response and no other follow-up has claimed it (a second
// concurrent follow-up replays instead). put (success) or unclaim (failure)
// ends the claim.
func (st *responseStore) claim(r *responseRecord) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if r.session == "" || st.latest[r.session] != r.id {
		return false
	}
	st.latest[r.session] = claimed
	return true
}

// claimed marks a session a follow-up is continuing.
const claimed = "\x00claimed"

// unclaim forgets a session whose follow-up failed: its state is not known
// to match any response any more (the caller deletes it).
func (st *responseStore) unclaim(session string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.latest[session] == claimed {
		delete(st.latest, session)
	}
}

// put stores r as its session's latest response and returns the sessions of
// records dropped to make room whose state nobody can reach any more.
func (st *responseStore) put(r *responseRecord) (orphans []orphan) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r.used = time.Now()
	r.elem = st.lru.PushFront(r)
	st.byID[r.id] = r
	if r.session != "" {
		st.latest[r.session] = r.id
	}
	orphans = st.expire(r.used)
	for st.lru.Len() > st.cfg.MaxResponses {
		orphans = append(orphans, st.drop(st.lru.Back().Value.(*responseRecord))...)
	}
	return orphans
}

// remove deletes a record of client; it returns the session to delete (when
// the record was its session's latest) and whether the record existed.
func (st *responseStore) remove(client, id string) (session string, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := st.byID[id]
	if r == nil || r.client != client {
		return "", false
	}
	s := st.drop(r)
	if len(s) > 0 {
		return s[0].session, true
	}
	return "", true
}

func (st *responseStore) expire(now time.Time) (orphans []orphan) {
	for e := st.lru.Back(); e != nil; e = st.lru.Back() {
		r := e.Value.(*responseRecord)
		if now.Sub(r.used) < st.cfg.TTL {
			break
		}
		orphans = append(orphans, st.drop(r)...)
	}
	return orphans
}

func (st *responseStore) drop(r *responseRecord) []orphan {
	st.lru.Remove(r.elem)
	delete(st.byID, r.id)
	if r.session != "" && st.latest[r.session] == r.id {
		delete(st.latest, r.session)
		return []orphan{{r.session, r.client}}
	}
	return nil
}

// Wire types of the Responses API.

type responseRequest struct {
	Model              string          `json:"model"`
	Input              json.RawMessage `json:"input"`
	Instructions       string          `json:"instructions"`
	PreviousResponseID string          `json:"previous_response_id"`
	Store              *bool           `json:"store"`
	Stream             bool            `json:"stream"`
	MaxOutputTokens    *int            `json:"max_output_tokens"`
	Temperature        *float32        `json:"temperature"`
	TopP               *float32        `json:"top_p"`
	Seed               *int64          `json:"seed"`
	Tools              []responseTool  `json:"tools"`
	ToolChoice         json.RawMessage `json:"tool_choice"`
	Text               *struct {
		Format *struct {
			Type   string          `json:"type"`
			Name   string          `json:"name"`
			Schema json.RawMessage `json:"schema"`
			Strict *bool           `json:"strict"`
		} `json:"format"`
	} `json:"text"`
	Metadata map[string]string `json:"metadata"`
}

type responseTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

type inputItem struct {
	Type      string         `json:"type"`
	Role      string         `json:"role"`
	Content   messageContent `json:"content"`
	CallID    string         `json:"call_id"`
	Name      string         `json:"name"`
	Arguments string         `json:"arguments"`
	Output    string         `json:"output"`
}

// UnmarshalJSON accepts input_text/output_text parts as text parts.
func (it *inputItem) UnmarshalJSON(b []byte) error {
	type plain inputItem
	fixed := bytes.ReplaceAll(bytes.ReplaceAll(b, []byte(`"input_text"`), []byte(`"text"`)), []byte(`"output_text"`), []byte(`"text"`))
	var p plain
	if err := json.Unmarshal(fixed, &p); err != nil {
		return err
	}
	*it = inputItem(p)
	return nil
}

type responseObj struct {
	ID                 string             `json:"id"`
	Object             string             `json:"object"`
	CreatedAt          int64              `json:"created_at"`
	Status             string             `json:"status"`
	Model              string             `json:"model"`
	Output             []outputItem       `json:"output"`
	Usage              *responseUsage     `json:"usage,omitempty"`
	PreviousResponseID *string            `json:"previous_response_id"`
	Store              bool               `json:"store"`
	Instructions       *string            `json:"instructions"`
	IncompleteDetails  *incompleteDetails `json:"incomplete_details"`
	Error              *errorObj          `json:"error"`
	Temperature        *float32           `json:"temperature"`
	TopP               *float32           `json:"top_p"`
	MaxOutputTokens    *int               `json:"max_output_tokens"`
	Tools              []responseTool     `json:"tools"`
	ToolChoice         json.RawMessage    `json:"tool_choice"`
	ParallelToolCalls  bool               `json:"parallel_tool_calls"`
	Text               json.RawMessage    `json:"text"`
	Metadata           map[string]string  `json:"metadata"`
	// SessionID is the Switchyard session holding the conversation (an extension).
	SessionID string `json:"session_id,omitempty"`
}

// incompleteDetails says why a response is incomplete.
type incompleteDetails struct {
	Reason string `json:"reason"`
}

type outputItem struct {
	Type      string       `json:"type"`
	ID        string       `json:"id"`
	Status    string       `json:"status"`
	Role      string       `json:"role,omitempty"`
	Content   []outputPart `json:"content,omitempty"`
	CallID    string       `json:"call_id,omitempty"`
	Name      string       `json:"name,omitempty"`
	Arguments string       `json:"arguments,omitempty"`
}

type outputPart struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
}

type responseUsage struct {
	InputTokens        int `json:"input_tokens"`
	OutputTokens       int `json:"output_tokens"`
	TotalTokens        int `json:"total_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
}

// messagesOf reads the input: a string (one user message) or a list of items.
func messagesOf(raw json.RawMessage, instructions string) ([]chat.Message, error) {
	var msgs []chat.Message
	if instructions != "" {
		msgs = append(msgs, chat.Message{Role: "system", Content: instructions})
	}
	raw = bytes.TrimSpace(raw)
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return append(msgs, chat.Message{Role: "user", Content: text}), nil
	}
	var items []inputItem
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, invalid("input must be a string or a list of input items: %s", clip(err.Error(), 200))
	}
	for i, it := range items {
		switch it.Type {
		case "", "message":
			role := it.Role
			if role == "developer" {
				role = "system"
			}
			msgs = append(msgs, chat.Message{Role: role, Content: it.Content.Text})
		case "function_call":
			call := chat.ToolCall{ID: it.CallID, Name: it.Name, Arguments: it.Arguments}
			if n := len(msgs); n > 0 && msgs[n-1].Role == "assistant" {
				msgs[n-1].ToolCalls = append(msgs[n-1].ToolCalls, call)
			} else {
				msgs = append(msgs, chat.Message{Role: "assistant", ToolCalls: []chat.ToolCall{call}})
			}
		case "function_call_output":
			msgs = append(msgs, chat.Message{Role: "tool", Content: it.Output, ToolCallID: it.CallID})
		default:
			return nil, invalid("input[%d] has type %q; supported: message, function_call, function_call_output", i, clip(it.Type, 40))
		}
	}
	if len(msgs) == 0 {
		return nil, invalid("input is empty")
	}
	return msgs, nil
}

func (s *Server) createResponse(w http.ResponseWriter, r *http.Request) {
	var req responseRequest
	if err := decode(r, &req); err != nil {
		writeStatus(w, err)
		return
	}
	ctx := r.Context()
	client := rpc.ClientIdentity(ctx)
	if err := s.checkModel(req.Model); err != nil {
		writeStatus(w, err)
		return
	}
	store := req.Store == nil || *req.Store
	msgs, err := messagesOf(req.Input, req.Instructions)
	if err != nil {
		writeStatus(w, err)
		return
	}
	var prev *responseRecord
	if req.PreviousResponseID != "" {
		var orphans []orphan
		prev, orphans = s.store.get(client, req.PreviousResponseID)
		s.dropOrphans(orphans)
		if prev == nil {
			writeError(w, http.StatusNotFound, "invalid_request_error", "previous_response_not_found",
				"previous response "+clip(req.PreviousResponseID, 80)+" is not stored (it expired, was deleted, or was created with store: false); send the whole conversation as input instead")
			return
		}
	}
	// The chat machinery does the rest: tools, formats, sampling, the prompt.
	creq := chatRequest{Model: req.Model, MaxCompletionTokens: req.MaxOutputTokens, Temperature: req.Temperature, TopP: req.TopP,
		Seed: req.Seed, ToolChoice: req.ToolChoice}
	if len(req.Tools) == 0 && prev != nil && prev.tools != "" {
		// A follow-up that does not repeat the tools still has them: the
		// model may call them, and the calls are parsed.
		_ = json.Unmarshal([]byte(prev.tools), &req.Tools)
	}
	for _, t := range req.Tools {
		if t.Type != "function" {
			writeStatus(w, invalid("tools of type %q are not supported (function tools only)", clip(t.Type, 40)))
			return
		}
		raw, _ := json.Marshal(map[string]any{"type": "function", "function": toolFunction{Name: t.Name, Description: t.Description, Parameters: t.Parameters, Strict: t.Strict}})
		var ct tool
		_ = json.Unmarshal(raw, &ct)
		creq.Tools = append(creq.Tools, ct)
	}
	if req.Text != nil && req.Text.Format != nil {
		f := req.Text.Format
		creq.ResponseFormat = &responseFormat{Type: f.Type}
		if f.Type == "json_schema" {
			creq.ResponseFormat.JSONSchema = &struct {
				Name   string          `json:"name"`
				Schema json.RawMessage `json:"schema"`
				Strict *bool           `json:"strict"`
			}{f.Name, f.Schema, f.Strict}
		}
	}
	for _, m := range msgs {
		cm := chatMessage{Role: m.Role, Content: messageContent{Text: m.Content, Set: true}, ToolCallID: m.ToolCallID}
		for _, c := range m.ToolCalls {
			cm.ToolCalls = append(cm.ToolCalls, toolCall{ID: c.ID, Type: "function", Function: toolCallFunction{Name: c.Name, Arguments: c.Arguments}})
		}
		creq.Messages = append(creq.Messages, cm)
	}
	// Tools are rendered by the conversation's first turn: a follow-up may
	// repeat them (they are parsed again, not re-rendered) but not change them.
	toolsJSON := ""
	if len(req.Tools) > 0 {
		b, _ := json.Marshal(req.Tools)
		toolsJSON = string(b)
	}
	if prev != nil && toolsJSON != "" {
		if toolsJSON != prev.tools {
			writeStatus(w, invalid("tools differ from those of the conversation's first turn (the chat template shows tools in its first system prompt only); send the whole conversation as input to change them"))
			return
		}
		creq.toolsKnown = true
	}
	// Where the state comes from: the previous response's session in place,
	// else a replay of its tokens.
	inPlace := prev != nil && store && s.store.claim(prev)
	if prev != nil {
		creq.SessionID = prev.session
		if !inPlace {
			creq.SessionID = "replay"
		}
	}
	plan, err := s.planChat(ctx, &creq)
	if err != nil {
		writeStatus(w, err)
		return
	}
	turn := plan.gen.Prompt
	var history []int32
	if prev != nil {
		history = append(history, prev.history...)
	}
	for _, t := range turn {
		history = append(history, int32(t))
	}
	replay := func() {
		// A new session (or none) starting from the recorded tokens.
		plan.gen.SessionID = ""
		plan.gen.Prompt = make([]int, len(history))
		for i, t := range history {
			plan.gen.Prompt[i] = int(t)
		}
	}
	switch {
	case inPlace:
		plan.gen.SessionID = prev.session
	case prev != nil:
		replay()
	}
	session := ""
	if store && !inPlace {
		if session, err = s.b.CreateSession(ctx); err != nil {
			writeStatus(w, err)
			return
		}
		plan.gen.SessionID = session
	} else if inPlace {
		session = prev.session
	}
	obj := &responseObj{ID: newID("resp_"), Object: "response", CreatedAt: time.Now().Unix(), Status: "in_progress", Model: s.b.Model().Name,
		Output: []outputItem{}, Store: store, Temperature: req.Temperature, TopP: req.TopP, MaxOutputTokens: req.MaxOutputTokens,
		Tools: req.Tools, ToolChoice: req.ToolChoice, ParallelToolCalls: true, Text: json.RawMessage(`{"format": {"type": "text"}}`), Metadata: req.Metadata}
	if obj.Tools == nil {
		obj.Tools = []responseTool{}
	}
	if len(obj.ToolChoice) == 0 {
		obj.ToolChoice = json.RawMessage(`"auto"`)
	}
	if req.Text != nil {
		if b, err := json.Marshal(req.Text); err == nil {
			obj.Text = b
		}
	}
	if req.Instructions != "" {
		obj.Instructions = &req.Instructions
	}
	if prev != nil {
		obj.PreviousResponseID = &prev.id
	}
	if store {
		obj.SessionID = session
	}
	var out *sse
	seq := 0
	event := func(typ string, fields map[string]any) error {
		fields["type"] = typ
		fields["sequence_number"] = seq
		seq++
		return out.send(typ, fields)
	}
	msgID := newID("msg_")
	var text strings.Builder
	var generated []int32
	var parser chat.ToolParser
	var calls []chat.ParsedCall
	itemOpen := false
	openItem := func() error {
		if itemOpen || out == nil {
			return nil
		}
		itemOpen = true
		if err := event("response.output_item.added", map[string]any{"output_index": 0, "item": outputItem{Type: "message", ID: msgID, Status: "in_progress", Role: "assistant", Content: []outputPart{}}}); err != nil {
			return err
		}
		return event("response.content_part.added", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "part": outputPart{Type: "output_text", Annotations: []any{}}})
	}
	if req.Stream {
		release, err := s.admitStream(ctx)
		if err != nil {
			s.dropSession(ctx, session, inPlace)
			writeStatus(w, err)
			return
		}
		defer release()
		out = newSSE(w)
		if event("response.created", map[string]any{"response": obj}) != nil || event("response.in_progress", map[string]any{"response": obj}) != nil {
			s.dropSession(ctx, session, inPlace)
			return
		}
	}
	emit := func(evs []engine.Event) error {
		var delta strings.Builder
		for _, ev := range evs {
			if ev.Token >= 0 {
				generated = append(generated, int32(ev.Token))
			}
			delta.WriteString(ev.Text)
		}
		d := delta.String()
		if plan.tools {
			var c []chat.ParsedCall
			d, c = parser.Feed(d)
			calls = append(calls, c...)
		}
		text.WriteString(d)
		if out != nil && d != "" {
			if openItem() != nil || event("response.output_text.delta", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "delta": d}) != nil {
				return errClientGone
			}
		}
		return nil
	}
	res, err := s.b.Generate(ctx, plan.gen, emit)
	if err != nil && inPlace && status.Code(err) == codes.NotFound {
		s.store.unclaim(prev.session)
		// The session expired (or was deleted) under the stored response:
		// replay the recorded tokens into a new session.
		replay()
		if store {
			if session, err = s.b.CreateSession(ctx); err == nil {
				plan.gen.SessionID = session
				inPlace = false
				res, err = s.b.Generate(ctx, plan.gen, emit) // nothing was streamed yet
			}
		}
	}
	if err != nil {
		s.dropSession(ctx, session, inPlace)
		if out != nil {
			_, body := errorOf(err)
			obj.Status = "failed"
			obj.Error = &body.Error
			_ = event("response.failed", map[string]any{"response": obj})
			return
		}
		writeStatus(w, err)
		return
	}
	if plan.tools {
		t, c := parser.Flush()
		text.WriteString(t)
		calls = append(calls, c...)
		if out != nil && t != "" {
			if openItem() != nil || event("response.output_text.delta", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "delta": t}) != nil {
				return
			}
		}
	}
	obj.Status = "completed"
	switch res.Reason {
	case engine.FinishLength:
		obj.Status = "incomplete"
		obj.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
	case engine.FinishCancel:
		obj.Status = "cancelled" // the client went away; what was generated is kept
	}
	if text.Len() > 0 || len(calls) == 0 {
		obj.Output = append(obj.Output, outputItem{Type: "message", ID: msgID, Status: "completed", Role: "assistant",
			Content: []outputPart{{Type: "output_text", Text: text.String(), Annotations: []any{}}}})
	}
	for _, c := range calls {
		obj.Output = append(obj.Output, outputItem{Type: "function_call", ID: newID("fc_"), Status: "completed", CallID: newID("call_"), Name: c.Name, Arguments: c.Arguments})
	}
	u := usageOf(res)
	obj.Usage = &responseUsage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens, TotalTokens: u.TotalTokens}
	obj.Usage.InputTokensDetails.CachedTokens = res.CachedTokens
	if store {
		s.dropOrphans(s.store.put(&responseRecord{id: obj.ID, client: rpc.ClientIdentity(ctx), session: session, history: append(history, generated...), tools: toolsJSON, obj: obj}))
	}
	if out == nil {
		writeJSON(w, http.StatusOK, obj)
		return
	}
	if text.Len() > 0 || len(calls) == 0 {
		if openItem() != nil ||
			event("response.output_text.done", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "text": text.String()}) != nil ||
			event("response.content_part.done", map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0, "part": obj.Output[0].Content[0]}) != nil ||
			event("response.output_item.done", map[string]any{"output_index": 0, "item": obj.Output[0]}) != nil {
			return
		}
	}
	for i, it := range obj.Output {
		if it.Type != "function_call" {
			continue
		}
		if event("response.output_item.added", map[string]any{"output_index": i, "item": it}) != nil ||
			event("response.function_call_arguments.done", map[string]any{"item_id": it.ID, "output_index": i, "arguments": it.Arguments}) != nil ||
			event("response.output_item.done", map[string]any{"output_index": i, "item": it}) != nil {
			return
		}
	}
	typ := "response.completed"
	if obj.Status == "incomplete" {
		typ = "response.incomplete"
	}
	_ = event(typ, map[string]any{"response": obj})
}

// dropSession deletes the session of a response that failed: one created for
// it, or the one it continued in place (whose state may now hold part of the
// failed turn: later follow-ups replay the recorded tokens instead).
func (s *Server) dropSession(ctx context.Context, session string, inPlace bool) {
	if session == "" {
		return
	}
	if inPlace {
		s.store.unclaim(session)
	}
	_ = s.b.DeleteSession(context.WithoutCancel(ctx), session)
}

// dropOrphans deletes sessions no stored response reaches, as their owners.
func (s *Server) dropOrphans(orphans []orphan) {
	for _, o := range orphans {
		if err := s.b.DeleteSession(rpc.WithIdentity(context.Background(), o.owner), o.session); err != nil && status.Code(err) != codes.NotFound {
			s.log.Warn("openai: deleting a session no stored response reaches failed", "session", o.session, "err", err)
		}
	}
}

func (s *Server) getResponse(w http.ResponseWriter, r *http.Request) {
	rec, orphans := s.store.get(rpc.ClientIdentity(r.Context()), r.PathValue("id"))
	s.dropOrphans(orphans)
	if rec == nil {
		writeError(w, http.StatusNotFound, "invalid_request_error", "response_not_found", "response "+clip(r.PathValue("id"), 80)+" is not stored")
		return
	}
	writeJSON(w, http.StatusOK, rec.obj)
}

func (s *Server) deleteResponse(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	session, ok := s.store.remove(rpc.ClientIdentity(r.Context()), id)
	if !ok {
		writeError(w, http.StatusNotFound, "invalid_request_error", "response_not_found", "response "+clip(id, 80)+" is not stored")
		return
	}
	if session != "" {
		_ = s.b.DeleteSession(r.Context(), session)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "object": "response.deleted", "deleted": true})
}
