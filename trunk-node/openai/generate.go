package openai

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/grammar"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// knobs are the sampling fields the endpoints share.
type knobs struct {
	maxTokens, maxCompletion *int
	temperature, topP        *float32
	seed                     *int64
	n                        *int
	topK                     *int
	minP, repetitionPenalty  *float32
	frequency, presence      *float32
}

// samplingOf builds the sampling parameters with OpenAI's defaults:
// temperature 1 and a fresh seed when none is given (so a request without a
// seed is not reproducible, as on OpenAI; one with a seed is).
func samplingOf(k knobs) (*pb.SamplingParams, error) {
	if k.n != nil && *k.n != 1 {
		return nil, invalid("n = %d is not supported: this server returns one choice per request (send n = 1 or omit it, and send parallel requests instead)", *k.n)
	}
	for name, v := range map[string]*float32{"frequency_penalty": k.frequency, "presence_penalty": k.presence} {
		if v != nil && *v != 0 {
			return nil, invalid("%s is not supported; use repetition_penalty (a Switchyard extension, e.g. 1.1)", name)
		}
	}
	p := &pb.SamplingParams{Temperature: 1}
	if k.temperature != nil {
		if *k.temperature < 0 || *k.temperature > 2 {
			return nil, invalid("temperature must be in [0, 2], got %v", *k.temperature)
		}
		p.Temperature = *k.temperature
	}
	if k.topP != nil {
		if !(*k.topP > 0 && *k.topP <= 1) {
			return nil, invalid("top_p must be in (0, 1], got %v", *k.topP)
		}
		p.TopP = *k.topP
	}
	if k.topK != nil {
		p.TopK = int32(min(max(*k.topK, -1), 1<<30))
	}
	if k.minP != nil {
		p.MinP = *k.minP
	}
	if k.repetitionPenalty != nil {
		p.RepetitionPenalty = *k.repetitionPenalty
	}
	if k.seed != nil {
		p.Seed = uint64(*k.seed)
	} else {
		var b [8]byte
		_, _ = rand.Read(b[:])
		p.Seed = binary.LittleEndian.Uint64(b[:])
	}
	return p, nil
}

// maxTokensOf is max_completion_tokens, else max_tokens, else 0: the
// backend then takes what the context leaves after the session's tokens and
// the prompt (up to the server's limit).
func (s *Server) maxTokensOf(k knobs) (int, error) {
	v := k.maxCompletion
	if v == nil {
		v = k.maxTokens
	}
	if v == nil {
		return 0, nil
	}
	if *v <= 0 {
		return 0, invalid("max_tokens must be > 0, got %d", *v)
	}
	return *v, nil
}

// constraintOf compiles a response_format into a token mask constraint
// (nil for text).
func (s *Server) constraintOf(f *responseFormat) (*grammar.Grammar, error) {
	if f == nil {
		return nil, nil
	}
	switch f.Type {
	case "", "text":
		return nil, nil
	case "json_object":
		return grammar.AnyJSONObject(), nil
	case "json_schema":
		if f.JSONSchema == nil || len(f.JSONSchema.Schema) == 0 {
			return nil, invalid("response_format json_schema needs json_schema.schema")
		}
		g, err := grammar.FromJSONSchema(f.JSONSchema.Schema)
		if err != nil {
			return nil, invalid("response_format.json_schema: %v", err)
		}
		return g, nil
	}
	return nil, invalid("response_format.type %q is not supported (want text, json_object or json_schema)", clip(f.Type, 40))
}

// sse writes server-sent events.
type sse struct {
	w       http.ResponseWriter
	f       http.Flusher
	started bool
}

func newSSE(w http.ResponseWriter) *sse {
	f, _ := w.(http.Flusher)
	return &sse{w: w, f: f}
}

func (e *sse) start() {
	if e.started {
		return
	}
	e.started = true
	h := e.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	e.w.WriteHeader(http.StatusOK)
}

// send writes one data event (with an event name when given).
func (e *sse) send(event string, v any) error {
	e.start()
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if event != "" {
		if _, err := fmt.Fprintf(e.w, "event: %s\n", event); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintf(e.w, "data: %s\n\n", b); err != nil {
		return err
	}
	if e.f != nil {
		e.f.Flush()
	}
	return nil
}

func (e *sse) done() {
	e.start()
	fmt.Fprint(e.w, "data: [DONE]\n\n")
	if e.f != nil {
		e.f.Flush()
	}
}

// fail ends a stream with an error: an error reply before the first event,
// an error event after it.
func (e *sse) fail(err error) {
	code, body := errorOf(err)
	if !e.started {
		writeJSON(e.w, code, body)
		return
	}
	_ = e.send("", body)
}

// admitStream counts a streamed reply against the client's cap.
func (s *Server) admitStream(ctx context.Context) (func(), error) {
	return s.streams.Admit(rpc.ClientIdentity(ctx), s.cfg.MaxStreamsPerClient)
}

// finishReason is OpenAI's name for an engine finish reason.
func finishReason(reason string, toolCalls bool) string {
	switch {
	case toolCalls:
		return "tool_calls"
	case reason == engine.FinishLength:
		return "length"
	}
	return "stop"
}

var errClientGone = errors.New("client went away")

// usageOf is the usage object of a result.
func usageOf(r Result) *usage {
	u := &usage{PromptTokens: r.PromptTokens + r.CachedTokens, CompletionTokens: r.CompletionTokens,
		TotalTokens: r.PromptTokens + r.CachedTokens + r.CompletionTokens}
	if r.CachedTokens > 0 {
		u.PromptTokensDetails = &tokenDetails{CachedTokens: r.CachedTokens}
	}
	return u
}
