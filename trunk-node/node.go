// Package trunknode (folder trunk-node) is the trunk role of a Switchyard cluster:
// it serves the public gRPC API, holds every session's recurrent state and KV
// cache, runs the model's trunk (embeddings, Mamba-2, attention, routers, shared
// expert, LM head, sampling) under a continuous-batching scheduler, and dispatches
// the routed experts of each MoE layer to expert nodes following the routing table
// it watches in etcd.
//
// The node is built from units with small seams, each tested alone:
//
//   - api (server.go, snapshot.go): the public RPCs, validation and status
//     mapping; it talks to the rest through the store and Scheduler.Submit.
//   - sessions (sessions.go): the session store and its memory budgets.
//   - scheduling (scheduler.go): admission, batching and chunked prefill over a
//     Forwarder (the model; a fake in tests); tokens come from engine.Decoder,
//     the decode loop the single-process engine shares.
//   - dispatch (dispatch.go): routing, per-node streams, chunking and retries;
//     each forward step gets its own StepBackend carrying the step's context.
//   - lifecycle (node.go): Config → New → Run/Serve → Close on internal/agent.
package trunknode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Node is a trunk node: New builds it, Run (or Serve) runs it until its
// context ends, Close releases the model.
type Node struct {
	imports    chan struct{} // ImportSession slots (maxConcurrentImports)
	cfg        Config
	model      *hybrid.Model
	tok        *tokenizer.Tokenizer
	store      *Store
	sched      *Scheduler
	disp       *Dispatcher // nil with local experts
	limits     Limits
	kvPerToken int64
	size       hybrid.StateSize
	snap       snapIdentity // what this node stamps on and checks in snapshots
	metrics    *metrics
	health     interface {
		SetServing(ok bool, services ...string)
	} // the agent, once Serve runs
	ready     chan struct{}
	readyOnce sync.Once
	closeOnce sync.Once

	oa   openaiState // the HTTP API's template, vocabulary and address
	tier *tier       // sessions offloaded to disk (nil: tiering off)
	peer *peers      // the other trunks (set by Serve; guarded by mu)
	// replicas sends this trunk's sessions to others and keeps their copies.
	replicas *replicator

	mu          sync.Mutex
	metricsAddr string         // guarded by mu
	inflight    map[string]int // guarded by mu: generations per client identity
	log         *slog.Logger   // the node's (same settings as its agent's)
}

// MetricsAddr is the bound /metrics address ("" when not served).
func (n *Node) MetricsAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.metricsAddr
}

