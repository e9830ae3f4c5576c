package trunknode

import (
	"context"
	"errors"
	"math"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/wire"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// fakeExpert is an ExpertService whose expert e multiplies a row by e+1: the
// dispatcher is tested against it without a model.
type fakeExpert struct {
	pb.UnimplementedExpertServiceServer
	mu      sync.Mutex
	fail    bool          // answer every chunk with an error
	hold    chan struct{} // when set, answer only once it is closed
	delay   time.Duration // answer each chunk this much later (compute on another machine)
	chunks  int
	maxSize int  // largest ExpertBatch received, in bytes
	sums    bool // answer per-row sums even when asked per pair (GPU and older nodes)
	perPair bool // answer per pair even when asked for sums (a misbehaving node)
}

func (f *fakeExpert) Dispatch(st grpc.BidiStreamingServer[pb.ExpertBatch, pb.ExpertResult]) error {
	for {
		b, err := st.Recv()
		if err != nil {
			return nil
		}
		f.mu.Lock()
		f.chunks++
		f.maxSize = max(f.maxSize, proto.Size(b))
		fail, hold, delay := f.fail, f.hold, f.delay
		f.mu.Unlock()
		if hold != nil {
			<-hold
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		res := &pb.ExpertResult{StepId: b.StepId, Layer: b.Layer, Chunk: b.Chunk, Rows: b.Rows}
		if fail {
			res.Error = "expert node: injected failure"
		} else if (b.PerPair && !f.sums) || f.perPair {
			h, k := int(b.Hidden), int(b.TopK)
			x := make([]float32, int(b.Rows)*h)
			wire.Decode(b.Dtype, x, b.Activations)
			res.PerPair = true
			for r := range int(b.Rows) {
				for j := range k {
					if w := b.Weights[r*k+j]; w != 0 {
						res.Out = wire.Encode(b.Dtype, res.Out, fakePair(x[r*h:(r+1)*h], b.ExpertIds[r*k+j], w))
					}
				}
			}
		} else {
			h, k := int(b.Hidden), int(b.TopK)
			x := make([]float32, int(b.Rows)*h)
			wire.Decode(b.Dtype, x, b.Activations)
			out := make([]float32, len(x))
			for r := range int(b.Rows) {
				for j := range k {
					w := b.Weights[r*k+j] * float32(b.ExpertIds[r*k+j]+1)
					for i := range h {
						out[r*h+i] += w * x[r*h+i]
					}
				}
			}
			res.Out = wire.Encode(b.Dtype, nil, out)
		}
		if err := st.Send(res); err != nil {
			return nil
		}
	}
}

// fakePair is the fake expert e's weighted output for row x.
func fakePair(x []float32, e uint32, w float32) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(w*float32(e+1)) * v
	}
	return out
}

// serveFake starts fake expert nodes and returns their addresses.
func serveFake(t testing.TB, fakes ...*fakeExpert) []string {
	t.Helper()
	var addrs []string
	for _, f := range fakes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
		pb.RegisterExpertServiceServer(s, f)
		go s.Serve(lis)
		t.Cleanup(s.Stop)
		addrs = append(addrs, lis.Addr().String())
	}
	return addrs
}

func newTestDispatcher(t *testing.T, cfg DispatchConfig, hidden int) *Dispatcher {
	cfg.Dial = newTestDispatcherDial()
	d := NewDispatcher(cfg, hidden)
	t.Cleanup(d.Close)
	return d
}

// newTestDispatcherDial dials fake expert nodes in plaintext.
func newTestDispatcherDial() func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	return func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	}
}

