package expertnode

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-serving/switchyard/model/kernels"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func TestDispatchMatchesReference(t *testing.T) {
	full := fullModel(t)
	tb := staticTable(t, 1)
	held := heldBy(tb, "a")
	for _, tc := range []struct {
		name   string
		path   string
		steps  int // steps sent back to back
		rows   int // rows per step
		chunks int // chunks per step
		window time.Duration
	}{
		{"one row", fixtureHF, 1, 1, 1, 0},
		{"decode steps", fixtureHF, 12, 4, 1, 0},
		{"prefill chunked", fixtureHF, 2, 33, 3, 0},
		{"more steps than the stream window", fixtureHF, 40, 3, 1, 0},
		{"coalesce window expires", fixtureHF, 10, 2, 2, time.Millisecond},
		{"gguf checkpoint", fixtureGGUF, 6, 9, 2, 0},
	} {
		for _, dev := range testDevices() {
			t.Run(dev+"/"+tc.name, func(t *testing.T) {
				checkGoroutines(t)
				if tc.path == fixtureGGUF {
					// The node's GGUF holds F32 weights (float32 activations): the reference's bf16 hf weights must not round the activations to bf16.
					defer kernels.SetBF16Activations(kernels.SetBF16Activations(false))
				}
				cfg := testConfig(tc.path)
				cfg.Device = dev
				cfg.MaxInflightPerStream = 8
				cfg.CoalesceWindow = tc.window
				e := startEnv(t, cfg, hooks{})
				e.assign(t, tb)
				rng := rand.New(rand.NewPCG(uint64(tc.steps), uint64(tc.rows)))
				s := e.stream(t)
				sent := map[resultKey]*pb.ExpertBatch{}
				var wg sync.WaitGroup
				var got map[resultKey]*pb.ExpertResult
				total := tc.steps * tc.chunks
				wg.Go(func() { got = recvAll(t, s, total) })
				for step := range tc.steps {
					layer := step % fxLayers
					for c := range tc.chunks {
						b := randomBatch(rng, uint64(step), layer, tc.rows, held[layer])
						b.Chunk, b.Chunks = uint32(c), uint32(tc.chunks)
						sent[keyOf(b)] = b
						mustSend(t, s, b)
					}
				}
				wg.Wait()
				if len(got) != total {
					t.Fatalf("%d results, want %d", len(got), total)
				}
				for k, b := range sent {
					r, ok := got[k]
					if !ok {
						t.Fatalf("no result for %+v", k)
					}
					checkResultOn(t, dev, full, b, r)
				}
				closeAndDrain(t, s)
			})
		}
	}
}

func TestBadBatchKeepsStream(t *testing.T) {
	checkGoroutines(t)
	full := fullModel(t)
	tb := staticTable(t, 1)
	held := heldBy(tb, "a")
	e := startEnv(t, testConfig(fixtureHF), hooks{})
	e.assign(t, tb)
	rng := rand.New(rand.NewPCG(3, 3))
	notHeld := uint32(1) // layer 0 holds even experts
	for _, tc := range []struct {
		name   string
		mutate func(*pb.ExpertBatch)
		want   string
	}{
		{"zero rows", func(b *pb.ExpertBatch) { b.Rows = 0 }, "rows is 0"},
		{"zero top_k", func(b *pb.ExpertBatch) { b.TopK = 0 }, "top_k is 0"},
		{"wrong hidden", func(b *pb.ExpertBatch) {
			b.Hidden = fxHidden / 2
			b.Rows *= 2
			b.ExpertIds = append(b.ExpertIds, b.ExpertIds...)
			b.Weights = append(b.Weights, b.Weights...)
		}, "model hidden size is 64"},
		{"short bytes", func(b *pb.ExpertBatch) { b.Activations = b.Activations[:len(b.Activations)-2] }, "activations for"},
		{"odd bytes", func(b *pb.ExpertBatch) { b.Activations = b.Activations[:len(b.Activations)-1] }, "activations for"},
		{"fewer expert ids", func(b *pb.ExpertBatch) { b.ExpertIds = b.ExpertIds[1:] }, "expert_ids"},
		{"fewer weights", func(b *pb.ExpertBatch) { b.Weights = b.Weights[1:] }, "weights"},
		{"nan weight", func(b *pb.ExpertBatch) { b.Weights[0] = float32(math.NaN()) }, "weight 0 is NaN"},
		{"layer out of range", func(b *pb.ExpertBatch) { b.Layer = fxLayers }, "layer 6 out of range"},
		{"expert out of range", func(b *pb.ExpertBatch) { b.ExpertIds[1] = fxExperts }, "expert id 8 out of range"},
		{"unassigned expert", func(b *pb.ExpertBatch) { b.ExpertIds[2] = notHeld }, "layer 0 expert 1 is not assigned to node \"a\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := e.stream(t)
			bad := randomBatch(rng, 10, 0, 3, held[0])
			tc.mutate(bad)
			mustSend(t, s, bad)
			good := randomBatch(rng, 11, 0, 3, held[0])
			mustSend(t, s, good)
			got := recvAll(t, s, 2)
			wantErrorResult(t, got[resultKey{10, bad.Layer, 0}], tc.want)
			checkResult(t, full, good, got[resultKey{11, 0, 0}])
			closeAndDrain(t, s)
		})
	}
}

