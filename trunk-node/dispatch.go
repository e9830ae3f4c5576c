package trunknode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/wire"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// ErrNoReplica means an expert has no reachable replica.
var ErrNoReplica = errors.New("trunknode: no reachable replica")

// DispatchConfig tunes the remote expert dispatcher.
type DispatchConfig struct {
	// Timeout bounds one attempt of one node's part of a layer step.
	Timeout time.Duration
	// Deadline bounds a whole layer call including retries and waiting for a
	// replica to appear (requests wait rather than fail while experts are re-placed).
	Deadline time.Duration
	// MaxMsgBytes is the largest message sent; bigger batches are chunked.
	MaxMsgBytes int
	// Dial opens a connection to an expert node.
	Dial func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	// WireDType is the element type of rows on the wire (default bfloat16).
	WireDType pb.WireDType
	// Deterministic asks expert nodes for every (row, expert) pair's output
	// on its own (rounded to WireDType by itself) and adds each row's pairs
	// in increasing expert id, as hybrid.ComputeExperts does in process: a
	// row's result then depends neither on how experts are placed nor on the
	// rows it is batched with. Without it nodes answer one sum per row, whose
	// rounding depends on which experts the node holds (fewer bytes back).
	// On by default (DefaultConfig): it cost no throughput measurable above
	// the noise on loopback (docs/performance.md: what --deterministic costs).
	Deterministic bool
	// OnCall, if set, observes every per-node round trip of a layer call (metrics,
	// traces, benchmarks). It must not block.
	OnCall func(CallInfo)
	// Tracer, if set, opens a span per node call of a traced step.
	Tracer trace.Tracer
	// Logger receives stream events (opened, lost, nodes marked down).
	Logger *slog.Logger
	// HedgeFactor: a node call whose pairs all have another replica is given
	// up after HedgeFactor times the node's recent round trip (at least
	// HedgeMin, at most Timeout) and its pairs re-sent to the other replicas,
	// so a silent node stalls a step by a fraction of a second, not Timeout.
	// 0: no hedging.
	HedgeFactor float64
	HedgeMin    time.Duration
}

// CallInfo describes one node's part of one MoE layer dispatch.
type CallInfo struct {
	Node     string
	Layer    int
	Rows     int // token rows sent to the node
	Pairs    int // (row, expert) pairs the node computed
	BytesOut int // payload bytes sent (rows in bf16 + ids + weights)
	BytesIn  int // payload bytes received
	Start    time.Time
	RTT      time.Duration // send of the first chunk to arrival of the last result
	Compute  time.Duration // the node's reported compute time (sum over chunks)
	Attempt  int           // 0 for the first try, >0 for retries
	Err      error
	ctx      context.Context // the dispatch span's context (exemplars)
}

// Dispatcher is the trunk's hybrid.ExpertBackend over remote expert nodes: per MoE
// layer step it groups rows by expert node using the current routing table, sends
// one message per node on that node's long-lived stream, and sums the per-row
// results; a failed node's pairs are retried on other replicas.
type Dispatcher struct {
	cfg       DispatchConfig
	hidden    int
	table     atomic.Pointer[routing.Table]
	step      atomic.Uint64
	sumWarned sync.Map // node -> true: warned that it answers sums (sumsInstead)

	tracer trace.Tracer

	mu     sync.Mutex
	conns  map[string]*nodeStream   // node id -> stream
	down   map[string]time.Time     // node id -> marked down until
	rtt    map[string]time.Duration // node id -> recent round trip (EWMA of successful calls)
	misses map[string]int           // node id -> call limits missed in a row

	stats DispatchStats

	actMu    sync.Mutex
	counts   [][]uint64 // [layer][expert] routed pairs since the last Activations(true)
	lastSeen [][]uint64 // counts at the last detailDelta
}

// countPairs adds a layer call's routed pairs to the activation counts.
func (d *Dispatcher) countPairs(layer int, experts []int32, weights []float32) {
	d.actMu.Lock()
	defer d.actMu.Unlock()
	for len(d.counts) <= layer {
		d.counts = append(d.counts, nil)
	}
	row := d.counts[layer]
	for i, e := range experts {
		if weights[i] == 0 || e < 0 {
			continue
		}
		for len(row) <= int(e) {
			row = append(row, 0)
		}
		row[e]++
	}
	d.counts[layer] = row
}

