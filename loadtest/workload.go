package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// turnPlan is one request of a session. Exactly one of ids, text and chat is set.
type turnPlan struct {
	ids       []int32 // synthetic token-id prompt (Generate token_ids)
	text      string  // text prompt (Generate text)
	chat      string  // user message (Chat)
	maxTokens int
}

// sessionPlan is the turns of one session, sent one after the other.
type sessionPlan struct {
	turns  []turnPlan
	server bool // continue a server-side session across the turns
}

// conversation is one line of a conversations file.
type conversation struct {
	Turns     []string `json:"turns"`
	Prompt    *string  `json:"prompt"`
	MaxTokens int      `json:"max_tokens"`
}

// readConversations parses a JSONL conversations file; blank lines are skipped.
func readConversations(r io.Reader) ([]conversation, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var out []conversation
	for line := 1; sc.Scan(); line++ {
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		var c conversation
		dec := json.NewDecoder(strings.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("loadtest: conversations line %d: %w", line, err)
		}
		switch {
		case (len(c.Turns) > 0) == (c.Prompt != nil):
			return nil, fmt.Errorf("loadtest: conversations line %d: set exactly one of \"turns\" and \"prompt\"", line)
		case c.Prompt != nil && *c.Prompt == "":
			return nil, fmt.Errorf("loadtest: conversations line %d: empty prompt", line)
		case c.MaxTokens < 0:
			return nil, fmt.Errorf("loadtest: conversations line %d: max_tokens must be >= 0", line)
		}
		for i, t := range c.Turns {
			if t == "" {
				return nil, fmt.Errorf("loadtest: conversations line %d: turn %d is empty", line, i+1)
			}
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("loadtest: conversations: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("loadtest: conversations file has no conversations")
	}
	return out, nil
}

func loadConversations(path string) ([]conversation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loadtest: conversations: %w", err)
	}
	defer f.Close()
	return readConversations(f)
}

// word is a vocabulary word and the tokens " "+text encodes to.
type word struct {
	text   string
	tokens int
}

// wordList is the vocabulary of PromptWords prompts.
var wordList = strings.Fields(`the of and to in is was for on are with as by at from that this be have
it not or an but all were which when there can more one about time their has would what will so up out
some them other into than then its only over also after first new very most made through where much
before right too any same three want came small large number water house point world place around
between city river light night story early under never last long great little old state family
system group problem public service market model memory session token stream cluster expert layer`)

// workload draws session plans. Methods are safe for concurrent use when each
// caller passes its own rand.
type workload struct {
	cfg        *Config
	vocab      int   // token ids are drawn from [0, vocab)
	eos        int32 // never drawn
	maxContext int   // tokens a session may hold (0 = unknown)
	words      []word
	convs      []conversation
	next       atomic.Uint64 // next conversation
	// prefixIDs or prefixText is the shared prefix of every session's first
	// prompt (Config.SharedPrefix; set by preparePrefix).
	prefixIDs  []int32
	prefixText string
}

// preparePrefix draws the shared prefix once, from the run's seed (after
// measureWords for word prompts).
func (w *workload) preparePrefix() {
	if w.cfg.SharedPrefix <= 0 || len(w.convs) > 0 {
		return
	}
	r := rand.New(rand.NewPCG(w.cfg.Seed, 0x5157))
	if w.cfg.PromptKind == PromptWords {
		w.prefixText = w.wordPrompt(r, w.cfg.SharedPrefix)
	} else {
		w.prefixIDs = w.tokenPrompt(r, w.cfg.SharedPrefix)
	}
}

func newWorkload(cfg *Config, info *pb.ModelInfoResponse, convs []conversation) (*workload, error) {
	w := &workload{cfg: cfg, vocab: int(info.VocabSize), eos: info.EosTokenId, maxContext: int(info.MaxContext), convs: convs}
	if convs == nil && cfg.PromptKind == PromptTokens && w.vocab < 2 {
		return nil, fmt.Errorf("loadtest: server reports vocab_size %d; synthetic token prompts need >= 2", w.vocab)
	}
	return w, nil
}

// measureWords tokenizes each word once (with its leading space) so word
// prompts can be sized in tokens.
func (w *workload) measureWords(ctx context.Context, cli pb.SwitchyardClient, timeout func(context.Context) (context.Context, context.CancelFunc)) error {
	for _, t := range wordList {
		cctx, cancel := timeout(ctx)
		resp, err := cli.Tokenize(cctx, &pb.TokenizeRequest{Text: " " + t, PlainSpecial: true})
		cancel()
		if err != nil {
			return fmt.Errorf("loadtest: tokenize word list: %w", err)
		}
		if n := len(resp.TokenIds); n > 0 {
			w.words = append(w.words, word{t, n})
		}
	}
	if len(w.words) == 0 {
		return fmt.Errorf("loadtest: no word of the word list tokenizes to any token")
	}
	return nil
}

// session draws the next session.
func (w *workload) session(r *rand.Rand) sessionPlan {
	if len(w.convs) > 0 {
		return w.conversation(r)
	}
	turns := make([]turnPlan, 0, w.cfg.Turns)
	used := 0
	for i := range w.cfg.Turns {
		p, o := w.cfg.PromptTokens.Sample(r), w.cfg.OutputTokens.Sample(r)
		shared := 0
		if i == 0 {
			shared = len(w.prefixIDs)
			if w.prefixText != "" {
				shared = w.cfg.SharedPrefix
			}
		}
		if w.maxContext > 0 && used+shared+p+o > w.maxContext {
			if i > 0 {
				break // the session is full: end it early
			}
			o = min(o, max((w.maxContext-shared)/2, 1))
			p = max(w.maxContext-shared-o, 1)
		}
		used += shared + p + o
		t := turnPlan{maxTokens: o}
		if w.cfg.PromptKind == PromptWords {
			t.text = w.wordPrompt(r, p)
			if i == 0 && w.prefixText != "" {
				t.text = w.prefixText + t.text
			}
		} else {
			t.ids = w.tokenPrompt(r, p)
			if i == 0 && len(w.prefixIDs) > 0 {
				t.ids = append(append(make([]int32, 0, len(w.prefixIDs)+p), w.prefixIDs...), t.ids...)
			}
		}
		turns = append(turns, t)
	}
	return sessionPlan{turns: turns, server: len(turns) > 1 || w.cfg.HoldSessions}
}

func (w *workload) conversation(r *rand.Rand) sessionPlan {
	c := w.convs[(w.next.Add(1)-1)%uint64(len(w.convs))]
	maxTok := func() int {
		if c.MaxTokens > 0 {
			return c.MaxTokens
		}
		return w.cfg.OutputTokens.Sample(r)
	}
	if c.Prompt != nil {
		return sessionPlan{turns: []turnPlan{{text: *c.Prompt, maxTokens: maxTok()}}, server: w.cfg.HoldSessions}
	}
	turns := make([]turnPlan, len(c.Turns))
	for i, t := range c.Turns {
		turns[i] = turnPlan{chat: t, maxTokens: maxTok()}
	}
	return sessionPlan{turns: turns, server: len(turns) > 1 || w.cfg.HoldSessions}
}

// tokenPrompt draws n ids from [0, vocab) without the end-of-text id.
func (w *workload) tokenPrompt(r *rand.Rand, n int) []int32 {
	ids := make([]int32, n)
	skipEOS := w.eos >= 0 && int(w.eos) < w.vocab
	for i := range ids {
		if skipEOS {
			id := int32(r.IntN(w.vocab - 1))
			if id >= w.eos {
				id++
			}
			ids[i] = id
		} else {
			ids[i] = int32(r.IntN(w.vocab))
		}
	}
	return ids
}

// wordPrompt joins random words until they make at least n tokens.
func (w *workload) wordPrompt(r *rand.Rand, n int) string {
	var sb strings.Builder
	for got := 0; got < n; {
		wd := w.words[r.IntN(len(w.words))]
		sb.WriteByte(' ')
		sb.WriteString(wd.text)
		got += wd.tokens
	}
	return sb.String()
}