func TestProtocolErrorEndsStream(t *testing.T) {
	checkGoroutines(t)
	g := newGate()
	e := startEnv(t, testConfig(fixtureHF), g.hooks())
	t.Cleanup(g.open)
	tb := staticTable(t, 1)
	e.assign(t, tb)
	held := heldBy(tb, "a")
	rng := rand.New(rand.NewPCG(4, 4))
	for _, tc := range []struct {
		name string
		send func(s pb.ExpertService_DispatchClient)
		want string
	}{
		{"chunk index not below chunks", func(s pb.ExpertService_DispatchClient) {
			b := randomBatch(rng, 1, 0, 2, held[0])
			b.Chunk, b.Chunks = 3, 3
			mustSend(t, s, b)
		}, "chunk index 3 is not below chunks 3"},
		{"chunk index without chunks", func(s pb.ExpertService_DispatchClient) {
			b := randomBatch(rng, 1, 0, 2, held[0])
			b.Chunk, b.Chunks = 1, 0
			mustSend(t, s, b)
		}, "chunk index 1 is not below chunks 0"},
		{"duplicate outstanding chunk", func(s pb.ExpertService_DispatchClient) {
			// The gate holds the compute loop, so the first copy is still outstanding.
			b := randomBatch(rng, 5, 1, 2, held[1])
			mustSend(t, s, b)
			mustSend(t, s, proto.Clone(b).(*pb.ExpertBatch))
		}, "step 5 layer 1 chunk 0 is already outstanding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := e.stream(t)
			tc.send(s)
			r, err := s.Recv()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Recv = %v, %v; want InvalidArgument", r, err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.want) {
				t.Fatalf("status message %q, want it to contain %q", msg, tc.want)
			}
		})
	}
	g.open()
	// The node is unaffected: a fresh stream works.
	full := fullModel(t)
	s := e.stream(t)
	b := randomBatch(rng, 9, 2, 4, held[2])
	mustSend(t, s, b)
	checkResult(t, full, b, recvAll(t, s, 1)[resultKey{9, 2, 0}])
	closeAndDrain(t, s)
}

// TestCoalescing sends chunks for the same layer from two streams while both are
// queued and checks they are computed as one batch, with correct results.
func TestCoalescing(t *testing.T) {
	full := fullModel(t)
	tb := staticTable(t, 1)
	held := heldBy(tb, "a")
	const rowsA, rowsB = 5, 7
	for _, tc := range []struct {
		name  string
		cfg   func(*Config)
		gated bool
	}{
		// Default mode (no window): a gate holds the compute loop until both are queued.
		{"take everything queued", func(*Config) {}, true},
		// Window mode: the round starts as soon as MaxBatchRows rows are queued.
		{"coalesce window filled", func(c *Config) { c.CoalesceWindow = time.Minute; c.MaxBatchRows = rowsA + rowsB }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			cfg := testConfig(fixtureHF)
			tc.cfg(&cfg)
			g := newGate()
			h := hooks{}
			if tc.gated {
				h = g.hooks()
			}
			e := startEnv(t, cfg, h)
			t.Cleanup(g.open)
			e.assign(t, tb)
			rng := rand.New(rand.NewPCG(5, 5))
			a, b := e.stream(t), e.stream(t)
			ba := randomBatch(rng, 100, 4, rowsA, held[4])
			bb := randomBatch(rng, 200, 4, rowsB, held[4])
			mustSend(t, a, ba)
			mustSend(t, b, bb)
			if tc.gated {
				waitFor(t, 10*time.Second, "both chunks queued", func() bool { n, _ := e.node.q.state(); return n == 2 })
				g.open()
			}
			checkResult(t, full, ba, recvAll(t, a, 1)[resultKey{100, 4, 0}])
			checkResult(t, full, bb, recvAll(t, b, 1)[resultKey{200, 4, 0}])
			st := e.stats(t, false)
			if st.Batches != 1 || st.Rows != rowsA+rowsB {
				t.Fatalf("Stats: %d batches, %d rows; want 1 batch (2 requests coalesced), %d rows", st.Batches, st.Rows, rowsA+rowsB)
			}
			closeAndDrain(t, a)
			closeAndDrain(t, b)
		})
	}
}