// detailDelta returns the counts added since its last call (for the opt-in
// per-expert metric), independent of Activations resets.
func (d *Dispatcher) detailDelta() [][]uint64 {
	cur := d.Activations(false)
	d.actMu.Lock()
	defer d.actMu.Unlock()
	out := make([][]uint64, len(cur))
	for l, row := range cur {
		out[l] = make([]uint64, len(row))
		for e, v := range row {
			var prev uint64
			if l < len(d.lastSeen) && e < len(d.lastSeen[l]) {
				prev = d.lastSeen[l][e]
			}
			if v >= prev {
				out[l][e] = v - prev
			} else {
				out[l][e] = v // reset in between
			}
		}
	}
	d.lastSeen = cur
	return out
}

// Activations returns the per-(layer, expert) routed-pair counts since the last
// reset (the load report the coordinator consumes), optionally resetting them.
func (d *Dispatcher) Activations(reset bool) [][]uint64 {
	d.actMu.Lock()
	defer d.actMu.Unlock()
	out := make([][]uint64, len(d.counts))
	for i, r := range d.counts {
		out[i] = append([]uint64(nil), r...)
		if reset {
			clear(r)
		}
	}
	return out
}

// DispatchStats are cumulative counters (read with Stats).
type DispatchStats struct {
	Calls, Messages, Retries, Failures atomic.Uint64
	BytesOut, BytesIn, Rows            atomic.Uint64
	// SumsInstead counts chunks a node answered with row sums although
	// per-pair answers were asked (Deterministic).
	SumsInstead atomic.Uint64
	// WaitNanos is the time forward steps spent blocked on layer calls
	// after their own work (the shared expert): what the remote experts
	// cost the trunk beyond what it overlaps. With ping-pong micro-batches
	// the other micro-batch may compute during a wait: not all of it is
	// idle time.
	WaitNanos atomic.Int64
}

// NewDispatcher returns a dispatcher for a model of the given hidden size.
func NewDispatcher(cfg DispatchConfig, hidden int) *Dispatcher {
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Deadline == 0 {
		cfg.Deadline = 30 * time.Second
	}
	if cfg.MaxMsgBytes == 0 {
		cfg.MaxMsgBytes = 16 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HedgeMin <= 0 {
		cfg.HedgeMin = 100 * time.Millisecond
	}
	return &Dispatcher{cfg: cfg, hidden: hidden, tracer: cfg.Tracer, conns: map[string]*nodeStream{}, down: map[string]time.Time{},
		rtt: map[string]time.Duration{}, misses: map[string]int{}}
}

// SetTable switches to a new routing table; calls in flight keep the table they
// started with, the next layer call uses the new one (a step boundary in practice).
func (d *Dispatcher) SetTable(t *routing.Table) {
	d.table.Store(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	keep := map[string]bool{}
	for _, n := range t.Nodes {
		keep[n.ID] = true
		if c, ok := d.conns[n.ID]; ok && c.addr != n.Addr {
			c.close(errors.New("node address changed"))
			delete(d.conns, n.ID)
		}
	}
	for id, c := range d.conns {
		if !keep[id] {
			c.close(errors.New("node left the routing table"))
			delete(d.conns, id)
		}
	}
}

// Table returns the current routing table (nil before the first).
func (d *Dispatcher) Table() *routing.Table { return d.table.Load() }

// MarkDown stops sending to a node for a while (gossip or a failed stream said so).
func (d *Dispatcher) MarkDown(node string, for_ time.Duration) {
	d.mu.Lock()
	_, already := d.down[node]
	d.down[node] = time.Now().Add(for_)
	if !already { // a renewal leaves everything else as it is
		d.cfg.Logger.Warn("expert node marked down", "expert", node, "for", for_)
		if c, ok := d.conns[node]; ok {
			c.close(errors.New("node marked down"))
			delete(d.conns, node)
		}
	}
	d.mu.Unlock()
}

// MarkUp lets a node receive rows again.
func (d *Dispatcher) MarkUp(node string) {
	d.mu.Lock()
	delete(d.down, node)
	d.mu.Unlock()
}

func (d *Dispatcher) isDown(node string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	until, ok := d.down[node]
	if ok && time.Now().After(until) {
		delete(d.down, node)
		return false
	}
	return ok
}

// Close ends every stream.
func (d *Dispatcher) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, c := range d.conns {
		c.close(errors.New("dispatcher closed"))
		delete(d.conns, id)
	}
}

// Stats returns the counters.
func (d *Dispatcher) Stats() *DispatchStats { return &d.stats }

// pair is one (row, slot) of a request.
type pair struct {
	row    int32
	slot   int32 // row*TopK + j: the pair's index in the request
	expert int32
	weight float32
}

// pending is a layer call in flight.
type pending struct {
	done  chan struct{}
	err   error
	stats *DispatchStats
}

// Wait blocks until the call is done and adds the time it blocked (the
// remote experts' time beyond the caller's own work since Begin) to the
// stats.
func (p *pending) Wait() error {
	select {
	case <-p.done:
	default:
		start := time.Now()
		<-p.done
		p.stats.WaitNanos.Add(int64(time.Since(start)))
	}
	return p.err
}

// StepBackend is one forward step's expert backend: the routed experts of
// every MoE layer of the step, computed under the step's context, and the
// record of the node calls made.
type StepBackend interface {
	hybrid.ExpertBackend
	// Calls returns the node calls of the step so far.
	Calls() []CallInfo
}

// Step is the dispatcher's StepBackend: layer calls run under ctx (its trace
// span becomes the parent of the dispatch spans; its cancellation ends the
// calls) and are recorded for the step's trace.
type Step struct {
	d   *Dispatcher
	ctx context.Context

	mu    sync.Mutex
	calls []CallInfo
}

var _ StepBackend = (*Step)(nil)

// Step opens a forward step's backend.
func (d *Dispatcher) Step(ctx context.Context) StepBackend { return &Step{d: d, ctx: ctx} }

// Begin starts a layer call: it sends the first attempt's messages on the
// caller's goroutine to every node whose stream is open, and leaves waiting,
// retries and streams still to dial to a goroutine, so the caller computes
// the shared expert meanwhile.
//
// It then yields once (runtime.Gosched), so that the streams' send loops and
// gRPC's writers put the messages on the socket before the caller's next
// matmuls take every P. Without that the messages waited for the shared
// expert to finish: the expert nodes started that much later, and the
// overlap this call exists for did not happen.
func (st *Step) Begin(req *hybrid.ExpertRequest) hybrid.Pending {
	p := &pending{done: make(chan struct{}), stats: &st.d.stats}
	lc := st.d.newLayerCall(req)
	first := st.d.sendFirst(st, lc)
	if first != nil && len(first.sent) > 0 {
		runtime.Gosched()
	}
	go func() {
		defer close(p.done)
		p.err = st.d.run(st, lc, first)
	}()
	return p
}

// Calls implements StepBackend.
func (st *Step) Calls() []CallInfo {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]CallInfo(nil), st.calls...)
}

