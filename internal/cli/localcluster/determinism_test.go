package localcluster

import (
	"context"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// trace is a greedy generation's tokens and, at every position, the 20 most
// likely tokens with their log-probabilities as float32 bits: equal traces
// mean bitwise-equal logits as far as 20 log-probabilities per token show.
type trace struct {
	tokens []int32
	top    [][]string
}

func (a trace) diff(b trace) string {
	if !slices.Equal(a.tokens, b.tokens) {
		return fmt.Sprintf("tokens %v vs %v", a.tokens, b.tokens)
	}
	for i := range a.top {
		if !slices.Equal(a.top[i], b.top[i]) {
			return fmt.Sprintf("position %d: top log-probabilities %v vs %v", i, a.top[i], b.top[i])
		}
	}
	return ""
}

func genTrace(ctx context.Context, c pb.SwitchyardClient, prompt []int, n int) (trace, error) {
	req := &pb.GenerateRequest{Input: &pb.GenerateRequest_TokenIds{TokenIds: &pb.TokenIds{}}, MaxTokens: int32(n), IgnoreEos: true, TopLogprobs: 20}
	for _, id := range prompt {
		req.GetTokenIds().Ids = append(req.GetTokenIds().Ids, int32(id))
	}
	s, err := c.Generate(ctx, req)
	if err != nil {
		return trace{}, err
	}
	var tr trace
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return tr, nil
		}
		if err != nil {
			return tr, err
		}
		ch := m.GetChunk()
		tr.tokens = append(tr.tokens, ch.GetTokenIds()...)
		for _, t := range ch.GetTopLogprobs() {
			var row []string
			for i, id := range t.GetTokenIds() {
				row = append(row, fmt.Sprintf("%d:%08x", id, math.Float32bits(t.GetLogprobs()[i])))
			}
			tr.top = append(tr.top, row)
		}
	}
}

// TestSameLogitsWhateverBatchAndPlacement: with the defaults (bf16 on the
// wire, --deterministic) the golden prompts give bitwise the same top-20
// log-probabilities at every generated position alone, among 32 other
// sessions, with in-process experts, through 2 and 3 expert nodes, and
// after a re-placement.
func TestSameLogitsWhateverBatchAndPlacement(t *testing.T) {
	golden := goldenPrompts(t)
	const n = 12
	ctx := context.Background()

	// Cluster A: trunk-0 computes experts in process, trunk-1 on 2 expert nodes.
	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	a, err := Start(startCtx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: 2, Trunks: 2,
		Trunk: func(tc *trunknode.Config) { tc.LocalExperts = tc.NodeID == "trunk-0" }})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	local, remote := clientFor(t, a.Endpoints[0]), clientFor(t, a.Endpoints[1])
	if a.Trunks[0].Dispatcher() != nil || a.Trunks[1].Dispatcher() == nil {
		t.Fatal("want trunk-0 with in-process experts and trunk-1 with expert nodes")
	}

	want := make([]trace, len(golden))
	for i, p := range golden {
		if want[i], err = genTrace(ctx, local, p.IDs, n); err != nil {
			t.Fatal(err)
		}
		if len(want[i].top) != n || len(want[i].top[0]) != 20 {
			t.Fatalf("%s: %d positions of %d log-probabilities, want %d of 20", p.Name, len(want[i].top), len(want[i].top[0]), n)
		}
	}
	check := func(what string, c pb.SwitchyardClient) {
		t.Helper()
		for i, p := range golden {
			got, err := genTrace(ctx, c, p.IDs, n)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if d := want[i].diff(got); d != "" {
				t.Errorf("%s, %s: %s", what, p.Name, d)
			}
		}
	}
	check("2 expert nodes, alone", remote)

	// Among 32 other sessions of different lengths, started together.
	tok := a.Trunk.Tokenizer()
	words := []string{"keeper", "steps", "river", "stone", "night", "lamp", "yard", "rail"}
	for _, c := range []pb.SwitchyardClient{remote, local} {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 32 {
			prompt := tok.Encode(words[i%8]+" "+words[(i/8+3)%8]+" and "+words[(i*5)%8]+" of the "+words[(i*3)%8], true)
			prompt = prompt[:1+i%len(prompt)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := genTrace(ctx, c, prompt, 8+i%9); err != nil {
					errs <- err
				}
			}()
		}
		got := make([]trace, len(golden))
		for i, p := range golden {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if got[i], err = genTrace(ctx, c, p.IDs, n); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i, p := range golden {
			if d := want[i].diff(got[i]); d != "" {
				t.Errorf("in a batch of %d sessions (%s): %s: %s", 32+len(golden), map[bool]string{true: "in process", false: "2 expert nodes"}[c == local], p.Name, d)
			}
		}
	}
	a.Close()

	// Cluster B: 3 expert nodes, then one killed and its experts re-placed.
	startCtx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	b, err := Start(startCtx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: 3,
		Trunk: func(tc *trunknode.Config) { tc.LoadInterval = 200 * time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cb := clientFor(t, b.Endpoint)
	check("3 expert nodes", cb)
	v := b.Trunk.Dispatcher().Table().Version
	if err := b.KillExpert("expert-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a re-placement without expert-1", 30*time.Second, func() bool {
		tb := b.Trunk.Dispatcher().Table()
		_, ok := tb.Addr("expert-1")
		return tb.Version != v && !ok
	})
	check("after a re-placement onto 2 nodes", cb)
}