// New loads the model (the trunk half only: no routed experts are mapped unless
// LocalExperts) and builds the node.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opt := hybrid.LoadOptions{KVDType: cfg.KVDType, NoMmap: !cfg.Mmap}
	if !cfg.LocalExperts {
		opt.KeepExpert = func(int, int) bool { return false }
	}
	e, err := engine.Open(cfg.ModelPath, opt)
	if err != nil {
		return nil, err
	}
	c := e.Model.Cfg
	kvPer := e.Model.KVBytesPerToken()
	if cfg.Tracing == nil {
		if cfg.Tracing, err = telemetry.NewTracing(context.Background(), "trunk", cfg.NodeID); err != nil {
			e.Close()
			return nil, err
		}
	}
	n := &Node{imports: make(chan struct{}, maxConcurrentImports), cfg: cfg, model: e.Model, tok: e.Tok, limits: cfg.Limits, kvPerToken: kvPer,
		metrics: newMetrics(telemetry.NewRegistry(), cfg.NodeID, cfg.ExpertDetail),
		ready:   make(chan struct{}), log: cfg.Config.NewLogger(cluster.RoleTrunk), inflight: map[string]int{}}
	if mc := c.MaxPositionEmbed; c.UseRope() && mc > 0 && mc < n.limits.MaxContext {
		n.limits.MaxContext = mc
	}
	n.size = hybrid.SizeOf(c)
	if copied := e.Model.CopiedBytes(); copied > 0 {
		// The default budgets were sized before the weights were copied
		// into this process's memory: say so when they no longer fit.
		if avail, budget := availableMemory(), cfg.Memory.RecurrentBytes+cfg.Memory.KVBytes+cfg.Memory.StatePoolBytes; avail > 0 && budget > avail {
			n.log.Warn("session budgets and the state pool exceed the memory left after copying the weights; lower --recurrent-budget/--kv-budget/--state-pool-bytes or read the weights through the map (--mmap)",
				"budgets", budget, "available", avail, "weights_copied", copied)
		}
	}
	n.snap = snapIdentity{cfg: c, weights: e.Model.W.Fingerprint(), key: cfg.SnapshotKey}
	n.store = NewStore(cfg.Memory, e.Model.NewState, n.size.RecurrentBytes, kvPer)
	n.store.SetClientLimit(cfg.Clients.MaxSessions)
	n.store.EnablePrefixCache(PrefixConfig{Bytes: cfg.PrefixCacheBytes})
	if cfg.Tier.Dir != "" {
		if n.tier, err = openTier(cfg.Tier, n.snap); err != nil {
			e.Close()
			return nil, err
		}
		n.tier.disown = n.store.disown
		n.metrics.watchTier(cfg.NodeID, n.tier)
		for _, f := range n.tier.files {
			n.store.own(f.owner) // a restarted trunk's sessions on disk are their clients' still
		}
	}
	// Prefill with the exact token-by-token scan: its result does not depend
	// on how the scheduler cuts a prompt into steps (the chunked form's does),
	// so a prompt resumed from a prefix checkpoint gives the logits of a whole
	// prefill, and on the CPU it is also the faster form (README: Prefix
	// cache). The model's default since session 15; set here all the same,
	// since exactness depends on it.
	e.Model.ScanChunkedMin = 0
	// Deterministic: every kernel batch-invariant (a process-wide choice,
	// only ever turned on: other nodes of the process may need it), and
	// in-process experts round as the bf16 wire does, so the trunk computes
	// the same bits with local or remote experts.
	if cfg.Dispatch.Deterministic {
		kernels.SetBatchInvariant(true)
	}
	if le, ok := e.Model.Experts.(*hybrid.LocalExperts); ok {
		le.BF16Wire = cfg.Dispatch.Deterministic && cfg.Dispatch.WireDType == pb.WireDType_WIRE_DTYPE_BF16
	}
	deps := SchedDeps{Model: e.Model, EOS: c.EOS, Tok: e.Tok, Store: n.store, Experts: LocalSteps{e.Model.Experts}, Metrics: n.metrics, Tracing: cfg.StepTracing}
	if cfg.Tracing.Enabled {
		deps.Tracer = cfg.Tracing.Tracer()
	}
	if !cfg.LocalExperts && c.IsMoE() {
		if n.disp, err = n.newDispatcher(c.Hidden); err != nil {
			e.Close()
			return nil, err
		}
		deps.Experts = n.disp
		// Every step passes its own backend (Scheduler.forward); a forward on
		// the model's default backend would have no expert weights.
		e.Model.Experts = noExperts{}
	}
	n.sched = NewScheduler(cfg.Sched, deps)
	m := n.metrics
	m.stateLimit.WithLabelValues("recurrent").Set(float64(cfg.Memory.RecurrentBytes))
	m.stateLimit.WithLabelValues("kv").Set(float64(cfg.Memory.KVBytes))
	m.budgetUse.WithLabelValues("recurrent").Set(0)
	m.budgetUse.WithLabelValues("kv").Set(0)
	m.capacity.WithLabelValues("running").Set(float64(n.sched.cfg.MaxRunning))
	m.capacity.WithLabelValues("waiting").Set(float64(n.sched.cfg.MaxQueue))
	telemetry.RegisterModelInfo(m.reg, cfg.NodeID, config.ModelName(cfg.ModelPath), c.Layers, c.Experts)
	m.watchPrefix(cfg.NodeID, n.store)
	rc := cfg.Replication
	if rc.MaxBytes <= 0 {
		rc.MaxBytes = (cfg.Memory.RecurrentBytes + cfg.Memory.KVBytes) / 4
	}
	n.replicas = newReplicator(n, rc)
	m.watchReplicas(cfg.NodeID, n.replicas)
	return n, nil
}

func (n *Node) newDispatcher(hidden int) (*Dispatcher, error) {
	cfg := n.cfg
	dc := cfg.Dispatch
	if dc.Dial == nil {
		var extra []grpc.DialOption
		if cfg.Tracing.Enabled {
			extra = append(extra, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
				otelgrpc.WithTracerProvider(cfg.Tracing.Provider), otelgrpc.WithPropagators(telemetry.Propagator))))
		}
		dial, err := rpc.Dialer(cfg.PeerTLS, cfg.Dispatch.MaxMsgBytes+(1<<20), extra...)
		if err != nil {
			return nil, err
		}
		dc.Dial = dial
	}
	user := dc.OnCall
	dc.OnCall = func(ci CallInfo) {
		n.metrics.dispatched(ci)
		if user != nil {
			user(ci)
		}
	}
	if cfg.Tracing.Enabled {
		dc.Tracer = cfg.Tracing.Tracer()
	}
	if dc.Logger == nil {
		dc.Logger = n.log
	}
	d := NewDispatcher(dc, hidden)
	n.metrics.watchDispatch(cfg.NodeID, d)
	return d, nil
}

