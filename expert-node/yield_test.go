package expertnode

import (
	"context"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcstats "google.golang.org/grpc/stats"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// sentCounter counts the messages the server hands to gRPC (stats.OutPayload,
// reported by the goroutine that sends).
type sentCounter struct{ n atomic.Int64 }

func (c *sentCounter) TagRPC(ctx context.Context, _ *grpcstats.RPCTagInfo) context.Context {
	return ctx
}
func (c *sentCounter) TagConn(ctx context.Context, _ *grpcstats.ConnTagInfo) context.Context {
	return ctx
}
func (c *sentCounter) HandleConn(context.Context, grpcstats.ConnStats) {}
func (c *sentCounter) HandleRPC(_ context.Context, s grpcstats.RPCStats) {
	if _, ok := s.(*grpcstats.OutPayload); ok {
		c.n.Add(1)
	}
}

// TestAnswersSentBetweenRounds: on one P, with chunks queued for several
// rounds, each round's answers are handed to gRPC before the next round
// starts: the compute loop yields after each round. Without the yield the
// send loops ran only once the queue was empty.
func TestAnswersSentBetweenRounds(t *testing.T) {
	checkGoroutines(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const rounds, rows = 6, 3
	cfg := testConfig(fixtureHF)
	cfg.MaxBatchRows = rows // one chunk per round
	var (
		mu     sync.Mutex
		seen   []int64 // answers sent when each round started
		opened = make(chan struct{})
		sent   sentCounter
	)
	n, err := newNode(cfg, hooks{roundStart: func() {
		<-opened
		mu.Lock()
		seen = append(seen, sent.n.Load())
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(n.ServerOptions(), grpc.StatsHandler(&sent))...)
	n.Register(srv)
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tb := staticTable(t, 1)
	if err := n.SetAssignment(tb); err != nil {
		t.Fatal(err)
	}
	held := heldBy(tb, "a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := pb.NewExpertServiceClient(conn).Dispatch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range rounds {
		mustSend(t, s, randomBatch(rng, uint64(i+1), 4, rows, held[4]))
	}
	// The first round waits in its hook (it has taken nothing yet) until
	// every chunk is queued.
	waitFor(t, 10*time.Second, "every chunk queued", func() bool { k, _ := n.q.state(); return k == rounds })
	close(opened)
	recvAll(t, s, rounds)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < rounds {
		t.Fatalf("%d rounds, want %d (one chunk each)", len(seen), rounds)
	}
	// The runtime takes a goroutine from the global queue first every 61st
	// schedule, so a round may now and then start before the last answer left.
	late := 0
	for k := 1; k < rounds; k++ {
		if seen[k] < int64(k) {
			late++
		}
	}
	if late > 1 {
		t.Fatalf("answers sent when each round started: %v; want round k to start after the k answers before it", seen[:rounds])
	}
}
