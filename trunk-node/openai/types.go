package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The request and response bodies of the OpenAI API, the fields Switchyard
// reads and writes. Unknown request fields are ignored, as OpenAI's servers
// and vLLM's do, except those listed as refused in refuseUnsupported.

// chatRequest is POST /v1/chat/completions.
type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float32        `json:"temperature"`
	TopP                *float32        `json:"top_p"`
	Seed                *int64          `json:"seed"`
	Stop                stopField       `json:"stop"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	Logprobs            bool            `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	Tools               []tool          `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ResponseFormat      *responseFormat `json:"response_format"`
	FrequencyPenalty    *float32        `json:"frequency_penalty"`
	PresencePenalty     *float32        `json:"presence_penalty"`
	// Switchyard extensions.
	SessionID         string   `json:"session_id"` // continue (and keep the turn in) this session
	TopK              *int     `json:"top_k"`
	MinP              *float32 `json:"min_p"`
	RepetitionPenalty *float32 `json:"repetition_penalty"`
	IgnoreEOS         bool     `json:"ignore_eos"`
	// toolsKnown: the conversation's first turn rendered these tools
	// already (a Responses follow-up); they are parsed, not rendered again.
	toolsKnown bool
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// chatMessage is one message of a request (and of a non-streamed reply).
type chatMessage struct {
	Role       string         `json:"role"`
	Content    messageContent `json:"content"`
	Name       string         `json:"name,omitempty"`
	ToolCalls  []toolCall     `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
	Refusal    *string        `json:"refusal,omitempty"`
}

// messageContent is a string or a list of parts; only text parts are
// accepted (the model reads text).
type messageContent struct {
	Text  string
	Set   bool
	Parts bool // given as a list of parts
}

func (c *messageContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	c.Set = true
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &c.Text)
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("content must be a string or a list of text parts")
	}
	c.Parts = true
	var buf bytes.Buffer
	for i, p := range parts {
		if p.Type != "text" {
			return fmt.Errorf("content part %d has type %q; this model reads text parts only", i, p.Type)
		}
		if buf.Len() > 0 {
			buf.WriteByte('\n')
		}
		buf.WriteString(p.Text)
	}
	c.Text = buf.String()
	return nil
}

func (c messageContent) MarshalJSON() ([]byte, error) {
	if !c.Set {
		return []byte("null"), nil
	}
	return json.Marshal(c.Text)
}

// stopField is a string or a list of strings.
type stopField []string

func (s *stopField) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = stopField{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("stop must be a string or a list of strings")
	}
	*s = many
	return nil
}

type tool struct {
	Type     string       `json:"type"`
	Function toolFunction `json:"function"`
	raw      json.RawMessage
}

func (t *tool) UnmarshalJSON(b []byte) error {
	type plain tool
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*t = tool(p)
	t.raw = append(json.RawMessage(nil), b...)
	return nil
}

type toolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

type toolCall struct {
	Index    *int             `json:"index,omitempty"` // streamed deltas only
	ID       string           `json:"id,omitempty"`
	Type     string           `json:"type,omitempty"`
	Function toolCallFunction `json:"function"`
}

type toolCallFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type responseFormat struct {
	Type       string `json:"type"`
	JSONSchema *struct {
		Name   string          `json:"name"`
		Schema json.RawMessage `json:"schema"`
		Strict *bool           `json:"strict"`
	} `json:"json_schema"`
}

// chatCompletion is a non-streamed reply.
type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	Choices           []chatChoice `json:"choices"`
	Usage             *usage       `json:"usage,omitempty"`
	SystemFingerprint string       `json:"system_fingerprint,omitempty"`
	SessionID         string       `json:"session_id,omitempty"`
}

type chatChoice struct {
	Index        int          `json:"index"`
	Message      *replyMsg    `json:"message,omitempty"`
	Delta        *replyMsg    `json:"delta,omitempty"`
	Logprobs     *logprobsObj `json:"logprobs"`
	FinishReason *string      `json:"finish_reason"`
}

// replyMsg is the assistant's message (or a streamed delta of it).
type replyMsg struct {
	Role      string     `json:"role,omitempty"`
	Content   *string    `json:"content,omitempty"`
	ToolCalls []toolCall `json:"tool_calls,omitempty"`
	Refusal   *string    `json:"refusal,omitempty"`
}

type logprobsObj struct {
	Content []tokenLogprob `json:"content"`
}

type tokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float32      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []topLogprob `json:"top_logprobs"`
}

type topLogprob struct {
	Token   string  `json:"token"`
	Logprob float32 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

type usage struct {
	PromptTokens        int           `json:"prompt_tokens"`
	CompletionTokens    int           `json:"completion_tokens"`
	TotalTokens         int           `json:"total_tokens"`
	PromptTokensDetails *tokenDetails `json:"prompt_tokens_details,omitempty"`
}

type tokenDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// completionRequest is POST /v1/completions.
type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`
	Temperature   *float32        `json:"temperature"`
	TopP          *float32        `json:"top_p"`
	Seed          *int64          `json:"seed"`
	Stop          stopField       `json:"stop"`
	N             *int            `json:"n"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
	Logprobs      *int            `json:"logprobs"`
	Echo          bool            `json:"echo"`
	BestOf        *int            `json:"best_of"`
	Suffix        *string         `json:"suffix"`
	// Switchyard extensions.
	SessionID         string          `json:"session_id"`
	TopK              *int            `json:"top_k"`
	MinP              *float32        `json:"min_p"`
	RepetitionPenalty *float32        `json:"repetition_penalty"`
	IgnoreEOS         bool            `json:"ignore_eos"`
	ResponseFormat    *responseFormat `json:"response_format"`
}

type completion struct {
	ID                string             `json:"id"`
	Object            string             `json:"object"`
	Created           int64              `json:"created"`
	Model             string             `json:"model"`
	Choices           []completionChoice `json:"choices"`
	Usage             *usage             `json:"usage,omitempty"`
	SystemFingerprint string             `json:"system_fingerprint,omitempty"`
	SessionID         string             `json:"session_id,omitempty"`
}

type completionChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *completionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
}

type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float32            `json:"token_logprobs"`
	TopLogprobs   []map[string]float32 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

type modelList struct {
	Object string        `json:"object"`
	Data   []modelObject `json:"data"`
}

type modelObject struct {
	ID            string `json:"id"`
	Object        string `json:"object"`
	Created       int64  `json:"created"`
	OwnedBy       string `json:"owned_by"`
	MaxModelLen   int    `json:"max_model_len,omitempty"`
	ContextLength int    `json:"context_length,omitempty"`
}

// errorBody is every error reply: {"error": {...}}.
type errorBody struct {
	Error errorObj `json:"error"`
}

type errorObj struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}