// request builds a layer call of rows rows routed to experts (row+j) mod 4.
func request(rows, hidden, topK int) (*hybrid.ExpertRequest, []float32) {
	req := &hybrid.ExpertRequest{Layer: 0, Rows: rows, Hidden: hidden, TopK: topK, X: make([]float32, rows*hidden),
		Experts: make([]int32, rows*topK), Weights: make([]float32, rows*topK), Out: make([]float32, rows*hidden)}
	want := make([]float32, rows*hidden)
	for r := range rows {
		for i := range hidden {
			req.X[r*hidden+i] = float32((r*7+i)%13) / 8
		}
		for j := range topK {
			e := (r + j) % 4
			req.Experts[r*topK+j], req.Weights[r*topK+j] = int32(e), 1/float32(topK)
			for i := range hidden {
				want[r*hidden+i] += req.X[r*hidden+i] * float32(e+1) / float32(topK)
			}
		}
	}
	return req, want
}

func maxDiff(a, b []float32) float64 {
	var m float64
	for i := range a {
		m = max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

func table2(a, b string, replicateZero bool) *routing.Table {
	t := routing.NewTable(1, 1, 4)
	t.Nodes = []routing.Node{{ID: "a", Addr: a}, {ID: "b", Addr: b}}
	for e := range 4 {
		node := "a"
		if e >= 2 {
			node = "b"
		}
		t.Replicas[0][e] = []routing.Replica{{Node: node, Share: 1}}
	}
	if replicateZero {
		t.Replicas[0][0] = append(t.Replicas[0][0], routing.Replica{Node: "b", Share: 1})
	}
	return t
}

func TestDispatchSplitsAndSums(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	for _, dt := range []pb.WireDType{pb.WireDType_WIRE_DTYPE_F32, pb.WireDType_WIRE_DTYPE_BF16} {
		t.Run(dt.String(), func(t *testing.T) {
			d := newTestDispatcher(t, DispatchConfig{WireDType: dt}, 64)
			d.SetTable(table2(addrs[0], addrs[1], false))
			req, want := request(9, 64, 2)
			st := d.Step(context.Background())
			if err := st.Begin(req).Wait(); err != nil {
				t.Fatal(err)
			}
			tol := 1e-6
			if dt == pb.WireDType_WIRE_DTYPE_BF16 {
				tol = 0.1 // rows and sums rounded to bf16
			}
			if m := maxDiff(req.Out, want); m > tol {
				t.Fatalf("max diff %g", m)
			}
			if calls := st.Calls(); len(calls) != 2 {
				t.Fatalf("%d node calls recorded, want 2", len(calls))
			}
		})
	}
}

// f32 rows are twice as large as bf16 rows: chunks must be sized for the
// dtype on the wire, or messages exceed the limit (they did).
func TestDispatchChunksUnderMessageLimit(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	const limit = 64 << 10
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, MaxMsgBytes: limit}, 1024)
	d.SetTable(table2(addrs[0], addrs[1], false))
	req, want := request(200, 1024, 2)
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
		t.Fatal(err)
	}
	if m := maxDiff(req.Out, want); m > 1e-5 {
		t.Fatalf("max diff %g", m)
	}
	for _, f := range []*fakeExpert{fa, fb} {
		if f.maxSize > limit || f.chunks < 2 {
			t.Fatalf("largest message %d bytes (limit %d), %d chunks", f.maxSize, limit, f.chunks)
		}
	}
}

func TestDispatchRetriesOnAnotherReplica(t *testing.T) {
	fa, fb := &fakeExpert{fail: true}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Deadline: 300 * time.Millisecond}, 16)
	d.SetTable(table2(addrs[0], addrs[1], true))
	// Only expert 0 (replicated on a and b) and experts 2, 3 (b): a fails, b answers.
	req, want := request(4, 16, 1)
	for r := range 4 {
		req.Experts[r] = []int32{0, 2, 3, 0}[r]
		for i := range 16 {
			want[r*16+i] = req.X[r*16+i] * float32(req.Experts[r]+1)
		}
		req.Weights[r] = 1
	}
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
		t.Fatal(err)
	}
	if m := maxDiff(req.Out, want); m > 1e-6 {
		t.Fatalf("max diff %g", m)
	}
	if d.Stats().Retries.Load() == 0 {
		t.Fatal("no retry recorded")
	}
	// Expert 1 lives only on the failing node: the call fails after the deadline.
	req, _ = request(1, 16, 1)
	req.Experts[0] = 1
	if err := d.Step(context.Background()).Begin(req).Wait(); err == nil {
		t.Fatal("a call with no working replica succeeded")
	}
}