func (st *Step) record(c CallInfo) {
	st.mu.Lock()
	if len(st.calls) < 4096 {
		st.calls = append(st.calls, c)
	}
	st.mu.Unlock()
}

// layerCall is the state of one layer call.
type layerCall struct {
	req      *hybrid.ExpertRequest
	todo     []pair
	src      [][]byte // src[slot]: a pair's answer (per-pair answers), added in expert order once every node has answered
	deadline time.Time
}

// newLayerCall counts the call's pairs, clears req.Out and lists the pairs to compute.
func (d *Dispatcher) newLayerCall(req *hybrid.ExpertRequest) *layerCall {
	d.stats.Calls.Add(1)
	d.countPairs(req.Layer, req.Experts[:req.Rows*req.TopK], req.Weights[:req.Rows*req.TopK])
	clear(req.Out[:req.Rows*req.Hidden])
	lc := &layerCall{req: req, deadline: time.Now().Add(d.cfg.Deadline), todo: make([]pair, 0, req.Rows*req.TopK)}
	for i := 0; i < req.Rows*req.TopK; i++ {
		lc.todo = append(lc.todo, pair{row: int32(i / req.TopK), slot: int32(i), expert: req.Experts[i], weight: req.Weights[i]})
	}
	if d.cfg.Deterministic {
		lc.src = make([][]byte, req.Rows*req.TopK)
	}
	return lc
}

// firstAttempt is a layer call's first assignment, made by Begin, with the
// node calls it already sent.
type firstAttempt struct {
	t      *routing.Table
	groups map[string][]pair
	sent   map[string]*nodeCall
}

// sendFirst assigns the call's pairs and sends each node's share whose
// stream is open (dialing is left to run's goroutines); nil when the pairs
// cannot all be assigned now (run waits and retries).
func (d *Dispatcher) sendFirst(st *Step, lc *layerCall) *firstAttempt {
	t := d.table.Load()
	if t == nil {
		return nil
	}
	groups, missing := d.assign(t, lc.req.Layer, lc.todo, nil)
	if len(missing) > 0 {
		return nil
	}
	fa := &firstAttempt{t: t, groups: groups, sent: make(map[string]*nodeCall, len(groups))}
	for node, pairs := range groups {
		if s := d.liveStream(node); s != nil {
			fa.sent[node] = d.sendCall(st, t, node, s, lc.req, pairs, 0, lc.src)
		}
	}
	return fa
}

