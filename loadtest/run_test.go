package loadtest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/internal/cli/localcluster"
)

// startCluster runs an in-process cluster with the shared tiny fixture, warms
// it up and returns its public address.
func startCluster(t *testing.T) string {
	t.Helper()
	model := filepath.Join("..", "..", "shared", "fixtures", "granite-hybrid-tiny", "hf")
	if _, err := os.Stat(model); err != nil {
		t.Fatalf("shared fixture missing: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := localcluster.Start(ctx, localcluster.Options{ModelPath: model, ExpertNodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	// Warm the cluster up: its trunk opens expert dispatch streams on first use
	// and keeps them, which the leak checks must not count.
	cfg := testConfig(c.Endpoint)
	cfg.Concurrency, cfg.Requests = 1, 1
	if _, err := Run(ctx, cfg, nil); err != nil {
		t.Fatalf("warm-up run: %v", err)
	}
	return c.Endpoint
}

// testConfig is a short run against addr.
func testConfig(addr string) Config {
	c := DefaultConfig()
	c.Addr = addr
	c.Concurrency = 4
	c.Duration = 0
	c.Requests = 20
	c.PromptTokens = Dist{Kind: DistUniform, Min: 8, Max: 24}
	c.OutputTokens = Fixed(8)
	c.RequestTimeout = 20 * time.Second
	c.RPCTimeout = 10 * time.Second
	return c
}

// checkConsistent checks the invariants every report must hold.
func checkConsistent(t *testing.T, rep *Report) {
	t.Helper()
	k := rep.Counts
	if k.Sent == 0 || k.Completed+k.Failed != k.Sent {
		t.Fatalf("counts do not add up: %+v", k)
	}
	if k.Failed != 0 || len(rep.Errors) != 0 {
		t.Fatalf("%d requests failed: %+v", k.Failed, rep.Errors)
	}
	for name, l := range map[string]Latency{"TTFT": rep.TTFT, "ITL": rep.ITL, "TPOT": rep.TPOT, "E2E": rep.E2E} {
		if !(l.MinMs <= l.P50Ms && l.P50Ms <= l.P90Ms && l.P90Ms <= l.P99Ms && l.P99Ms <= l.P999Ms && l.P999Ms <= l.MaxMs) {
			t.Errorf("%s percentiles out of order: %+v", name, l)
		}
		if l.Count == 0 || l.MeanMs < l.MinMs || l.MeanMs > l.MaxMs {
			t.Errorf("%s: %+v", name, l)
		}
	}
	if rep.TTFT.Count != k.Completed || rep.E2E.Count != k.Completed {
		t.Errorf("TTFT n=%d, E2E n=%d, want %d", rep.TTFT.Count, rep.E2E.Count, k.Completed)
	}
	if rep.E2E.MinMs < rep.TTFT.MinMs {
		t.Errorf("an E2E latency (%vms) is below every TTFT (%vms)", rep.E2E.MinMs, rep.TTFT.MinMs)
	}
	tp := rep.Throughput
	if tp.OutputTokensPerSec <= 0 || tp.RequestsPerSec <= 0 || rep.MeasuredSeconds <= 0 {
		t.Fatalf("throughput %+v over %vs", tp, rep.MeasuredSeconds)
	}
	if g := rep.Goodput; g.Met > k.Completed || g.Fraction < 0 || g.Fraction > 1 {
		t.Fatalf("goodput %+v", g)
	}
}

func TestRunAgainstCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process cluster")
	}
	addr := startCluster(t)

	t.Run("closed loop multi-turn", func(t *testing.T) {
		checkOurLeaks(t)
		cfg := testConfig(addr)
		cfg.Turns = 3
		cfg.WarmupRequests = 4
		cfg.SLO = SLO{TTFT: 10 * time.Second, ITL: time.Second, E2E: 20 * time.Second}
		var progress bytes.Buffer
		rep, err := Run(context.Background(), cfg, &progress)
		if err != nil {
			t.Fatal(err)
		}
		checkConsistent(t, rep)
		if rep.Counts.Sent != 20 || rep.Counts.WarmupExcluded != 4 {
			t.Fatalf("counts %+v, want 20 measured and 4 warm-up", rep.Counts)
		}
		if want := rep.Counts.Completed * 8; rep.Throughput.OutputTokens != want {
			t.Fatalf("%d output tokens, want %d (ignore_eos, 8 per request)", rep.Throughput.OutputTokens, want)
		}
		if n := rep.FinishReasons["length"]; n != rep.Counts.Completed {
			t.Fatalf("finish reasons %v, want every request to end by length (ignore_eos)", rep.FinishReasons)
		}
		if rep.Goodput.Met != rep.Counts.Completed {
			t.Fatalf("goodput %+v under generous SLOs, want every request", rep.Goodput)
		}
		if len(rep.ByTurn) != 3 {
			t.Fatalf("by turn %+v, want 3 turns", rep.ByTurn)
		}
		if c := rep.ByTurn[0].MeanCachedTokens; c != 0 {
			t.Fatalf("first turns reused %v cached tokens, want 0", c)
		}
		for _, ts := range rep.ByTurn[1:] {
			// Turn n continues the session: it reuses at least the earlier prompts and outputs.
			if ts.MeanCachedTokens < float64(ts.Turn*(8+8))-1 {
				t.Fatalf("turn %d reused %v cached tokens: the server-side session state was not kept", ts.Turn+1, ts.MeanCachedTokens)
			}
		}
		if s := rep.Sessions; s.ServerSide == 0 || s.Measured == 0 || s.StateBytes.Mean <= 0 || s.RecurrentBytes.Mean <= 0 {
			t.Fatalf("sessions %+v", s)
		}
		if p := progress.String(); !strings.Contains(p, "done ") || !strings.HasSuffix(p, "\n") {
			t.Fatalf("progress output %q", p)
		}
		var html bytes.Buffer
		if err := rep.WriteHTML(&html); err != nil || strings.Count(html.String(), "<svg ") != 6 {
			t.Fatalf("HTML report: %v", err)
		}
	})

	t.Run("open loop", func(t *testing.T) {
		checkOurLeaks(t)
		cfg := testConfig(addr)
		cfg.Mode, cfg.Rate = OpenLoop, 60
		cfg.BurstEvery, cfg.BurstSize = 200*time.Millisecond, 3
		cfg.Requests, cfg.Duration = 0, 600*time.Millisecond
		cfg.OutputTokens = Fixed(4)
		rep, err := Run(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkConsistent(t, rep)
		if rep.Counts.Sent < 15 || rep.Counts.Dropped != 0 {
			t.Fatalf("counts %+v, want about 0.6s x (60 + 15)/s arrivals", rep.Counts)
		}
	})

	t.Run("conversations", func(t *testing.T) {
		checkOurLeaks(t)
		path := filepath.Join(t.TempDir(), "conv.jsonl")
		lines := `{"turns": ["Hello there", "Tell me more", "And then?"]}` + "\n" + `{"prompt": "Once upon a time", "max_tokens": 3}` + "\n"
		if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(addr)
		cfg.Conversations = path
		cfg.Concurrency, cfg.Requests = 2, 8
		rep, err := Run(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkConsistent(t, rep)
		if len(rep.ByTurn) < 2 || rep.ByTurn[1].MeanCachedTokens <= 0 {
			t.Fatalf("by turn %+v: chat turns did not continue their session", rep.ByTurn)
		}
	})

	t.Run("word prompts", func(t *testing.T) {
		cfg := testConfig(addr)
		cfg.PromptKind = PromptWords
		cfg.Requests = 4
		rep, err := Run(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkConsistent(t, rep)
		if rep.Throughput.PromptTokens < 4*8 {
			t.Fatalf("%d prompt tokens for 4 requests of >= 8", rep.Throughput.PromptTokens)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		checkOurLeaks(t)
		cfg := testConfig(addr)
		cfg.Requests, cfg.Duration = 0, time.Minute
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		start := time.Now()
		rep, err := Run(ctx, cfg, nil)
		if !errors.Is(err, context.DeadlineExceeded) || rep == nil || !rep.Interrupted {
			t.Fatalf("Run = %v, %v; want a report marked interrupted and the context's error", rep, err)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("interrupted run took %s to return", el)
		}
		if k := rep.Counts; k.Completed+k.Failed != k.Sent || k.Sent == 0 || k.Failed > cfg.Concurrency {
			// At most the requests in flight at the interruption fail.
			t.Fatalf("counts %+v, errors %+v", k, rep.Errors)
		}
	})
}

func TestRunUnreachable(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig("127.0.0.1:1")
	cfg.RPCTimeout = 2 * time.Second
	_, err := Run(context.Background(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "model info") {
		t.Fatalf("Run against a closed port = %v, want a model info error", err)
	}
}

func TestRunInvalidConfig(t *testing.T) {
	if _, err := Run(context.Background(), Config{}, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("Run(Config{}) = %v, want ErrConfig", err)
	}
}