// noExperts is the model's default expert backend on a trunk with remote
// experts: every step brings its own (the dispatcher's Step).
type noExperts struct{}

func (noExperts) Begin(*hybrid.ExpertRequest) hybrid.Pending {
	return hybrid.Done(errors.New("trunknode: routed experts are dispatched per step; use the scheduler"))
}

// ErrClientBusy means one client has as many generations in flight as it may
// (ResourceExhausted, for that client only).
var ErrClientBusy = errors.New("trunknode: client in-flight request limit reached")

// clientSlot admits one generation of an identified client under its
// in-flight limit; release ends it. Anonymous callers (no authentication) are
// bounded by the scheduler's queue only.
func (n *Node) clientSlot(client string) (release func(), err error) {
	if client == "" || n.cfg.Clients.MaxInflight <= 0 {
		return func() {}, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.inflight[client] >= n.cfg.Clients.MaxInflight {
		return nil, fmt.Errorf("%w: %s has %d generations running; wait for one to end", ErrClientBusy, clip(client), n.inflight[client])
	}
	n.inflight[client]++
	return func() {
		n.mu.Lock()
		if n.inflight[client]--; n.inflight[client] <= 0 {
			delete(n.inflight, client)
		}
		n.mu.Unlock()
	}, nil
}

// Dispatcher returns the remote expert dispatcher (nil with local experts).
func (n *Node) Dispatcher() *Dispatcher { return n.disp }

// Ready is closed once the node can serve (a routing table is known, or experts
// are local).
func (n *Node) Ready() <-chan struct{} { return n.ready }

func (n *Node) markReady() {
	n.readyOnce.Do(func() {
		close(n.ready)
		n.mu.Lock()
		h := n.health
		n.mu.Unlock()
		if h != nil {
			h.SetServing(true, pb.Switchyard_ServiceDesc.ServiceName)
		}
	})
}

// Run serves the public API on Config.Listen until ctx ends (see Serve).
func (n *Node) Run(ctx context.Context) error {
	lis, err := n.cfg.listen()
	if err != nil {
		return err
	}
	return n.Serve(ctx, lis)
}

// Serve runs the node on lis until ctx ends, then drains: it stops admitting,
// lets running generations finish within DrainTimeout, deregisters and stops.
// A node that runs with etcd registers, follows the routing table and reports
// its experts' load; with gossip it stops sending to expert nodes that fail.
func (n *Node) Serve(ctx context.Context, lis net.Listener) error {
	a, err := agent.Start(cluster.RoleTrunk, n.cfg.Config, agent.Options{Registry: n.metrics.reg, Tracing: n.cfg.Tracing})
	if err != nil {
		lis.Close()
		n.cfg.Tracing.Shutdown(context.Background())
		return err
	}
	n.mu.Lock()
	n.metricsAddr = a.MetricsAddr()
	n.mu.Unlock()
	srv, err := a.NewServer(rpc.ServerConfig{TLS: n.cfg.PublicTLS, MaxRecvBytes: n.cfg.MaxRecvBytes, RatePerSec: n.cfg.RatePerSec,
		RateBurst: int(n.cfg.RatePerSec) + 1, AuthToken: n.cfg.APIToken, Tokens: n.cfg.APITokens, OnDone: n.callDone, Logger: a.Logger(),
		// A stream that never sends its request, or one client opening streams
		// without end, cannot hold the node's resources.
		FirstMessageTimeout: 30 * time.Second, MaxStreamsPerClient: n.cfg.Clients.MaxStreams, MaxStreams: 1024,
		PeerMethods: []string{"/" + pb.TrunkPeer_ServiceDesc.ServiceName + "/"}})
	if err != nil {
		lis.Close()
		a.Close()
		return err
	}
	pb.RegisterSwitchyardServer(srv, &api{n: n})
	p, err := newPeers(n)
	if err != nil {
		lis.Close()
		a.Close()
		return err
	}
	pb.RegisterTrunkPeerServer(srv, &peerAPI{n: n, p: p})
	reflection.Register(srv)
	n.mu.Lock()
	n.health = a // readiness through the agent's health service
	n.mu.Unlock()
	a.Go(n.sched.Run)
	a.Go(n.janitor)
	a.Go(n.replicas.run)
	if err := n.serveHTTP(a); err != nil {
		lis.Close()
		a.Close()
		return err
	}
	a.Serve(srv, lis)
	if err := a.Register(lis.Addr().String(), nil); err != nil {
		a.Close()
		return err
	}
	n.follow(a)
	p.follow(a)
	n.mu.Lock()
	n.peer = p
	n.mu.Unlock()
	defer p.close()
	select {
	case <-ctx.Done():
	case err := <-a.Err():
		a.Close()
		n.closeDispatcher()
		return err
	}
	if errors.Is(context.Cause(ctx), agent.ErrCrash) {
		a.Crash()
		n.closeDispatcher()
		return nil
	}
	n.drain()
	a.Close() // deregisters, stops the scheduler and the loops, then the server
	n.closeDispatcher()
	return nil
}

// callDone counts every public call by method and code and logs the ones the
// server failed (with the request's trace id when it is traced); client
// mistakes are logged at debug level only.
func (n *Node) callDone(ctx context.Context, method string, err error) {
	if !strings.HasPrefix(method, "/switchyard.") {
		return // health checks and reflection
	}
	code := status.Code(err)
	n.metrics.apiCalls.WithLabelValues(method, code.String()).Inc()
	switch code {
	case codes.OK, codes.Canceled:
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable, codes.DeadlineExceeded:
		n.logger().WarnContext(ctx, "request failed", "method", method, "code", code.String(), "err", err)
	default:
		n.logger().DebugContext(ctx, "request refused", "method", method, "code", code.String(), "err", err)
	}
}

// follow starts what keeps the node in step with the cluster: the routing
// table and load reports (remote experts with etcd) and gossip's view of the
// expert nodes.
func (n *Node) follow(a *agent.Agent) {
	if n.disp == nil || a.Etcd() == nil {
		n.markReady()
		return
	}
	a.Go(func(ctx context.Context) { n.reportLoad(ctx, a.Registration()) })
	a.Go(func(ctx context.Context) { cluster.WatchTable(ctx, a.Etcd(), n.applyTable) })
	// A down mark lasts only while gossip keeps reporting the node dead: it is
	// renewed every downRenew for downTTL, so a stale or forged report cannot
	// keep a healthy node out of service (and a node that answers a call is
	// marked up at once by the dispatcher).
	var mu sync.Mutex
	down := map[string]bool{}
	a.WatchPeers(250*time.Millisecond, func(all agent.View) {
		v := all.Of(cluster.RoleExpert)
		mu.Lock()
		defer mu.Unlock()
		for id := range v.Dead {
			if !down[id] {
				down[id] = true
				n.disp.MarkDown(id, downTTL)
				n.logger().Warn("gossip: expert node failed; no more rows to it", "expert", id)
			}
		}
		for id := range down {
			if _, dead := v.Dead[id]; !dead {
				delete(down, id)
				n.disp.MarkUp(id)
				n.logger().Info("gossip: expert node is back", "expert", id)
			}
		}
	})
	a.Go(func(ctx context.Context) {
		t := time.NewTicker(downRenew)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			mu.Lock()
			for id := range down {
				n.disp.MarkDown(id, downTTL)
			}
			mu.Unlock()
		}
	})
}