// TestCoalescingMixedLayers checks that one round with several layers and
// streams computes one batch per layer and answers every chunk correctly.
func TestCoalescingMixedLayers(t *testing.T) {
	checkGoroutines(t)
	full := fullModel(t)
	tb := staticTable(t, 1)
	held := heldBy(tb, "a")
	g := newGate()
	e := startEnv(t, testConfig(fixtureHF), g.hooks())
	t.Cleanup(g.open)
	e.assign(t, tb)
	rng := rand.New(rand.NewPCG(6, 6))
	const streams, perStream = 3, 4 // each stream sends layers 0..3
	ss := make([]pb.ExpertService_DispatchClient, streams)
	sent := make([][]*pb.ExpertBatch, streams)
	for i := range ss {
		ss[i] = e.stream(t)
		for l := range perStream {
			b := randomBatch(rng, uint64(i), l, 1+rng.IntN(6), held[l])
			sent[i] = append(sent[i], b)
			mustSend(t, ss[i], b)
		}
	}
	waitFor(t, 10*time.Second, "all chunks queued", func() bool { n, _ := e.node.q.state(); return n == streams*perStream })
	g.open()
	for i, s := range ss {
		got := recvAll(t, s, perStream)
		for _, b := range sent[i] {
			checkResult(t, full, b, got[keyOf(b)])
		}
		closeAndDrain(t, s)
	}
	if st := e.stats(t, false); st.Batches != perStream {
		t.Fatalf("Stats: %d batches for %d requests over %d layers, want %d", st.Batches, streams*perStream, perStream, perStream)
	}
}

func TestStatsCountsAndReset(t *testing.T) {
	checkGoroutines(t)
	tb := staticTable(t, 1)
	held := heldBy(tb, "a")
	e := startEnv(t, testConfig(fixtureHF), hooks{})
	e.assign(t, tb)
	rng := rand.New(rand.NewPCG(7, 7))
	s := e.stream(t)
	want := map[[2]uint32]uint64{}
	rows := uint64(0)
	for step := range 5 {
		b := randomBatch(rng, uint64(step), step, 3+step, held[step])
		for _, id := range b.ExpertIds {
			want[[2]uint32{b.Layer, id}]++
		}
		rows += uint64(b.Rows)
		mustSend(t, s, b)
		recvAll(t, s, 1)
	}
	// An error result counts nothing.
	bad := randomBatch(rng, 99, 0, 3, held[0])
	bad.Hidden = 1
	mustSend(t, s, bad)
	recvAll(t, s, 1)
	closeAndDrain(t, s)

	st := e.stats(t, true)
	if st.Batches != 5 || st.Rows != rows {
		t.Fatalf("Stats: %d batches, %d rows; want 5, %d", st.Batches, st.Rows, rows)
	}
	got := map[[2]uint32]uint64{}
	for i, c := range st.Counts {
		if c.Rows == 0 {
			t.Fatalf("zero count reported for layer %d expert %d", c.Layer, c.Expert)
		}
		if i > 0 {
			p := st.Counts[i-1]
			if p.Layer > c.Layer || (p.Layer == c.Layer && p.Expert >= c.Expert) {
				t.Fatalf("counts not ordered by (layer, expert): %v then %v", p, c)
			}
		}
		got[[2]uint32{c.Layer, c.Expert}] = c.Rows
	}
	if len(got) != len(want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("count of layer %d expert %d = %d, want %d", k[0], k[1], got[k], v)
		}
	}
	if st := e.stats(t, false); st.Batches != 0 || st.Rows != 0 || len(st.Counts) != 0 {
		t.Fatalf("after reset: %d batches, %d rows, %d counts; want zeros", st.Batches, st.Rows, len(st.Counts))
	}
}

// TestClientCancel cancels a stream whose chunks are queued: the handler ends,
// the compute loop skips the chunks, and the node keeps serving.
func TestClientCancel(t *testing.T) {
	checkGoroutines(t)
	g := newGate()
	e := startEnv(t, testConfig(fixtureHF), g.hooks())
	t.Cleanup(g.open)
	tb := staticTable(t, 1)
	e.assign(t, tb)
	held := heldBy(tb, "a")
	rng := rand.New(rand.NewPCG(8, 8))

	ctx, cancel := context.WithCancel(context.Background())
	s, err := e.client.Dispatch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for step := range 3 {
		mustSend(t, s, randomBatch(rng, uint64(step), 0, 2, held[0]))
	}
	waitFor(t, 10*time.Second, "chunks queued", func() bool { n, _ := e.node.q.state(); return n == 3 })
	cancel()
	waitFor(t, 10*time.Second, "queued chunks cancelled", func() bool {
		e.node.q.mu.Lock()
		defer e.node.q.mu.Unlock()
		for _, j := range e.node.q.jobs {
			if !j.cancelled() {
				return false
			}
		}
		return true
	})
	g.open()
	waitFor(t, 10*time.Second, "queue drained", func() bool { n, _ := e.node.q.state(); return n == 0 })

	full := fullModel(t)
	s2 := e.stream(t)
	b := randomBatch(rng, 7, 0, 2, held[0])
	mustSend(t, s2, b)
	checkResult(t, full, b, recvAll(t, s2, 1)[resultKey{7, 0, 0}])
	closeAndDrain(t, s2)
	if st := e.stats(t, false); st.Batches != 1 {
		t.Fatalf("Stats: %d batches, want 1 (the cancelled stream's chunks are skipped)", st.Batches)
	}
}
