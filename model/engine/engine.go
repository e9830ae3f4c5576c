// Package engine ties a loaded model, its tokenizer and the sampler into a
// single-process text generator: it opens a checkpoint (Hugging Face folder or
// GGUF file), prefills prompts in chunks and decodes token by token with stop
// conditions. The CLI uses it directly; the trunk node uses its pieces through its
// own continuous-batching scheduler.
package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/sample"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// ErrRequest reports an invalid generation request; the message says which field.
var ErrRequest = errors.New("engine: invalid request")

// Engine is a model plus its tokenizer.
type Engine struct {
	Model *hybrid.Model
	Tok   *tokenizer.Tokenizer
	Path  string
	// PrefillChunk is the number of prompt tokens per forward call (default 512).
	PrefillChunk int
}

// Open loads a model from a Hugging Face folder (config.json, *.safetensors,
// tokenizer.json) or a .gguf file.
func Open(path string, opt hybrid.LoadOptions) (*Engine, error) {
	m, f, err := hybrid.Open(path, opt)
	if err != nil {
		return nil, err
	}
	e := &Engine{Path: path, PrefillChunk: 512}
	var tok *tokenizer.Tokenizer
	if f == nil {
		tok, err = tokenizer.LoadHF(path)
	} else {
		tok, err = TokenizerFromGGUF(f)
	}
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	e.Model, e.Tok = m, tok
	return e, nil
}

// OpenTokenizer loads only the tokenizer of a model folder, tokenizer.json file, or
// GGUF file.
func OpenTokenizer(path string) (*tokenizer.Tokenizer, error) {
	if hybrid.IsGGUF(path) {
		f, err := openGGUF(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return TokenizerFromGGUF(f)
	}
	if filepath.Ext(path) == ".json" || isDir(path) {
		return tokenizer.LoadHF(path)
	}
	return nil, fmt.Errorf("engine: %s is not a model folder, tokenizer.json or GGUF file", path)
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// Close releases the model's checkpoint mapping.
func (e *Engine) Close() error { return e.Model.Close() }

// Request is one generation.
type Request struct {
	Prompt      []int
	Params      sample.Params
	MaxTokens   int   // > 0
	StopIDs     []int // generation ends after emitting... (never emitted)
	StopStrings []string
	IgnoreEOS   bool // do not stop at the model's EOS token
	LogProbs    bool // fill Event.LogProb (see Spec.LogProbs)
}

// Event is one generated token.
type Event struct {
	Token   int
	Text    string  // text delta that is safe to show now (may be empty)
	LogProb float32 // when asked for (Spec.LogProbs, Request.LogProbs); else 0
	// Top are the most likely tokens at this step with their
	// log-probabilities, most likely first (Spec.TopLogProbs of them).
	Top []TokenLogProb
}

// TokenLogProb is a token and its log-probability.
type TokenLogProb struct {
	Token   int
	LogProb float32
}

// Finish reasons.
const (
	FinishStop   = "stop"   // EOS, a stop id or a stop string
	FinishLength = "length" // max tokens
	FinishCancel = "cancelled"
)

// Result summarises a generation.
type Result struct {
	Tokens       []int
	Text         string
	FinishReason string
	PromptTokens int
}

// Validate checks a request against the model.
func (e *Engine) Validate(req *Request, st *hybrid.State) error {
	if len(req.Prompt) == 0 && (st == nil || st.Pos == 0) {
		return fmt.Errorf("%w: the prompt is empty", ErrRequest)
	}
	if req.MaxTokens <= 0 {
		return fmt.Errorf("%w: max_tokens must be > 0, got %d", ErrRequest, req.MaxTokens)
	}
	v := e.Model.Cfg.VocabSize
	for _, t := range req.Prompt {
		if t < 0 || t >= v {
			return fmt.Errorf("%w: prompt token id %d is outside the vocabulary [0, %d)", ErrRequest, t, v)
		}
	}
	return req.Params.Validate()
}

// Generate prefills req.Prompt on top of st and decodes up to MaxTokens tokens,
// calling emit for each; emit returning false cancels. st holds the session state
// afterwards (the prompt and every token fed back; the last sampled token is fed
// only if generation continues past it).
func (e *Engine) Generate(st *hybrid.State, req Request, emit func(Event) bool) (Result, error) {
	if err := e.Validate(&req, st); err != nil {
		return Result{}, err
	}
	res := Result{PromptTokens: len(req.Prompt)}
	logits, err := e.Prefill(st, req.Prompt)
	if err != nil {
		return res, err
	}
	d := NewDecoder(e.Tok, Spec{Params: req.Params, MaxTokens: req.MaxTokens, StopIDs: req.StopIDs, StopStrings: req.StopStrings,
		IgnoreEOS: req.IgnoreEOS, EOS: e.Model.Cfg.EOS, LogProbs: req.LogProbs}, req.Prompt)
	seq := []hybrid.Seq{{State: st}}
	for {
		o := d.Next(logits)
		if o.Emit {
			res.Tokens = append(res.Tokens, o.Event.Token)
			res.Text += o.Event.Text
			if !emit(o.Event) {
				res.FinishReason = FinishCancel
				return res, nil
			}
		}
		if o.Tail != "" {
			res.Text += o.Tail
			emit(Event{Token: -1, Text: o.Tail})
		}
		if o.Finish != "" {
			res.FinishReason = o.Finish
			return res, o.Err
		}
		seq[0].Tokens = []int{o.Event.Token}
		if err := e.Model.Forward(seq); err != nil {
			return res, err
		}
		logits = seq[0].Logits
	}
}

// Prefill feeds tokens into st in chunks of PrefillChunk and returns the logits
// after the last one. With no tokens it is an error.
func (e *Engine) Prefill(st *hybrid.State, tokens []int) ([]float32, error) {
	if len(tokens) == 0 {
		return nil, fmt.Errorf("%w: nothing to prefill", ErrRequest)
	}
	chunk := e.PrefillChunk
	if chunk <= 0 {
		chunk = len(tokens)
	}
	var logits []float32
	for i := 0; i < len(tokens); i += chunk {
		j := min(i+chunk, len(tokens))
		seq := []hybrid.Seq{{State: st, Tokens: tokens[i:j], NoLogits: j < len(tokens)}}
		if err := e.Model.Forward(seq); err != nil {
			return nil, err
		}
		logits = seq[0].Logits
	}
	return logits, nil
}
