package openai

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/switchyard-serving/switchyard/model/engine"
)

// promptOf reads a completions prompt: a string, a list of one string, a list
// of token ids, or a list of one list of token ids. Text is tokenized with
// special-token text parsed, as a raw prompt is on the gRPC API.
func (s *Server) promptOf(raw json.RawMessage) ([]int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, invalid("prompt is required")
	}
	tok := s.b.Tokenizer()
	var text string
	if json.Unmarshal(raw, &text) == nil {
		if !utf8.ValidString(text) {
			return nil, invalid("prompt is not valid UTF-8")
		}
		return tok.Encode(text, true), nil
	}
	var texts []string
	if json.Unmarshal(raw, &texts) == nil {
		if len(texts) != 1 {
			return nil, invalid("prompt lists %d strings; send one prompt per request", len(texts))
		}
		return tok.Encode(texts[0], true), nil
	}
	var ids []int
	if json.Unmarshal(raw, &ids) != nil {
		var batch [][]int
		if json.Unmarshal(raw, &batch) != nil || len(batch) != 1 {
			return nil, invalid("prompt must be a string, a list of one string, or token ids (a list of integers)")
		}
		ids = batch[0]
	}
	for i, id := range ids {
		if id < 0 || id >= tok.VocabSize() {
			return nil, invalid("prompt token id %d at index %d is outside the vocabulary [0, %d)", id, i, tok.VocabSize())
		}
	}
	return ids, nil
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	if err := decode(r, &req); err != nil {
		writeStatus(w, err)
		return
	}
	ctx := r.Context()
	gen, err := s.planCompletion(&req)
	if err != nil {
		writeStatus(w, err)
		return
	}
	id, created, model := newID("cmpl-"), time.Now().Unix(), s.b.Model().Name
	tok := s.b.Tokenizer()
	logprobs := func(evs []engine.Event, offset int) *completionLogprobs {
		if req.Logprobs == nil {
			return nil
		}
		lp := &completionLogprobs{Tokens: []string{}, TokenLogprobs: []float32{}, TopLogprobs: []map[string]float32{}, TextOffset: []int{}}
		for _, ev := range evs {
			if ev.Token < 0 {
				continue
			}
			lp.Tokens = append(lp.Tokens, string(tok.TokenBytes(ev.Token)))
			lp.TokenLogprobs = append(lp.TokenLogprobs, ev.LogProb)
			top := map[string]float32{}
			for _, t := range ev.Top {
				top[string(tok.TokenBytes(t.Token))] = t.LogProb
			}
			lp.TopLogprobs = append(lp.TopLogprobs, top)
			lp.TextOffset = append(lp.TextOffset, offset)
			offset += len(ev.Text)
		}
		return lp
	}
	if !req.Stream {
		var text strings.Builder
		var all []engine.Event
		res, err := s.b.Generate(ctx, gen, func(evs []engine.Event) error {
			for _, ev := range evs {
				text.WriteString(ev.Text)
			}
			all = append(all, evs...)
			return nil
		})
		if err != nil {
			writeStatus(w, err)
			return
		}
		writeJSON(w, http.StatusOK, completion{ID: id, Object: "text_completion", Created: created, Model: model, SessionID: req.SessionID,
			Choices: []completionChoice{{Text: text.String(), Logprobs: logprobs(all, 0), FinishReason: ptr(finishReason(res.Reason, false))}}, Usage: usageOf(res)})
		return
	}
	release, err := s.admitStream(ctx)
	if err != nil {
		writeStatus(w, err)
		return
	}
	defer release()
	out := newSSE(w)
	offset := 0
	res, err := s.b.Generate(ctx, gen, func(evs []engine.Event) error {
		var text strings.Builder
		for _, ev := range evs {
			text.WriteString(ev.Text)
		}
		c := completion{ID: id, Object: "text_completion", Created: created, Model: model, SessionID: req.SessionID,
			Choices: []completionChoice{{Text: text.String(), Logprobs: logprobs(evs, offset)}}}
		offset += text.Len()
		if out.send("", c) != nil {
			return errClientGone
		}
		return nil
	})
	if err != nil {
		out.fail(err)
		return
	}
	c := completion{ID: id, Object: "text_completion", Created: created, Model: model, SessionID: req.SessionID,
		Choices: []completionChoice{{Text: "", FinishReason: ptr(finishReason(res.Reason, false))}}}
	if out.send("", c) != nil {
		return
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		if out.send("", completion{ID: id, Object: "text_completion", Created: created, Model: model, Choices: []completionChoice{}, Usage: usageOf(res)}) != nil {
			return
		}
	}
	out.done()
}

// planCompletion validates a completions request.
func (s *Server) planCompletion(req *completionRequest) (Generation, error) {
	if err := s.checkModel(req.Model); err != nil {
		return Generation{}, err
	}
	switch {
	case req.Echo:
		return Generation{}, invalid("echo is not supported")
	case req.BestOf != nil && *req.BestOf != 1:
		return Generation{}, invalid("best_of = %d is not supported (send 1 or omit it)", *req.BestOf)
	case req.Suffix != nil && *req.Suffix != "":
		return Generation{}, invalid("suffix is not supported")
	}
	prompt, err := s.promptOf(req.Prompt)
	if err != nil {
		return Generation{}, err
	}
	sampling, err := samplingOf(knobs{temperature: req.Temperature, topP: req.TopP, seed: req.Seed, n: req.N, topK: req.TopK,
		minP: req.MinP, repetitionPenalty: req.RepetitionPenalty})
	if err != nil {
		return Generation{}, err
	}
	// The legacy endpoint's default is 16 tokens, as on OpenAI.
	maxTokens := 16
	if req.MaxTokens != nil {
		if maxTokens = *req.MaxTokens; maxTokens <= 0 {
			return Generation{}, invalid("max_tokens must be > 0, got %d", maxTokens)
		}
	}
	top := 0
	if req.Logprobs != nil {
		if *req.Logprobs < 0 || *req.Logprobs > 20 {
			return Generation{}, invalid("logprobs must be in [0, 20], got %d", *req.Logprobs)
		}
		top = *req.Logprobs
	}
	g := Generation{SessionID: req.SessionID, Prompt: prompt, Sampling: sampling, MaxTokens: maxTokens, Stop: req.Stop,
		IgnoreEOS: req.IgnoreEOS, LogProbs: req.Logprobs != nil, TopLogProbs: top, API: "openai_completions"}
	gr, err := s.constraintOf(req.ResponseFormat)
	if err != nil {
		return Generation{}, err
	}
	if gr != nil {
		g.Constraint = s.constrain(gr, false)
	}
	return g, nil
}