// The step's context is what bounds its layer calls: cancelling it (the node
// shutting down) ends a call stuck on a silent expert node at once, not after
// the per-call timeout.
func TestDispatchStepContextCancels(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	fa, fb := &fakeExpert{hold: hold}, &fakeExpert{hold: hold}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{Timeout: time.Minute, Deadline: time.Minute}, 16)
	d.SetTable(table2(addrs[0], addrs[1], false))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := request(2, 16, 1)
	p := d.Step(ctx).Begin(req)
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	err := p.Wait()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancellation took %v", d)
	}
}

func TestRowsPerChunk(t *testing.T) {
	for _, tc := range []struct {
		maxMsg, elem, hidden, k int
		perPair                 bool
		want                    int
	}{
		{16 << 20, 2, 1536, 6, false, (16<<20 - 4096) / (2*1536 + 48 + 16)},
		{16 << 20, 4, 1536, 6, false, (16<<20 - 4096) / (4*1536 + 48 + 16)},
		{1000, 4, 4096, 8, false, 1}, // one row always goes, even over the limit
		// Per-pair answers carry up to k rows back per row sent: they bound the chunk.
		{16 << 20, 2, 1536, 6, true, (16<<20 - 4096) / (6*2*1536 + 16)},
		{16 << 20, 2, 1536, 1, true, (16<<20 - 4096) / (2*1536 + 8 + 16)},
	} {
		if got := rowsPerChunk(tc.maxMsg, tc.elem, tc.hidden, tc.k, tc.perPair); got != tc.want {
			t.Errorf("rowsPerChunk(%d, %d, %d, %d, %v) = %d, want %d", tc.maxMsg, tc.elem, tc.hidden, tc.k, tc.perPair, got, tc.want)
		}
	}
}

// A down mark does not outlive its evidence: it expires unless renewed, and a
// node that answers a call is marked up at once.
func TestDownMarksExpireAndClear(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Deadline: 2 * time.Second}, 16)
	d.SetTable(table2(addrs[0], addrs[1], true))
	d.MarkDown("a", 100*time.Millisecond)
	if !d.isDown("a") {
		t.Fatal("not down right after MarkDown")
	}
	time.Sleep(150 * time.Millisecond)
	if d.isDown("a") {
		t.Fatal("a down mark outlived its TTL")
	}
	// A call in flight when the mark lands still answers: the mark is cleared.
	d.MarkDown("b", time.Hour)
	d.markAnswered("b")
	if d.isDown("b") {
		t.Fatal("a node that answered is still down")
	}
}

// A layer call that cannot complete for some rows fails only those rows (their
// sequences fail) when the caller accepts row failures; the others are
// computed.
func TestDispatchFailsOnlyUncomputableRows(t *testing.T) {
	fa, fb := &fakeExpert{fail: true}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Deadline: 200 * time.Millisecond}, 16)
	d.SetTable(table2(addrs[0], addrs[1], false)) // experts 0, 1 on the failing node a; 2, 3 on b
	req, want := request(4, 16, 1)
	for r := range 4 {
		req.Experts[r] = []int32{0, 2, 1, 3}[r]
		req.Weights[r] = 1
		for i := range 16 {
			want[r*16+i] = req.X[r*16+i] * float32(req.Experts[r]+1)
		}
	}
	req.Failed = make([]bool, 4)
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
		t.Fatalf("the whole call failed: %v", err)
	}
	if !req.Failed[0] || req.Failed[1] || !req.Failed[2] || req.Failed[3] {
		t.Fatalf("failed rows %v, want [true false true false]", req.Failed)
	}
	for _, r := range []int{1, 3} {
		if m := maxDiff(req.Out[r*16:(r+1)*16], want[r*16:(r+1)*16]); m > 1e-6 {
			t.Fatalf("row %d: max diff %g", r, m)
		}
	}
}

