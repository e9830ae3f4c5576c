package trunknode

import (
	"context"
	"runtime"
	"testing"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// TestTokensSentBeforeTheNextStep: on one P, a stream's tokens reach the
// client about one chunk per step. The scheduler yields after each step,
// so the request's pump sends before the next step's compute takes the P;
// without the yield it ran only when the scheduler was preempted or idle,
// and chunks carried many tokens each.
func TestTokensSentBeforeTheNextStep(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	c, _ := startLocal(t, nil)
	const n = 48
	s, err := c.Generate(context.Background(), &pb.GenerateRequest{Input: &pb.GenerateRequest_TokenIds{TokenIds: ids([]int{1, 2, 3})}, MaxTokens: n, IgnoreEos: true})
	if err != nil {
		t.Fatal(err)
	}
	chunks, tokens := 0, 0
	for {
		m, err := s.Recv()
		if err != nil {
			break
		}
		if k := len(m.GetChunk().GetTokenIds()); k > 0 {
			chunks++
			tokens += k
		}
	}
	if tokens != n {
		t.Fatalf("%d tokens, want %d", tokens, n)
	}
	// The runtime takes a goroutine from the global queue first every 61st
	// schedule, so a chunk may now and then carry two.
	if chunks < n*3/4 {
		t.Fatalf("%d tokens came in %d chunks, want about one each (at least %d chunks)", n, chunks, n*3/4)
	}
}
