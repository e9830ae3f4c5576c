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

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/model/synth"
	"github.com/switchyard-serving/switchyard/model/tensor"
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
	req := tokenRequest(prompt, n)
	req.TopLogprobs = 20
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

// TestSameLogitsWhateverBatchAndPlacement: with the default settings
// (--deterministic and the bf16 wire) the golden prompts give bitwise the same top-20
// log-probabilities at every generated position alone, among 32 other
// sessions, with in-process experts, through 2 and 3 expert nodes, and
// after a re-placement.
//
// It runs on the golden fixture (float32 weights: the combine order) and on
// a synthesized bf16 model (the batch-invariant kernels too).
func TestSameLogitsWhateverBatchAndPlacement(t *testing.T) {
	if !trunknode.DefaultConfig().Dispatch.Deterministic || !expertnode.DefaultConfig().Deterministic {
		t.Fatal("--deterministic is off by default on trunks or expert nodes")
	}
	var prompts [][]int
	for _, p := range goldenPrompts(t) {
		prompts = append(prompts, p.IDs)
	}
	t.Run("fixture", func(t *testing.T) { checkSameLogits(t, filepath.Join(fixtureDir(t), "hf"), prompts) })
	dir := t.TempDir()
	if _, err := synth.Write(dir, synth.Options{Preset: "tiny", DType: tensor.BF16, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	t.Run("bf16", func(t *testing.T) { checkSameLogits(t, dir, prompts) })
}

func checkSameLogits(t *testing.T, model string, golden [][]int) {
	const n = 12
	ctx := context.Background()

	// Cluster A: trunk-0 computes experts in process, trunk-1 on 2 expert nodes.
	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	a, err := Start(startCtx, Options{ModelPath: model, ExpertNodes: 2, Trunks: 2,
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
	vocab := a.Trunk.Model().Cfg.VocabSize
	for i := range golden {
		golden[i] = slices.Clone(golden[i])
		for j := range golden[i] {
			golden[i][j] %= vocab
		}
	}
	for i, p := range golden {
		if want[i], err = genTrace(ctx, local, p, n); err != nil {
			t.Fatal(err)
		}
		if len(want[i].top) != n || len(want[i].top[0]) != 20 {
			t.Fatalf("prompt %d: %d positions of %d log-probabilities, want %d of 20", i, len(want[i].top), len(want[i].top[0]), n)
		}
	}
	check := func(what string, c pb.SwitchyardClient) {
		t.Helper()
		for i, p := range golden {
			got, err := genTrace(ctx, c, p, n)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if d := want[i].diff(got); d != "" {
				t.Errorf("%s, prompt %d: %s", what, i, d)
			}
		}
	}
	check("2 expert nodes, alone", remote)

	// Among 32 other sessions of different lengths, started together.
	for _, c := range []pb.SwitchyardClient{remote, local} {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 32 {
			prompt := make([]int, 1+(i*7)%23)
			for j := range prompt {
				prompt[j] = (i*131 + j*17 + 3) % vocab
			}
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
				if got[i], err = genTrace(ctx, c, p, n); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i := range golden {
			if d := want[i].diff(got[i]); d != "" {
				t.Errorf("in a batch of %d sessions (%s): prompt %d: %s", 32+len(golden), map[bool]string{true: "in process", false: "2 expert nodes"}[c == local], i, d)
			}
		}
	}
	a.Close()

	// Cluster B: 3 expert nodes, then one killed and its experts re-placed.
	startCtx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	b, err := Start(startCtx, Options{ModelPath: model, ExpertNodes: 3,
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