// A node that goes silent stalls a layer call by a fraction of a second, not
// the call timeout: once it has a round trip on record and the pairs have
// another replica, the call is hedged to the replica after HedgeFactor x RTT.
func TestDispatchHedgesSilentNode(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Timeout: 5 * time.Second, Deadline: 10 * time.Second,
		HedgeFactor: 8, HedgeMin: 50 * time.Millisecond}, 16)
	tb := table2(addrs[0], addrs[1], true) // expert 0 on a (first) and b
	d.SetTable(tb)
	call := func() (time.Duration, error) {
		req, want := request(1, 16, 1)
		req.Experts[0], req.Weights[0] = 0, 1
		for i := range 16 {
			want[i] = req.X[i]
		}
		start := time.Now()
		err := d.Step(context.Background()).Begin(req).Wait()
		if err == nil && maxDiff(req.Out, want) > 1e-6 {
			t.Fatalf("wrong result")
		}
		return time.Since(start), err
	}
	for range 5 { // round trips on record for a
		if _, err := call(); err != nil {
			t.Fatal(err)
		}
	}
	fa.mu.Lock()
	aCalls := fa.chunks
	hold := make(chan struct{})
	fa.hold = hold
	fa.mu.Unlock()
	defer close(hold)
	if aCalls == 0 {
		t.Fatal("node a answered no call before going silent")
	}
	took, err := call()
	if err != nil {
		t.Fatal(err)
	}
	if took > 500*time.Millisecond {
		t.Fatalf("a silent node stalled the call %v (timeout 5s), want under 0.5s", took)
	}
	t.Logf("silent node: call completed in %v via the other replica", took)
}

// After a hedge, the next calls skip the silent node at once.
func TestDispatchSkipsSuspectAfterHedge(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Timeout: 5 * time.Second, Deadline: 10 * time.Second,
		HedgeFactor: 8, HedgeMin: 50 * time.Millisecond}, 16)
	d.SetTable(table2(addrs[0], addrs[1], true))
	call := func() time.Duration {
		req, _ := request(1, 16, 1)
		req.Experts[0], req.Weights[0] = 0, 1
		start := time.Now()
		if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	for range 3 {
		call()
	}
	hold := make(chan struct{})
	defer close(hold)
	fa.mu.Lock()
	fa.hold = hold
	fa.mu.Unlock()
	call() // hedged: one miss, the node stays eligible
	call() // hedged again: now suspect
	var total time.Duration
	for range 10 {
		total += call()
	}
	if total > 200*time.Millisecond {
		t.Fatalf("10 calls after the hedge took %v: the silent node was tried again", total)
	}
}

// A replica with share 0 is a standby: it gets no rows while the replicas
// with a share answer, and takes them at once, in the same layer call, when
// they fail (placement keeps such replicas so that a node's death leaves every
// expert served; waiting for a new table stalled every session for seconds).
func TestDispatchFallsBackToStandbyReplica(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	// The deadline is the time a layer call waits for a table that covers a
	// failed node's experts: the standby must make that wait unnecessary.
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Deadline: 5 * time.Second}, 16)
	tb := table2(addrs[0], addrs[1], false)
	tb.Replicas[0][0] = append(tb.Replicas[0][0], routing.Replica{Node: "b", Share: 0})
	d.SetTable(tb)
	req, want := request(4, 16, 1)
	for r := range 4 {
		req.Experts[r], req.Weights[r] = 0, 1
		for i := range 16 {
			want[r*16+i] = req.X[r*16+i]
		}
	}
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
		t.Fatal(err)
	}
	if m := maxDiff(req.Out, want); m > 1e-6 {
		t.Fatalf("max diff %g", m)
	}
	if fb.chunks != 0 {
		t.Fatalf("the standby replica got %d chunks while the replica with the share answered", fb.chunks)
	}
	fa.mu.Lock()
	fa.fail = true
	fa.mu.Unlock()
	req, _ = request(4, 16, 1)
	for r := range 4 {
		req.Experts[r], req.Weights[r] = 0, 1
	}
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
		t.Fatal(err)
	}
	if m := maxDiff(req.Out, want); m > 1e-6 {
		t.Fatalf("after the failover: max diff %g", m)
	}
	fb.mu.Lock()
	chunks := fb.chunks
	fb.mu.Unlock()
	if chunks == 0 {
		t.Fatal("the standby replica got nothing when the other failed")
	}
}