// How long a gossip down mark lasts without renewal, and how often it is
// renewed while gossip still reports the node dead.
const (
	downTTL   = 15 * time.Second
	downRenew = 5 * time.Second
)

// applyTable switches the dispatcher to a new routing table.
func (n *Node) applyTable(t *routing.Table) {
	n.disp.SetTable(t)
	n.metrics.tableVersion.Set(float64(t.Version))
	reps := 0
	for _, row := range t.Replicas {
		for _, r := range row {
			reps += len(r)
		}
	}
	n.metrics.replicas.Set(float64(reps))
	if t.Imbalance > 0 {
		n.metrics.imbalance.WithLabelValues("predicted").Set(t.Imbalance)
	}
	n.logger().Info("routing table applied", "version", t.Version, "replicas", reps)
	n.markReady()
}

// drain stops admitting and waits (up to DrainTimeout) for running and queued
// generations to finish.
func (n *Node) drain() {
	n.mu.Lock()
	h := n.health
	n.mu.Unlock()
	if h != nil {
		h.SetServing(false, pb.Switchyard_ServiceDesc.ServiceName) // balancers stop sending new calls
	}
	n.sched.Drain()
	r, w := n.sched.Load()
	n.logger().Info("draining", "running", r, "waiting", w, "timeout", n.cfg.DrainTimeout)
	deadline := time.Now().Add(n.cfg.DrainTimeout)
	defer func() {
		// The idle sessions go to the other trunks (a rolling upgrade keeps
		// every conversation); with tiering, what is left is written out: a
		// trunk restarted with the same directory serves it.
		if p := n.peerSet(); p != nil {
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.DrainTimeout+pullTimeout)
			moved, failed := p.handOff(ctx)
			cancel()
			if moved+failed > 0 {
				n.logger().Info("handed sessions to the other trunks", "moved", moved, "failed", failed)
			}
		}
		n.offloadIdle(time.Now(), true)
	}()
	for time.Now().Before(deadline) {
		if r, w := n.sched.Load(); r == 0 && w == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r, w = n.sched.Load()
	n.logger().Warn("drain timeout: ending the remaining generations", "running", r, "waiting", w)
}

