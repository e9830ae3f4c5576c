package trunknode

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// TestSessionsBench measures what issue #12's report asks for, on the model
// in $BENCH_MODEL (default: the tiny fixture): offload and restore times
// against a re-prefill at 1K, 8K and 32K tokens, replication bytes and lag,
// and decode throughput at 32 concurrent sessions with replication on and
// off. Run by `make bench` (scripts/sessions-bench.sh); skipped otherwise.
func TestSessionsBench(t *testing.T) {
	if os.Getenv("SWITCHYARD_BENCH") == "" {
		t.Skip("set SWITCHYARD_BENCH=1 (make bench runs it)")
	}
	model := os.Getenv("BENCH_MODEL")
	lengths := []int{1024, 8192, 32768}
	if s := os.Getenv("BENCH_LENGTHS"); s != "" {
		lengths = nil
		for _, f := range strings.Fields(s) {
			var n int
			fmt.Sscan(f, &n)
			lengths = append(lengths, n)
		}
	}
	edit := func(cfg *Config) {
		if model != "" {
			cfg.ModelPath = model
		}
		cfg.Limits.MaxContext = 4096
		if len(lengths) > 0 {
			cfg.Limits.MaxContext = max(slices.Max(lengths)+64, 4096)
		}
		cfg.Tier = TierConfig{Dir: t.TempDir()}
	}
	envInt := func(name string, def int) int {
		if v := os.Getenv(name); v != "" {
			fmt.Sscan(v, &def)
		}
		return def
	}
	rounds, perTurn, sessions := envInt("BENCH_ROUNDS", 8), envInt("BENCH_TOKENS", 32), envInt("BENCH_SESSIONS", 32)
	if os.Getenv("BENCH_SKIP_TIER") != "" {
		lengths = nil
	}
	c, n, _ := serveNode(t, edit)
	ctx := context.Background()
	fmt.Printf("| context | state | prefill (re-read the conversation) | offload | restore | restore vs prefill |\n|---|---|---|---|---|---|\n")
	for _, L := range lengths {
		ids := make([]int32, L)
		for i := range ids {
			ids[i] = int32(1 + (i*7919)%(n.model.Cfg.VocabSize-2))
		}
		start := time.Now()
		s, err := c.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_TokenIds{TokenIds: &pb.TokenIds{Ids: ids}}})
		if err != nil {
			t.Fatal(err)
		}
		prefill := time.Since(start)
		sess, _ := n.store.Get(s.SessionId)
		start = time.Now()
		if err := n.offload(sess); err != nil {
			t.Fatal(err)
		}
		off := time.Since(start)
		start = time.Now()
		if _, err := c.GetSession(ctx, &pb.GetSessionRequest{SessionId: s.SessionId}); err != nil {
			t.Fatal(err)
		}
		restore := time.Since(start)
		fmt.Printf("| %d | %.1f MiB | %v | %v | %v | %.0fx faster |\n", L, float64(s.StateBytes)/(1<<20), prefill.Round(time.Millisecond),
			off.Round(100*time.Microsecond), restore.Round(100*time.Microsecond), float64(prefill)/float64(restore))
		c.DeleteSession(ctx, &pb.DeleteSessionRequest{SessionId: s.SessionId})
	}

	// Decode throughput at 32 concurrent sessions, replication on and off.
	fmt.Printf("\n| replicas | tokens/s (%d sessions, 2 trunks) | copies sent | bytes per copy | time per copy | lag p50 | lag p99 |\n|---|---|---|---|---|---|---|\n", sessions)
	for _, replicas := range []int{0, 1, 0, 1} {
		clis, nodes, _ := trunks(t, 2, func(_ int, cfg *Config) {
			if model != "" {
				cfg.ModelPath = model
			}
			cfg.Replication.Replicas = replicas
		})
		ids := createSessions(t, clis[0], sessions)
		var wg sync.WaitGroup
		var mu sync.Mutex
		tokens := 0
		start := time.Now()
		for i, id := range ids {
			wg.Go(func() {
				for round := range rounds {
					r := generate(t, clis[0], &pb.GenerateRequest{SessionId: id, Input: &pb.GenerateRequest_Text{Text: fmt.Sprintf("turn %d of %d", round, i)}, MaxTokens: int32(perTurn), IgnoreEos: true})
					if r.status != nil {
						t.Error(r.status)
						return
					}
					mu.Lock()
					tokens += len(r.ids)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		el := time.Since(start)
		st := nodes[0].replicas.snapshot()
		per, perT := 0.0, time.Duration(0)
		if st.Sent > 0 {
			per = float64(st.SentBytes) / float64(st.Sent)
			perT = time.Duration(st.SendSeconds / float64(st.Sent) * float64(time.Second))
		}
		p50, p99 := histQuantile(t, nodes[0], 0.5), histQuantile(t, nodes[0], 0.99)
		fmt.Printf("| %d | %.0f | %d | %.0f KiB | %v | %s | %s |\n", replicas, float64(tokens)/el.Seconds(), st.Sent, per/1024, perT.Round(10*time.Microsecond), p50, p99)
	}
}

// histQuantile estimates a quantile of the replication lag histogram.
func histQuantile(t *testing.T, n *Node, q float64) string {
	mfs, err := n.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "switchyard_session_replication_lag_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		total := float64(h.GetSampleCount())
		if total == 0 {
			return "-"
		}
		for _, b := range h.GetBucket() {
			if float64(b.GetCumulativeCount()) >= q*total {
				return fmt.Sprintf("<= %v", time.Duration(b.GetUpperBound()*float64(time.Second)))
			}
		}
		return "> 10s"
	}
	return "-"
}
