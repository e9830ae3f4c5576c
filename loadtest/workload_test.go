package loadtest

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func TestReadConversations(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		turns []int // turns per conversation; -1 marks a prompt line
		bad   string
	}{
		{name: "turns and prompts", in: `{"turns": ["hi", "and then?"]}` + "\n\n" + `{"prompt": "once upon", "max_tokens": 5}` + "\n", turns: []int{2, -1}},
		{name: "both", in: `{"turns": ["a"], "prompt": "b"}`, bad: "exactly one"},
		{name: "neither", in: `{"max_tokens": 3}`, bad: "exactly one"},
		{name: "empty turn", in: `{"turns": ["a", ""]}`, bad: "turn 2 is empty"},
		{name: "unknown field", in: `{"prompt": "a", "temperature": 1}`, bad: "line 1"},
		{name: "bad json on line 2", in: `{"prompt": "a"}` + "\n{", bad: "line 2"},
		{name: "negative max_tokens", in: `{"prompt": "a", "max_tokens": -1}`, bad: "max_tokens"},
		{name: "empty file", in: "\n", bad: "no conversations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, err := readConversations(strings.NewReader(tt.in))
			if tt.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tt.bad) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cs) != len(tt.turns) {
				t.Fatalf("%d conversations, want %d", len(cs), len(tt.turns))
			}
			for i, c := range cs {
				if n := len(c.Turns); (tt.turns[i] == -1) != (c.Prompt != nil) || tt.turns[i] != -1 && n != tt.turns[i] {
					t.Fatalf("conversation %d = %+v, want %d turns", i, c, tt.turns[i])
				}
			}
		})
	}
}

func TestSyntheticSessions(t *testing.T) {
	cfg := validConfig()
	cfg.Turns = 3
	cfg.PromptTokens = Dist{Kind: DistUniform, Min: 5, Max: 50}
	cfg.OutputTokens = Fixed(10)
	info := &pb.ModelInfoResponse{VocabSize: 8, EosTokenId: 3, MaxContext: 100}
	w, err := newWorkload(&cfg, info, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	for range 200 {
		s := w.session(r)
		used := 0
		for _, tp := range s.turns {
			for _, id := range tp.ids {
				if id == 3 || id < 0 || id >= 8 {
					t.Fatalf("drew token id %d (vocab 8, eos 3)", id)
				}
			}
			used += len(tp.ids) + tp.maxTokens
		}
		if len(s.turns) == 0 || used > 100 {
			t.Fatalf("session of %d turns uses %d tokens; want >= 1 turn within the 100-token context", len(s.turns), used)
		}
		if s.server != (len(s.turns) > 1) {
			t.Fatalf("%d turns, server-side %v", len(s.turns), s.server)
		}
	}
	// A first turn longer than the context is cut to fit.
	cfg.Turns, cfg.PromptTokens = 1, Fixed(500)
	if s := w.session(r); len(s.turns[0].ids)+s.turns[0].maxTokens > 100 {
		t.Fatalf("first turn of %d+%d tokens exceeds the context", len(s.turns[0].ids), s.turns[0].maxTokens)
	}
}

func TestWordPrompt(t *testing.T) {
	cfg := validConfig()
	w := &workload{cfg: &cfg, words: []word{{"alpha", 2}, {"beta", 3}}}
	r := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{1, 7, 40} {
		text := w.wordPrompt(r, n)
		tokens := 0
		for _, f := range strings.Fields(text) {
			tokens += map[string]int{"alpha": 2, "beta": 3}[f]
		}
		if tokens < n || tokens > n+2 {
			t.Fatalf("prompt for %d tokens has %d: %q", n, tokens, text)
		}
	}
}

func TestConversationPlans(t *testing.T) {
	cfg := validConfig()
	cfg.OutputTokens = Fixed(9)
	p := "go"
	convs := []conversation{{Turns: []string{"a", "b"}}, {Prompt: &p, MaxTokens: 4}}
	w, err := newWorkload(&cfg, &pb.ModelInfoResponse{VocabSize: 10}, convs)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	s1, s2, s3 := w.session(r), w.session(r), w.session(r)
	if !s1.server || len(s1.turns) != 2 || s1.turns[1].chat != "b" || s1.turns[0].maxTokens != 9 {
		t.Fatalf("first plan %+v", s1)
	}
	if s2.server || s2.turns[0].text != "go" || s2.turns[0].maxTokens != 4 {
		t.Fatalf("second plan %+v", s2)
	}
	if len(s3.turns) != 2 {
		t.Fatalf("plans do not wrap around: %+v", s3)
	}
}

// A shared prefix starts every session's first prompt, the same for all and
// drawn from the seed; later turns and the user part differ; sessions still
// fit the context.
func TestSharedPrefix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kind   PromptKind
		prefix int
		turns  int
	}{
		{"token prompts", PromptTokens, 40, 2},
		{"word prompts", PromptWords, 30, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validConfig()
			cfg.PromptKind, cfg.SharedPrefix, cfg.Turns = tc.kind, tc.prefix, tc.turns
			cfg.PromptTokens, cfg.OutputTokens = Fixed(10), Fixed(5)
			w, err := newWorkload(&cfg, &pb.ModelInfoResponse{VocabSize: 50, EosTokenId: 7, MaxContext: 200}, nil)
			if err != nil {
				t.Fatal(err)
			}
			w.words = []word{{"alpha", 2}, {"beta", 3}}
			w.preparePrefix()
			r := rand.New(rand.NewPCG(2, 2))
			var first []turnPlan
			for range 20 {
				s := w.session(r)
				first = append(first, s.turns[0])
				if tc.turns > 1 && len(s.turns[1].ids) != 10 {
					t.Fatalf("a later turn has %d tokens, want its own 10 only", len(s.turns[1].ids))
				}
			}
			for _, tp := range first {
				switch tc.kind {
				case PromptTokens:
					if len(tp.ids) != tc.prefix+10 || !slices.Equal(tp.ids[:tc.prefix], w.prefixIDs) || slices.Contains(tp.ids, 7) {
						t.Fatalf("first prompt %v does not start with the shared %v", tp.ids, w.prefixIDs)
					}
				case PromptWords:
					if !strings.HasPrefix(tp.text, w.prefixText) || len(tp.text) <= len(w.prefixText) {
						t.Fatalf("first prompt %q does not start with the shared %q", tp.text, w.prefixText)
					}
				}
			}
			if tc.kind == PromptTokens && slices.Equal(first[0].ids, first[1].ids) {
				t.Fatal("two sessions drew the same user part")
			}
			// A context too short for the prefix and the turn cuts the user part.
			w.maxContext = tc.prefix + 12
			if s := w.session(r); tc.kind == PromptTokens && len(s.turns[0].ids)+s.turns[0].maxTokens > w.maxContext {
				t.Fatalf("first turn of %d+%d tokens exceeds the %d-token context", len(s.turns[0].ids), s.turns[0].maxTokens, w.maxContext)
			}
		})
	}
	cfg := validConfig()
	cfg.SharedPrefix, cfg.Conversations = 10, "x.jsonl"
	if err := cfg.Validate(); err == nil {
		t.Fatal("a shared prefix with a conversations file validated")
	}
}