// run performs one layer call: assign pairs to nodes, send, collect, retry.
// first, if not nil, is the first attempt as Begin assigned and (partly) sent it.
func (d *Dispatcher) run(st *Step, lc *layerCall, first *firstAttempt) error {
	req, todo, src, deadline := lc.req, lc.todo, lc.src, lc.deadline
	failed := map[string]bool{}
	var lastErr error
	for attempt := 0; len(todo) > 0; attempt++ {
		t := d.table.Load()
		var groups map[string][]pair
		var missing []pair
		var sent map[string]*nodeCall
		if attempt == 0 && first != nil {
			t, groups, sent = first.t, first.groups, first.sent
		} else if t != nil {
			groups, missing = d.assign(t, req.Layer, todo, failed)
		}
		if t == nil {
			lastErr = errors.New("no routing table yet")
		} else {
			if len(missing) == 0 {
				var mu sync.Mutex
				var retry []pair
				var wg sync.WaitGroup
				for node, pairs := range groups {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var err error
						if c := sent[node]; c != nil {
							err = d.finishCall(st, c, req, src)
						} else {
							err = d.callNode(st, t, node, req, pairs, attempt, src)
						}
						if err != nil {
							mu.Lock()
							failed[node] = true
							lastErr = fmt.Errorf("expert node %s: %w", node, err)
							retry = append(retry, pairs...)
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				todo = retry
				if len(todo) == 0 {
					d.combine(req, src)
					return nil
				}
				d.stats.Retries.Add(1)
				continue
			}
			lastErr = fmt.Errorf("%w for layer %d expert %d", ErrNoReplica, req.Layer, missing[0].expert)
		}
		if time.Now().After(deadline) {
			d.stats.Failures.Add(1)
			if req.Failed == nil || t == nil {
				return lastErr
			}
			err := d.failRows(st, t, req, todo, attempt, lastErr, src)
			d.combine(req, src)
			return err
		}
		// Wait for the table to change or a node to come back, then try again with
		// a clean failure set.
		select {
		case <-st.ctx.Done():
			d.stats.Failures.Add(1)
			return fmt.Errorf("%w (last error: %v)", st.ctx.Err(), lastErr)
		case <-time.After(min(50*time.Millisecond<<min(attempt, 4), 500*time.Millisecond)):
		}
		clear(failed)
	}
	return nil
}

// failRows ends a layer call that ran out of time by failing only the rows
// it could not compute (their sequences fail; the others of the step go on):
// pairs that have a replica get one last try, the rest fail their rows.
func (d *Dispatcher) failRows(st *Step, t *routing.Table, req *hybrid.ExpertRequest, todo []pair, attempt int, cause error, src [][]byte) error {
	groups, lost := d.assign(t, req.Layer, todo, nil)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for node, pairs := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.callNode(st, t, node, req, pairs, attempt+1, src); err != nil {
				mu.Lock()
				lost = append(lost, pairs...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rows := map[int32]bool{}
	for _, p := range lost {
		req.Failed[p.row] = true
		rows[p.row] = true
	}
	if len(rows) > 0 {
		d.cfg.Logger.Warn("routed experts failed for some rows; only their sequences fail", "layer", req.Layer, "rows", len(rows), "of", req.Rows, "cause", cause)
	}
	return nil
}

// assign picks a replica for every pair: the live replica with the least traffic
// assigned so far in this call relative to its share (replicas of one expert split
// its rows). A replica with share 0 (loaded, but given no traffic by the plan)
// is a standby: it takes a pair only when every replica with a share has
// failed or is down, so a node's death never waits for a new table while
// another node holds the expert. Pairs with no usable replica are returned as
// missing.
func (d *Dispatcher) assign(t *routing.Table, layer int, todo []pair, failed map[string]bool) (map[string][]pair, []pair) {
	groups := map[string][]pair{}
	load := map[string]float64{}
	var missing []pair
	for _, p := range todo {
		best, bestScore := "", math.Inf(1)
		standby, standbyLoad := "", math.Inf(1)
		for _, r := range t.Lookup(layer, int(p.expert)) {
			if failed[r.Node] || d.isDown(r.Node) {
				continue
			}
			if r.Share <= 0 {
				if load[r.Node] < standbyLoad {
					standby, standbyLoad = r.Node, load[r.Node]
				}
				continue
			}
			score := load[r.Node] / r.Share
			if score < bestScore {
				best, bestScore = r.Node, score
			}
		}
		if best == "" {
			best = standby
		}
		if best == "" {
			missing = append(missing, p)
			continue
		}
		load[best]++
		groups[best] = append(groups[best], p)
	}
	return groups, missing
}

// callNode sends one node's pairs (chunked by rows) and adds the results into
// req.Out, or, for per-pair answers, records each pair's answer in src (nil:
// row sums asked). It is all-or-nothing per node: results are staged and
// used only once every chunk has arrived, so a failed node's pairs can be
// retried elsewhere without double counting.
func (d *Dispatcher) callNode(st *Step, t *routing.Table, node string, req *hybrid.ExpertRequest, pairs []pair, attempt int, src [][]byte) error {
	return d.finishCall(st, d.sendCall(st, t, node, nil, req, pairs, attempt, src), req, src)
}

// nodeCall is one node's part of a layer call: sent (or failed to send),
// its results awaited by finishCall.
type nodeCall struct {
	node     string
	info     CallInfo
	span     trace.Span
	s        *nodeStream
	g        nodeRows
	perChunk int
	step     uint64
	ctx      context.Context
	cancel   context.CancelFunc
	waits    []chan *pb.ExpertResult
	err      error // the send failed
}

// sendCall sends a node's pairs on s (nil: the node's stream, dialed if
// needed). A failure is kept in the call for finishCall to report.
func (d *Dispatcher) sendCall(st *Step, t *routing.Table, node string, s *nodeStream, req *hybrid.ExpertRequest, pairs []pair, attempt int, src [][]byte) *nodeCall {
	c := &nodeCall{node: node, info: CallInfo{Node: node, Layer: req.Layer, Pairs: len(pairs), Start: time.Now(), Attempt: attempt}}
	var carrier map[string]string
	c.span, carrier = d.traceCall(st.ctx, &c.info)
	addr, ok := t.Addr(node)
	if !ok {
		c.err = fmt.Errorf("not in routing table")
		return c
	}
	if s == nil {
		if s, c.err = d.stream(node, addr); c.err != nil {
			return c
		}
	}
	c.s = s
	c.g = groupRows(pairs)
	c.perChunk = rowsPerChunk(d.cfg.MaxMsgBytes, wire.Size(d.cfg.WireDType), req.Hidden, c.g.k, src != nil)
	chunks := (len(c.g.rows) + c.perChunk - 1) / c.perChunk
	c.step = d.step.Add(1)
	c.ctx, c.cancel = context.WithTimeout(st.ctx, d.callLimit(t, node, req.Layer, pairs))
	c.waits = make([]chan *pb.ExpertResult, chunks)
	for ch := range chunks {
		r0, r1 := ch*c.perChunk, min((ch+1)*c.perChunk, len(c.g.rows))
		msg := d.encodeChunk(req, c.g, r0, r1, c.step, ch, chunks, carrier)
		msg.PerPair = src != nil
		if c.waits[ch], c.err = s.send(c.ctx, msg); c.err != nil {
			return c
		}
		n, sent := r1-r0, len(msg.Activations)+8*(r1-r0)*c.g.k
		d.stats.Messages.Add(1)
		d.stats.BytesOut.Add(uint64(sent))
		d.stats.Rows.Add(uint64(n))
		c.info.Rows += n
		c.info.BytesOut += sent
	}
	return c
}

// finishCall waits for a sent call's results and adds them into req.Out,
// or, for per-pair answers, records each pair's answer in src (nil: row
// sums asked). It is all-or-nothing per node: results are staged and used
// only once every chunk has arrived, so a failed node's pairs can be
// retried elsewhere without double counting.
func (d *Dispatcher) finishCall(st *Step, c *nodeCall, req *hybrid.ExpertRequest, src [][]byte) (err error) {
	defer func() { d.endCall(st, c.span, &c.info, err) }()
	if c.cancel != nil {
		defer c.cancel()
	}
	if c.err != nil {
		if c.s != nil {
			c.s.forget(c.step) // chunks sent before the failure
		}
		return c.err
	}
	results := make([]*pb.ExpertResult, len(c.waits))
	for ch, w := range c.waits {
		r0, r1 := ch*c.perChunk, min((ch+1)*c.perChunk, len(c.g.rows))
		pairs := 0
		if src != nil {
			pairs = c.g.nonZero(r0, r1)
		}
		if results[ch], err = d.await(c.ctx, st, c.s, c.step, w, r1-r0, pairs, src != nil, req.Hidden, &c.info); err != nil {
			return err
		}
	}
	d.addResults(req, c.g, c.perChunk, results, src)
	d.markAnswered(c.node)
	d.observeRTT(c.node, time.Since(c.info.Start))
	return nil
}

// A node that misses its call limit suspectAfter times in a row gets no rows
// for suspectFor: the next layers skip it instead of each waiting again (a
// one-off hiccup only costs the hedge; gossip decides for longer).
const (
	suspectAfter = 2
	suspectFor   = time.Second
)

// missed counts a call limit a node missed and marks it suspect when they
// repeat.
func (d *Dispatcher) missed(node string) {
	d.mu.Lock()
	d.misses[node]++
	n := d.misses[node]
	if n >= suspectAfter {
		delete(d.misses, node)
	}
	d.mu.Unlock()
	if n >= suspectAfter {
		d.MarkDown(node, suspectFor)
	}
}

// callLimit is how long one node call may take: Timeout, or, when every pair
// has another replica to hedge to, HedgeFactor times the node's recent round
// trip (bounded by HedgeMin and Timeout).
func (d *Dispatcher) callLimit(t *routing.Table, node string, layer int, pairs []pair) time.Duration {
	if d.cfg.HedgeFactor <= 0 {
		return d.cfg.Timeout
	}
	now := time.Now()
	d.mu.Lock() // once per call: this runs for every node of every layer step
	defer d.mu.Unlock()
	rtt, known := d.rtt[node]
	if !known {
		return d.cfg.Timeout
	}
	checked := map[int32]bool{}
	for _, p := range pairs {
		if checked[p.expert] {
			continue
		}
		checked[p.expert] = true
		other := false
		for _, r := range t.Lookup(layer, int(p.expert)) {
			if until, down := d.down[r.Node]; r.Node != node && (!down || now.After(until)) {
				other = true
				break
			}
		}
		if !other {
			return d.cfg.Timeout
		}
	}
	return min(d.cfg.Timeout, max(d.cfg.HedgeMin, time.Duration(d.cfg.HedgeFactor*float64(rtt))))
}

// observeRTT folds a successful call's round trip into the node's EWMA.
func (d *Dispatcher) observeRTT(node string, rtt time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.misses, node)
	if old, ok := d.rtt[node]; ok {
		d.rtt[node] = (7*old + rtt) / 8
	} else {
		d.rtt[node] = rtt
	}
}

// markAnswered clears a down mark of a node that just answered a call: the
// node is evidently up, whatever a stale report said.
func (d *Dispatcher) markAnswered(node string) {
	d.mu.Lock()
	_, was := d.down[node]
	delete(d.down, node)
	d.mu.Unlock()
	if was {
		d.cfg.Logger.Info("expert node answered; down mark cleared", "expert", node)
	}
}

// endCall records a finished node call: its span, the step's record, OnCall.
func (d *Dispatcher) endCall(st *Step, span trace.Span, info *CallInfo, err error) {
	info.RTT = time.Since(info.Start)
	info.Err = err
	if span != nil {
		span.SetAttributes(callAttrs(*info)...)
		if err != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
		span.End()
	}
	st.record(*info)
	if d.cfg.OnCall != nil {
		d.cfg.OnCall(*info)
	}
}

// nodeRows is one node's share of a layer call: the rows it gets, in order,
// each row's pairs, and the widest row (the message's top_k).
type nodeRows struct {
	rows   []int32
	perRow [][]pair
	k      int
}

func groupRows(pairs []pair) nodeRows {
	var g nodeRows
	rowIdx := map[int32]int{}
	for _, p := range pairs {
		i, ok := rowIdx[p.row]
		if !ok {
			i = len(g.rows)
			rowIdx[p.row] = i
			g.rows = append(g.rows, p.row)
			g.perRow = append(g.perRow, nil)
		}
		g.perRow[i] = append(g.perRow[i], p)
	}
	for _, pr := range g.perRow {
		g.k = max(g.k, len(pr))
	}
	return g
}

// encodeChunk builds the message of rows [r0, r1) of a node's share. Rows with
// fewer pairs than k are padded with their last expert at weight 0 (skipped by
// the node).
func (d *Dispatcher) encodeChunk(req *hybrid.ExpertRequest, g nodeRows, r0, r1 int, step uint64, c, chunks int, carrier map[string]string) *pb.ExpertBatch {
	h, k, n := req.Hidden, g.k, r1-r0
	msg := &pb.ExpertBatch{StepId: step, Layer: uint32(req.Layer), Rows: uint32(n), Hidden: uint32(h), TopK: uint32(k),
		Chunk: uint32(c), Chunks: uint32(chunks), Dtype: d.cfg.WireDType, Activations: make([]byte, 0, wire.Size(d.cfg.WireDType)*n*h),
		ExpertIds: make([]uint32, n*k), Weights: make([]float32, n*k), Trace: carrier}
	for i := range n {
		row := int(g.rows[r0+i])
		msg.Activations = wire.Encode(d.cfg.WireDType, msg.Activations, req.X[row*h:(row+1)*h])
		pr := g.perRow[r0+i]
		for j := range k {
			p := pr[min(j, len(pr)-1)]
			msg.ExpertIds[i*k+j] = uint32(p.expert)
			if j < len(pr) {
				msg.Weights[i*k+j] = p.weight
			}
		}
	}
	return msg
}

// await waits for one chunk's result and checks its shape (rows x hidden, or
// pairs x hidden for per-pair answers).
func (d *Dispatcher) await(ctx context.Context, st *Step, s *nodeStream, step uint64, ch chan *pb.ExpertResult, rows, pairs int, perPair bool, hidden int, info *CallInfo) (*pb.ExpertResult, error) {
	select {
	case res, ok := <-ch:
		if !ok || res == nil {
			return nil, s.failure()
		}
		if res.Error != "" {
			return nil, errors.New(res.Error)
		}
		if res.PerPair && !perPair {
			return nil, fmt.Errorf("malformed result: per-pair answer to a batch that asked for row sums")
		}
		if perPair && !res.PerPair {
			d.sumsInstead(s.node)
		}
		vals := rows
		if res.PerPair {
			vals = pairs
		}
		if int(res.Rows) != rows || wire.Check(d.cfg.WireDType, res.Out, vals*hidden) != nil {
			return nil, fmt.Errorf("malformed result: %d rows, %d bytes (per_pair %v)", res.Rows, len(res.Out), res.PerPair)
		}
		d.stats.BytesIn.Add(uint64(len(res.Out)))
		info.BytesIn += len(res.Out)
		info.Compute += time.Duration(res.ComputeMicros) * time.Microsecond
		return res, nil
	case <-ctx.Done():
		s.forget(step)
		if st.ctx.Err() != nil {
			return nil, st.ctx.Err()
		}
		d.cfg.Logger.Warn("expert node did not answer in time; its rows go to other replicas", "expert", s.node, "layer", info.Layer)
		d.missed(s.node)
		return nil, fmt.Errorf("no answer within the call limit (hedged to other replicas, or timed out after %v)", d.cfg.Timeout)
	}
}

// sumsInstead notes that node answered a per-pair batch with row sums (a GPU
// node, or a build without per-pair answers): those rows are correct but not
// covered by the deterministic combine. It warns once per node.
func (d *Dispatcher) sumsInstead(node string) {
	d.stats.SumsInstead.Add(1)
	if _, warned := d.sumWarned.LoadOrStore(node, true); !warned {
		d.cfg.Logger.Warn("expert node answers row sums to per-pair batches (GPU node or older build): its rows are not bitwise reproducible across placements", "expert", node)
	}
}

// nonZero counts the pairs of non-zero weight of rows [r0, r1): the pairs a
// per-pair answer holds.
func (g nodeRows) nonZero(r0, r1 int) int {
	n := 0
	for _, pr := range g.perRow[r0:r1] {
		for _, p := range pr {
			if p.weight != 0 {
				n++
			}
		}
	}
	return n
}

// addResults uses every chunk's answer: per-pair answers are recorded in src
// by slot (disjoint per node: no lock), row sums are added into req.Out under
// a lock because several nodes finish concurrently.
func (d *Dispatcher) addResults(req *hybrid.ExpertRequest, g nodeRows, perChunk int, results []*pb.ExpertResult, src [][]byte) {
	h, sz := req.Hidden, wire.Size(d.cfg.WireDType)
	for c, res := range results {
		r0 := c * perChunk
		if res.PerPair {
			off := 0
			for i := range int(res.Rows) {
				for _, p := range g.perRow[r0+i] {
					if p.weight != 0 {
						src[p.slot] = res.Out[off : off+sz*h]
						off += sz * h
					}
				}
			}
			continue
		}
		d.mu.Lock()
		for i := range int(res.Rows) {
			row := int(g.rows[r0+i])
			wire.Add(d.cfg.WireDType, req.Out[row*h:(row+1)*h], res.Out[sz*i*h:])
		}
		d.mu.Unlock()
	}
}

// combine adds the per-pair answers of each row into req.Out in increasing
// expert id, the order of hybrid.ComputeExperts (rows whose pairs were
// answered as sums by nodes that cannot answer per pair already hold them).
func (d *Dispatcher) combine(req *hybrid.ExpertRequest, src [][]byte) {
	if src == nil {
		return
	}
	h, k := req.Hidden, req.TopK
	slots := make([]int, 0, k)
	for row := range req.Rows {
		slots = slots[:0]
		for s := row * k; s < (row+1)*k; s++ {
			if src[s] == nil {
				continue
			}
			// Insertion by expert id (top-k ids of a row are distinct).
			i := len(slots)
			slots = append(slots, s)
			for ; i > 0 && req.Experts[slots[i-1]] > req.Experts[s]; i-- {
				slots[i] = slots[i-1]
			}
			slots[i] = s
		}
		dst := req.Out[row*h : (row+1)*h]
		for _, s := range slots {
			wire.Add(d.cfg.WireDType, dst, src[s])
		}
	}
}

// rowsPerChunk is how many rows fit one ExpertBatch under maxMsg bytes: each
// row carries hidden activations of elemSize bytes, k expert ids and k weights,
// plus per-field framing; 4 KiB is left for the message's other fields. With
// per-pair answers the answer (up to k rows of hidden values per row) must
// fit too.
func rowsPerChunk(maxMsg, elemSize, hidden, k int, perPair bool) int {
	rowBytes := elemSize*hidden + 8*k + 16
	if perPair {
		rowBytes = max(rowBytes, k*elemSize*hidden+16)
	}
	return max(1, (maxMsg-4096)/rowBytes)
}

// liveStream returns the node's stream if it is open, else nil (no dialing).
func (d *Dispatcher) liveStream(node string) *nodeStream {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.conns[node]; ok && !s.isClosed() {
		return s
	}
	return nil
}

// stream returns the live stream to a node, dialing if needed.
func (d *Dispatcher) stream(node, addr string) (*nodeStream, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.conns[node]; ok && !s.isClosed() {
		return s, nil
	}
	s, err := openStream(d.cfg.Dial, node, addr)
	if err != nil {
		d.cfg.Logger.Warn("opening the dispatch stream failed", "expert", node, "addr", addr, "err", err)
		return nil, err
	}
	s.log = d.cfg.Logger
	d.cfg.Logger.Info("dispatch stream opened", "expert", node, "addr", addr)
	d.conns[node] = s
	return s, nil
}

// nodeStream owns one Dispatch stream: a single send loop and a single receive
// loop; callers register a per-(step, chunk) response channel.
type nodeStream struct {
	node, addr string
	log        *slog.Logger // nil until the dispatcher adopts the stream
	conn       *grpc.ClientConn
	cancel     context.CancelFunc
	sendq      chan *pb.ExpertBatch

	mu      sync.Mutex
	waiting map[[2]uint64]chan *pb.ExpertResult // (step, chunk) -> reply
	err     error
	closed  chan struct{}
}

func openStream(dial func(context.Context, string) (*grpc.ClientConn, error), node, addr string) (*nodeStream, error) {
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	conn, err := dial(dctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := pb.NewExpertServiceClient(conn).Dispatch(ctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("open stream to %s: %w", addr, err)
	}
	s := &nodeStream{node: node, addr: addr, conn: conn, cancel: cancel, sendq: make(chan *pb.ExpertBatch, 64),
		waiting: map[[2]uint64]chan *pb.ExpertResult{}, closed: make(chan struct{})}
	go s.sendLoop(st)
	go s.recvLoop(st)
	return s, nil
}

func (s *nodeStream) sendLoop(st pb.ExpertService_DispatchClient) {
	for {
		select {
		case <-s.closed:
			return
		case m := <-s.sendq:
			if err := st.Send(m); err != nil {
				s.close(fmt.Errorf("send: %w", err))
				return
			}
		}
	}
}

func (s *nodeStream) recvLoop(st pb.ExpertService_DispatchClient) {
	for {
		res, err := st.Recv()
		if err != nil {
			if err == io.EOF {
				err = errors.New("stream closed by the expert node")
			}
			s.close(err)
			return
		}
		key := [2]uint64{res.StepId, uint64(res.Chunk)}
		s.mu.Lock()
		ch, ok := s.waiting[key]
		delete(s.waiting, key)
		s.mu.Unlock()
		if ok {
			ch <- res
		}
	}
}

// send queues a message and returns the channel its result arrives on.
func (s *nodeStream) send(ctx context.Context, m *pb.ExpertBatch) (chan *pb.ExpertResult, error) {
	ch := make(chan *pb.ExpertResult, 1)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, s.err
	}
	s.waiting[[2]uint64{m.StepId, uint64(m.Chunk)}] = ch
	s.mu.Unlock()
	select {
	case s.sendq <- m:
		return ch, nil
	case <-s.closed:
		return nil, s.failure()
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.waiting, [2]uint64{m.StepId, uint64(m.Chunk)})
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (s *nodeStream) forget(step uint64) {
	s.mu.Lock()
	for k := range s.waiting {
		if k[0] == step {
			delete(s.waiting, k)
		}
	}
	s.mu.Unlock()
}

func (s *nodeStream) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	return errors.New("stream closed")
}

func (s *nodeStream) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// close ends the stream once; waiters see their channel closed.
func (s *nodeStream) close(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	if s.log != nil {
		s.log.Warn("dispatch stream closed", "expert", s.node, "reason", err)
	}
	close(s.closed)
	for k, ch := range s.waiting {
		close(ch)
		delete(s.waiting, k)
	}
	s.mu.Unlock()
	s.cancel()
	s.conn.Close()
}
