package trunknode

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/model/chat"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/grammar"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	"github.com/switchyard-serving/switchyard/trunk-node/openai"
)

// openaiState is what the HTTP API computes once per node.
type openaiState struct {
	tmplOnce  sync.Once
	tmpl      *chat.Template
	tmplErr   error
	vocabOnce sync.Once
	vocab     *grammar.Vocab
	created   time.Time

	mu   sync.Mutex
	addr string
}

// HTTPAddr is the bound address of the OpenAI-compatible API ("" when off).
func (n *Node) HTTPAddr() string {
	n.oa.mu.Lock()
	defer n.oa.mu.Unlock()
	return n.oa.addr
}

// serveHTTP starts the OpenAI-compatible API when configured; it stops with
// the agent's loops (after the drain).
func (n *Node) serveHTTP(a *agent.Agent) error {
	if n.cfg.HTTPListen == "" {
		return nil
	}
	lis, err := net.Listen("tcp", n.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("trunknode: http listen: %w", err)
	}
	n.oa.mu.Lock()
	n.oa.addr = lis.Addr().String()
	n.oa.created = time.Now()
	n.oa.mu.Unlock()
	srv := openai.New(openai.Config{
		Auth:                rpc.ServerConfig{AuthToken: n.cfg.APIToken, Tokens: n.cfg.APITokens, RatePerSec: n.cfg.RatePerSec, RateBurst: int(n.cfg.RatePerSec) + 1},
		MaxBodyBytes:        int64(n.cfg.MaxRecvBytes),
		MaxStreamsPerClient: n.cfg.Clients.MaxStreams,
		Logger:              a.Logger(),
	}, &openaiBackend{n: n, api: &api{n: n}})
	a.Go(func(ctx context.Context) {
		if err := openai.Serve(ctx, lis, srv, n.cfg.PublicTLS, n.cfg.DrainTimeout); err != nil {
			a.Logger().Error("openai: http server stopped", "err", err)
		}
	})
	return nil
}

// openaiBackend serves the HTTP API from the node, through the same
// validation, limits and scheduler as the gRPC API.
type openaiBackend struct {
	n   *Node
	api *api
}

var _ openai.Backend = (*openaiBackend)(nil)

func (b *openaiBackend) Model() openai.Model {
	return openai.Model{Name: config.ModelName(b.n.cfg.ModelPath), Created: b.n.oa.created,
		MaxContext: b.n.limits.MaxContext, MaxNewTokens: b.n.limits.MaxNewTokens, MaxPromptText: b.n.limits.MaxPromptText}
}

func (b *openaiBackend) Tokenizer() *tokenizer.Tokenizer { return b.n.tok }

func (b *openaiBackend) Template() (*chat.Template, error) { return b.n.chatTemplate() }

// chatTemplate is the node's chat template: --chat-template, else the model's.
func (n *Node) chatTemplate() (*chat.Template, error) {
	n.oa.tmplOnce.Do(func() {
		src := ""
		if p := n.cfg.ChatTemplate; p != "" {
			src, n.oa.tmplErr = readTemplate(p)
			if n.oa.tmplErr != nil {
				return
			}
		}
		n.oa.tmpl, n.oa.tmplErr = chat.New(n.tok, src)
	})
	return n.oa.tmpl, n.oa.tmplErr
}

// readTemplate reads a .jinja file or the chat_template of a
// tokenizer_config.json.
func readTemplate(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("trunknode: chat template: %w", err)
	}
	if !strings.HasSuffix(path, ".json") {
		return string(b), nil
	}
	var cfg struct {
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", fmt.Errorf("trunknode: chat template %s: %w", path, err)
	}
	var s string
	if err := json.Unmarshal(cfg.ChatTemplate, &s); err != nil {
		// A list of named templates: take "default".
		var named []struct{ Name, Template string }
		if json.Unmarshal(cfg.ChatTemplate, &named) != nil {
			return "", fmt.Errorf("trunknode: chat template %s: chat_template is neither a string nor a list of named templates", path)
		}
		for _, t := range named {
			if t.Name == "default" {
				s = t.Template
			}
		}
	}
	if s == "" {
		return "", fmt.Errorf("trunknode: chat template %s has no chat_template", path)
	}
	return s, nil
}

func (b *openaiBackend) Vocab() *grammar.Vocab {
	n := b.n
	n.oa.vocabOnce.Do(func() {
		size := n.tok.VocabSize()
		toks := make([][]byte, size)
		special := make([]bool, size)
		for i := range size {
			toks[i] = n.tok.TokenBytes(i)
			special[i] = n.tok.IsSpecial(i)
		}
		n.oa.vocab = grammar.NewVocab(toks, special, n.tok.EOS())
	})
	return n.oa.vocab
}

func (b *openaiBackend) Generate(ctx context.Context, g openai.Generation, emit func([]engine.Event) error) (openai.Result, error) {
	args := genArgs{sessionID: g.SessionID, prompt: g.Prompt, sampling: g.Sampling, maxTokens: int32(min(g.MaxTokens, 1<<30)), stop: g.Stop,
		ignoreEOS: g.IgnoreEOS, logprobs: g.LogProbs, api: g.API, client: rpc.ClientIdentity(ctx), constraint: g.Constraint, topLogprobs: g.TopLogProbs,
		defaultMax: g.MaxTokens == 0}
	_, job, release, err := b.api.start(ctx, args)
	if err != nil {
		return openai.Result{}, toStatus(err)
	}
	defer release()
	fin, err := b.api.pump(ctx, job, emit)
	if err != nil {
		return openai.Result{}, toStatus(err)
	}
	return openai.Result{Reason: fin.Reason, PromptTokens: fin.PromptTokens, CompletionTokens: fin.CompletionTokens, CachedTokens: fin.CachedTokens}, nil
}

func (b *openaiBackend) CreateSession(ctx context.Context) (string, error) {
	s, err := b.api.CreateSession(ctx, &pb.CreateSessionRequest{})
	if err != nil {
		return "", err
	}
	return s.SessionId, nil
}

func (b *openaiBackend) DeleteSession(ctx context.Context, id string) error {
	_, err := b.api.DeleteSession(ctx, &pb.DeleteSessionRequest{SessionId: id})
	return err
}

func (b *openaiBackend) Draining() bool { return b.n.sched.Draining() }