// The deterministic combine: every pair answered on its own (rounded to the
// wire type by itself) and summed in expert-id order, so the result is
// bitwise the same whatever node holds which expert, and equal to that
// order's sum computed here; nodes that answer sums still work.
func TestDispatchDeterministicCombine(t *testing.T) {
	fa, fb, fs := &fakeExpert{}, &fakeExpert{}, &fakeExpert{sums: true}
	addrs := serveFake(t, fa, fb, fs)
	for _, dt := range []pb.WireDType{pb.WireDType_WIRE_DTYPE_F32, pb.WireDType_WIRE_DTYPE_BF16} {
		t.Run(dt.String(), func(t *testing.T) {
			const rows, h, k = 9, 64, 3
			ref, _ := request(rows, h, k)
			// Expected: per pair, the node's float32 product rounded to the
			// wire type, added in increasing expert id.
			want := make([]float32, rows*h)
			for r := range rows {
				order := []int{0, 1, 2}
				for a := range order {
					for b := a + 1; b < len(order); b++ {
						if ref.Experts[r*k+order[b]] < ref.Experts[r*k+order[a]] {
							order[a], order[b] = order[b], order[a]
						}
					}
				}
				xr := make([]float32, h)
				wire.Decode(dt, xr, wire.Encode(dt, nil, ref.X[r*h:(r+1)*h]))
				for _, j := range order {
					p := make([]float32, h)
					wire.Decode(dt, p, wire.Encode(dt, nil, fakePair(xr, uint32(ref.Experts[r*k+j]), ref.Weights[r*k+j])))
					for i := range h {
						want[r*h+i] += p[i]
					}
				}
			}
			placements := map[string]*routing.Table{"a:01 b:23": table2(addrs[0], addrs[1], false), "b:01 a:23": table2(addrs[1], addrs[0], false),
				"a:01 b:23, 0 also on b": table2(addrs[0], addrs[1], true)}
			for name, tb := range placements {
				d := newTestDispatcher(t, DispatchConfig{WireDType: dt, Deterministic: true}, h)
				d.SetTable(tb)
				req, _ := request(rows, h, k)
				if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
					t.Fatal(err)
				}
				for i := range want {
					if math.Float32bits(req.Out[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s: out[%d] = %g, want %g bitwise", name, i, req.Out[i], want[i])
					}
				}
				in := d.Stats().BytesIn.Load()
				if wantIn := uint64(rows * k * h * wire.Size(dt)); in != wantIn {
					t.Errorf("%s: %d bytes back, want %d (one row per pair)", name, in, wantIn)
				}
			}
			// The control: without the deterministic combine each node's sum
			// is rounded to the bf16 wire once, and the result is not that
			// order's sum (so the check above can fail).
			if dt == pb.WireDType_WIRE_DTYPE_BF16 {
				d := newTestDispatcher(t, DispatchConfig{WireDType: dt}, h)
				d.SetTable(table2(addrs[0], addrs[1], false))
				req, _ := request(rows, h, k)
				if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
					t.Fatal(err)
				}
				same := 0
				for i := range want {
					if math.Float32bits(req.Out[i]) == math.Float32bits(want[i]) {
						same++
					}
				}
				if same == len(want) {
					t.Error("per-node sums over the bf16 wire gave bitwise the deterministic combine's result: the control shows nothing")
				}
			}
			// A node that answers sums: correct to rounding, not bitwise.
			d := newTestDispatcher(t, DispatchConfig{WireDType: dt, Deterministic: true}, h)
			d.SetTable(table2(addrs[0], addrs[2], false))
			req, exact := request(rows, h, k)
			if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
				t.Fatal(err)
			}
			if m := maxDiff(req.Out, exact); m > 0.1 {
				t.Fatalf("with a node answering sums: max diff %g", m)
			}
		})
	}
}