func (n *Node) closeDispatcher() {
	if n.disp != nil {
		n.disp.Close()
	}
}

// Close releases the model's checkpoint mapping. Call it after Run returns.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() { err = n.model.Close() })
	return err
}

func (n *Node) logger() *slog.Logger {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log
}

func (n *Node) janitor(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n.store.Expire(now)
			n.replicas.expire(now, n.cfg.Memory.IdleTTL)
			n.tier.expire(now, n.cfg.Memory.IdleTTL)
			n.offloadIdle(now, false)
			n.updateGauges()
		}
	}
}

// updateGauges refreshes the session, memory and activation-detail metrics.
func (n *Node) updateGauges() {
	held, rec, kv := n.store.Usage()
	r, w := n.sched.Load()
	n.metrics.sessions.WithLabelValues("held").Set(float64(held))
	n.metrics.sessions.WithLabelValues("running").Set(float64(r))
	n.metrics.sessions.WithLabelValues("waiting").Set(float64(w))
	n.metrics.stateBytes.WithLabelValues("recurrent").Set(float64(rec))
	n.metrics.stateBytes.WithLabelValues("kv").Set(float64(kv))
	n.metrics.budgetUse.WithLabelValues("recurrent").Set(float64(rec) / float64(n.cfg.Memory.RecurrentBytes))
	n.metrics.budgetUse.WithLabelValues("kv").Set(float64(kv) / float64(n.cfg.Memory.KVBytes))
	anon, file := residentBytes()
	n.metrics.rss.WithLabelValues("anon").Set(float64(anon))
	n.metrics.rss.WithLabelValues("file").Set(float64(file))
	if n.metrics.detail != nil && n.disp != nil {
		for l, row := range n.disp.detailDelta() {
			for e, v := range row {
				if v > 0 {
					n.metrics.detail.WithLabelValues(strconv.Itoa(l), strconv.Itoa(e)).Add(float64(v))
				}
			}
		}
	}
}

// reportLoad sends the dispatcher's activation counts to etcd every LoadInterval
// (the coordinator's placement input).
func (n *Node) reportLoad(ctx context.Context, reg *cluster.Registration) {
	if n.cfg.LoadInterval <= 0 || reg == nil {
		return
	}
	t := time.NewTicker(n.cfg.LoadInterval)
	defer t.Stop()
	var seq uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq++
		rep := cluster.LoadReport{Trunk: n.cfg.NodeID, Seq: seq, Counts: n.disp.Activations(true), At: time.Now().UTC()}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		// Best effort: a missed report only delays re-planning.
		if err := cluster.ReportLoad(pctx, reg, rep); err != nil && ctx.Err() == nil {
			n.logger().Debug("load report", "err", err)
		}
		cancel()
	}
}

// prefillOnly feeds tokens into a session through the scheduler.
func (n *Node) prefillOnly(ctx context.Context, sess *Session, toks []int) error {
	if err := n.store.Acquire(sess, len(toks)); err != nil {
		return err
	}
	job, err := n.sched.Submit(ctx, JobSpec{Session: sess, Prompt: toks, MaxTokens: 1, PrefillOnly: true})
	if err != nil {
		n.store.Release(sess)
		return err
	}
	for {
		<-job.Notify()
		if _, fin := job.Drain(); fin != nil {
			return fin.Err
		}
	}
}

// Load returns the scheduler's running and waiting job counts.
func (n *Node) Load() (running, waiting int) { return n.sched.Load() }

// Store exposes the session store (tests, metrics).
func (n *Node) Store() *Store { return n.store }

// Model exposes the model (tests).
func (n *Node) Model() *hybrid.Model { return n.model }

// Tokenizer exposes the tokenizer.
func (n *Node) Tokenizer() *tokenizer.Tokenizer { return n.tok }

// peerSet is the other trunks (nil before Serve).
func (n *Node) peerSet() *peers {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.peer
}
