package localcluster

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func fixtureDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny")
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("shared fixture missing: %v", err)
	}
	return d
}

type goldenPrompt struct {
	Name   string `json:"name"`
	IDs    []int  `json:"token_ids"`
	Greedy []int  `json:"greedy_new_token_ids"`
}

func goldenPrompts(t *testing.T) []goldenPrompt {
	b, err := os.ReadFile(filepath.Join(fixtureDir(t), "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Prompts []goldenPrompt `json:"prompts"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return g.Prompts
}

// goldenGreedy is goldenPrompts for a test that compares generated tokens
// with the greedy ones, and keeps float32 activations until the test ends.
func goldenGreedy(t *testing.T) []goldenPrompt {
	// The greedy tokens are llama.cpp's on F32 weights (float32 activations): the hf folder's bf16 weights must not round the activations to bf16.
	prev := kernels.SetBF16Activations(false)
	t.Cleanup(func() { kernels.SetBF16Activations(prev) })
	return goldenPrompts(t)
}

func startCluster(t *testing.T, experts int) (*Cluster, pb.SwitchyardClient) {
	t.Helper()
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: experts})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		c.Close()
		waitFor(t, "goroutines to exit", 10*time.Second, func() bool { return runtime.NumGoroutine() <= before+2 })
	})
	return c, pb.NewSwitchyardClient(conn)
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func gen(ctx context.Context, c pb.SwitchyardClient, prompt []int, n int) ([]int, error) {
	return genObserved(ctx, c, prompt, n, nil)
}

// tokenRequest asks for n tokens after prompt, past end-of-text.
func tokenRequest(prompt []int, n int) *pb.GenerateRequest {
	req := &pb.GenerateRequest{Input: &pb.GenerateRequest_TokenIds{TokenIds: &pb.TokenIds{}}, MaxTokens: int32(n), IgnoreEos: true}
	for _, id := range prompt {
		req.GetTokenIds().Ids = append(req.GetTokenIds().Ids, int32(id))
	}
	return req
}

// genObserved is gen calling onTokens at each chunk's arrival.
func genObserved(ctx context.Context, c pb.SwitchyardClient, prompt []int, n int, onTokens func(time.Time)) ([]int, error) {
	s, err := c.Generate(ctx, tokenRequest(prompt, n))
	if err != nil {
		return nil, err
	}
	var out []int
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		for _, id := range m.GetChunk().GetTokenIds() {
			out = append(out, int(id))
		}
		if onTokens != nil && len(m.GetChunk().GetTokenIds()) > 0 {
			onTokens(time.Now())
		}
	}
}

// Through the whole cluster (trunk + 2 expert nodes over gRPC, rows in bf16 on the
// wire) the greedy continuations equal llama.cpp's golden tokens and the
// in-process engine's.
func TestClusterGreedyMatchesGolden(t *testing.T) {
	_, cli := startCluster(t, 2)
	e, err := engine.Open(filepath.Join(fixtureDir(t), "hf"), hybrid.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, p := range goldenGreedy(t) {
		got, err := gen(context.Background(), cli, p.IDs, len(p.Greedy))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, p.Greedy) {
			t.Errorf("%s: cluster %v, golden %v", p.Name, got, p.Greedy)
		}
		res, err := e.Generate(e.Model.NewState(), engine.Request{Prompt: p.IDs, MaxTokens: len(p.Greedy), IgnoreEOS: true}, func(engine.Event) bool { return true })
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, res.Tokens) {
			t.Errorf("%s: cluster %v, engine %v", p.Name, got, res.Tokens)
		}
	}
}

// 32 concurrent sessions with different prompts each produce exactly what they
// produce alone.
func TestCluster32Concurrent(t *testing.T) {
	c := startFaultCluster(t, 2, 1)
	cli := clientFor(t, c.Endpoint)
	tok := c.Trunk.Tokenizer()
	words := []string{"keeper", "steps", "river", "stone", "night", "lamp", "yard", "rail"}
	prompts := make([][]int, 32)
	for i := range prompts {
		prompts[i] = tok.Encode(words[i%8]+" "+words[(i/8+3)%8]+" and "+words[(i*5)%8], true)
	}
	alone := make([][]int, len(prompts))
	for i, p := range prompts {
		var err error
		if alone[i], err = gen(context.Background(), cli, p, 10); err != nil {
			t.Fatal(err)
		}
	}
	got := make([][]int, len(prompts))
	errs := make([]error, len(prompts))
	var wg sync.WaitGroup
	for i, p := range prompts {
		wg.Add(1)
		go func() { defer wg.Done(); got[i], errs[i] = gen(context.Background(), cli, p, 10) }()
	}
	wg.Wait()
	for i := range prompts {
		if errs[i] != nil {
			t.Fatalf("session %d: %v", i, errs[i])
		}
		if !slices.Equal(got[i], alone[i]) {
			t.Errorf("session %d: concurrent %v, alone %v", i, got[i], alone[i])
		}
	}
	st := c.Trunk.Dispatcher().Stats()
	if st.Failures.Load() != 0 {
		t.Errorf("%d dispatch failures", st.Failures.Load())
	}
}

// Killing an expert node under load: its experts are re-placed on the survivor
// (the coordinator republishes when the node's lease expires) and requests wait
// for that instead of failing.
func TestClusterExpertKilledRequestsWait(t *testing.T) {
	c := startFaultCluster(t, 2, 1)
	cli := clientFor(t, c.Endpoint)
	p := goldenGreedy(t)[2]
	var wg sync.WaitGroup
	errs := make([]error, 6)
	outs := make([][]int, 6)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); outs[i], errs[i] = gen(context.Background(), cli, p.IDs, len(p.Greedy)) }()
	}
	waitFor(t, "requests running", 10*time.Second, func() bool { r, _ := c.Trunk.Load(); return r > 0 })
	if err := c.KillExpert("expert-1"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d failed: %v", i, err)
		}
		if !slices.Equal(outs[i], p.Greedy) {
			t.Errorf("request %d: %v, want %v", i, outs[i], p.Greedy)
		}
	}
}

func clientFor(t *testing.T, addr string) pb.SwitchyardClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewSwitchyardClient(conn)
}