// A node answering per pair to a batch that asked for row sums is a
// malformed answer (retried elsewhere), not a crash of the trunk; one
// answering sums to a per-pair batch is counted.
func TestDispatchAnswerFormMismatch(t *testing.T) {
	bad, good, sums := &fakeExpert{perPair: true}, &fakeExpert{}, &fakeExpert{sums: true}
	addrs := serveFake(t, bad, good, sums)
	d := newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Deadline: 300 * time.Millisecond}, 16)
	d.SetTable(table2(addrs[0], addrs[1], false))
	req, _ := request(4, 16, 2)
	if err := d.Step(context.Background()).Begin(req).Wait(); err == nil {
		t.Fatal("a call whose node answered in the wrong form succeeded")
	}
	d = newTestDispatcher(t, DispatchConfig{WireDType: pb.WireDType_WIRE_DTYPE_F32, Deterministic: true}, 16)
	d.SetTable(table2(addrs[1], addrs[2], false))
	req, want := request(4, 16, 2)
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
		t.Fatal(err)
	}
	if m := maxDiff(req.Out, want); m > 1e-5 {
		t.Fatalf("max diff %g", m)
	}
	if d.Stats().SumsInstead.Load() == 0 {
		t.Error("sums answered to per-pair batches were not counted")
	}
}

// TestDispatchBeginSendsBeforeReturning: once the streams are open, Begin
// hands every node's messages to its stream before it returns, so that they
// leave while the caller computes the shared expert on every P. (Sent from
// the call's goroutine, as before, they waited for the caller to block: on
// one P here, deterministically; measured on bench-cluster, 243 µs p50 from
// Begin to the send against 13-16 µs.)
func TestDispatchBeginSendsBeforeReturning(t *testing.T) {
	fa, fb := &fakeExpert{}, &fakeExpert{}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{}, 64)
	d.SetTable(table2(addrs[0], addrs[1], false))
	req, want := request(4, 64, 2)
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil { // opens the streams
		t.Fatal(err)
	}
	prev := runtime.GOMAXPROCS(1)
	before := d.Stats().Messages.Load()
	p := d.Step(context.Background()).Begin(req)
	sent := d.Stats().Messages.Load() - before
	runtime.GOMAXPROCS(prev)
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if sent != 2 {
		t.Fatalf("Begin returned with %d of 2 messages handed to the streams", sent)
	}
	if m := maxDiff(req.Out, want); m > 0.1 {
		t.Fatalf("max diff %g", m)
	}
}

// TestDispatchCountsWait: the time a step blocks in Wait for expert nodes
// that answer late is counted (the trunk's switchyard_dispatch_wait_seconds
// and bench-cluster's "blocked ms").
func TestDispatchCountsWait(t *testing.T) {
	hold := make(chan struct{})
	fa, fb := &fakeExpert{hold: hold}, &fakeExpert{hold: hold}
	addrs := serveFake(t, fa, fb)
	d := newTestDispatcher(t, DispatchConfig{}, 64)
	d.SetTable(table2(addrs[0], addrs[1], false))
	req, want := request(4, 64, 2)
	p := d.Step(context.Background()).Begin(req)
	received := func(f *fakeExpert) bool { f.mu.Lock(); defer f.mu.Unlock(); return f.chunks > 0 }
	go func() {
		// The nodes answer once both have their chunks: the caller is in
		// Wait by then. (Polled here, off the test's goroutine, which
		// cannot fail the test; the answers go out whatever happens.)
		for deadline := time.Now().Add(10 * time.Second); !(received(fa) && received(fb)) && time.Now().Before(deadline); {
			runtime.Gosched()
		}
		close(hold)
	}()
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if m := maxDiff(req.Out, want); m > 0.1 {
		t.Fatalf("max diff %g", m)
	}
	if d.Stats().WaitNanos.Load() <= 0 {
		t.Fatal("the time blocked in Wait was not counted")
	}
}
