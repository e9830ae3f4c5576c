// Package trunknode (folder trunk-node) is the trunk role of a Switchyard cluster:
// it serves the public gRPC API, holds every session's recurrent state and KV
// cache, runs the model's trunk (embeddings, Mamba-2, attention, routers, shared
// expert, LM head, sampling) under a continuous-batching scheduler, and dispatches
// the routed experts of each MoE layer to expert nodes following the routing table
// it watches in etcd.
package trunknode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/membership"
	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Config configures a trunk node. Sizes are bytes, durations wall time.
type Config struct {
	NodeID    string
	ModelPath string
	// Etcd endpoints; empty runs without a control plane (LocalExperts required).
	Etcd    []string
	EtcdTLS cluster.EtcdTLS
	// APIToken, when set, is required as "authorization: Bearer <token>" on every
	// public call (health and reflection excepted).
	APIToken string
	// LocalExperts computes the routed experts in process instead of on expert
	// nodes (single-node mode and the in-process baseline).
	LocalExperts bool
	// AdvertiseAddr is the address registered in etcd (default: the listener's).
	AdvertiseAddr string

	PublicTLS rpc.TLSFiles // TLS of the public API (plaintext when empty)
	PeerTLS   rpc.TLSFiles // mutual TLS to expert nodes (plaintext when empty)

	Memory   MemoryConfig
	Sched    SchedConfig
	Limits   Limits
	Dispatch DispatchConfig

	// MetricsAddr serves Prometheus /metrics (empty: not served; the registry is
	// still available through Registry()).
	MetricsAddr string
	// Tracing is the node's tracer provider (default: from OTEL_* environment).
	Tracing *telemetry.Tracing
	// StepTracing samples forward steps for traces.
	StepTracing StepTracing
	// ExpertDetail adds per-(layer, expert) activation series (high cardinality).
	ExpertDetail bool
	// Gossip, when set, joins the memberlist cluster: expert nodes that gossip
	// reports failed get no more rows until they come back.
	Gossip *membership.Config

	MaxRecvBytes int           // largest public request message
	RatePerSec   float64       // new public calls per second (0: unlimited)
	DrainTimeout time.Duration // graceful drain budget on shutdown
	LeaseTTL     int64         // etcd registration lease, seconds
	LoadInterval time.Duration // how often activation counts are reported to etcd
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		NodeID:       "trunk-0",
		Memory:       MemoryConfig{RecurrentBytes: 16 << 30, KVBytes: 16 << 30, IdleTTL: 30 * time.Minute},
		Sched:        SchedConfig{MaxRunning: 64, MaxTokensPerStep: 512, MaxQueue: 1024},
		Limits:       Limits{MaxContext: 131072, MaxNewTokens: 8192, MaxPromptText: 4 << 20, MaxStops: 16},
		Dispatch:     DispatchConfig{Timeout: 5 * time.Second, Deadline: 30 * time.Second, MaxMsgBytes: 16 << 20},
		MaxRecvBytes: 8 << 20, RatePerSec: 0, DrainTimeout: 30 * time.Second, LeaseTTL: 5,
		StepTracing: StepTracing{Ratio: 0.01, SlowThreshold: 500 * time.Millisecond}, LoadInterval: 2 * time.Second,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("trunknode: node id is required")
	case c.ModelPath == "":
		return errors.New("trunknode: model path is required")
	case len(c.Etcd) == 0 && !c.LocalExperts:
		return errors.New("trunknode: etcd endpoints are required unless experts run locally")
	case c.Memory.RecurrentBytes <= 0 || c.Memory.KVBytes <= 0:
		return errors.New("trunknode: memory budgets must be positive")
	case c.Limits.MaxContext <= 0 || c.Limits.MaxNewTokens <= 0:
		return errors.New("trunknode: context and max-new-token limits must be positive")
	}
	return nil
}

// Node is a running trunk node.
type Node struct {
	imports     chan struct{} // ImportSession slots (maxConcurrentImports)
	cfg         Config
	model       *hybrid.Model
	tok         *tokenizer.Tokenizer
	store       *Store
	sched       *Scheduler
	disp        *Dispatcher
	limits      Limits
	kvPerToken  int64
	metrics     *metrics
	health      *health.Server
	ready       chan struct{}
	readyOnce   sync.Once
	metricsAddr string
}

// MetricsAddr is the bound /metrics address ("" when not served).
func (n *Node) MetricsAddr() string { return n.metricsAddr }

// New loads the model (the trunk half only: no routed experts are mapped unless
// LocalExperts) and builds the node.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opt := hybrid.LoadOptions{}
	if !cfg.LocalExperts {
		opt.KeepExpert = func(int, int) bool { return false }
	}
	e, err := engine.Open(cfg.ModelPath, opt)
	if err != nil {
		return nil, err
	}
	c := e.Model.Cfg
	kvPer := int64(2*c.KVDim()*4) * int64(c.NumLayers(config.Attention))
	if cfg.Tracing == nil {
		if cfg.Tracing, err = telemetry.NewTracing(context.Background(), "trunk", cfg.NodeID); err != nil {
			e.Close()
			return nil, err
		}
	}
	n := &Node{imports: make(chan struct{}, maxConcurrentImports), cfg: cfg, model: e.Model, tok: e.Tok, limits: cfg.Limits, kvPerToken: kvPer,
		metrics: newMetrics(telemetry.NewRegistry(), cfg.NodeID, cfg.ExpertDetail),
		health:  health.NewServer(), ready: make(chan struct{})}
	if mc := c.MaxPositionEmbed; c.UseRope() && mc > 0 && mc < n.limits.MaxContext {
		n.limits.MaxContext = mc
	}
	n.store = NewStore(cfg.Memory, e.Model.NewState, kvPer)
	if !cfg.LocalExperts && c.IsMoE() {
		dial := cfg.Dispatch.Dial
		if dial == nil {
			var extra []grpc.DialOption
			if cfg.Tracing.Enabled {
				extra = append(extra, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
					otelgrpc.WithTracerProvider(cfg.Tracing.Provider), otelgrpc.WithPropagators(telemetry.Propagator))))
			}
			if dial, err = rpc.Dialer(cfg.PeerTLS, cfg.Dispatch.MaxMsgBytes+(1<<20), extra...); err != nil {
				return nil, err
			}
		}
		dc := cfg.Dispatch
		dc.Dial = dial
		user := dc.OnCall
		dc.OnCall = func(ci CallInfo) {
			n.metrics.dispatched(ci)
			if user != nil {
				user(ci)
			}
		}
		n.disp = NewDispatcher(dc, c.Hidden)
		n.disp.tracer = cfg.Tracing.Tracer()
		e.Model.Experts = n.disp
	}
	n.sched = NewScheduler(cfg.Sched, e.Model, e.Tok, n.store)
	n.sched.m = n.metrics
	n.sched.disp = n.disp
	n.sched.tracing = cfg.StepTracing
	if cfg.Tracing.Enabled {
		n.sched.tracer = cfg.Tracing.Tracer()
	}
	return n, nil
}

// Dispatcher returns the remote expert dispatcher (nil with local experts).
func (n *Node) Dispatcher() *Dispatcher { return n.disp }

// Ready is closed once the node can serve (a routing table is known, or experts
// are local).
func (n *Node) Ready() <-chan struct{} { return n.ready }

func (n *Node) markReady() {
	n.readyOnce.Do(func() {
		close(n.ready)
		n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		n.health.SetServingStatus("switchyard.v1.Switchyard", healthpb.HealthCheckResponse_SERVING)
	})
}

// Serve runs the node on lis until ctx ends, then drains: it stops admitting,
// lets running generations finish within DrainTimeout, deregisters and stops.
func (n *Node) Serve(ctx context.Context, lis net.Listener) error {
	defer n.model.Close()
	defer n.cfg.Tracing.Shutdown(context.Background())
	sc := rpc.ServerConfig{TLS: n.cfg.PublicTLS, MaxRecvBytes: n.cfg.MaxRecvBytes, RatePerSec: n.cfg.RatePerSec, RateBurst: int(n.cfg.RatePerSec) + 1,
		AuthToken: n.cfg.APIToken}
	if n.cfg.Tracing.Enabled {
		sc.ExtraOptions = append(sc.ExtraOptions, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(n.cfg.Tracing.Provider), otelgrpc.WithPropagators(telemetry.Propagator))))
	}
	if n.cfg.MetricsAddr != "" {
		addr, err := telemetry.ServeMetrics(ctx, n.cfg.MetricsAddr, n.metrics.reg)
		if err != nil {
			return fmt.Errorf("trunknode: metrics: %w", err)
		}
		n.metricsAddr = addr
	}
	srv, err := rpc.NewServer(sc)
	if err != nil {
		return err
	}
	pb.RegisterSwitchyardServer(srv, &api{n: n})
	healthpb.RegisterHealthServer(srv, n.health)
	reflection.Register(srv)
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)

	runCtx, stopRun := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); n.sched.Run(runCtx) }()
	wg.Add(1)
	go func() { defer wg.Done(); n.janitor(runCtx) }()

	var cli *clientv3.Client
	var reg *cluster.Registration
	if len(n.cfg.Etcd) > 0 {
		cli, err = cluster.NewClient(n.cfg.Etcd, n.cfg.EtcdTLS)
		if err != nil {
			stopRun()
			wg.Wait()
			return fmt.Errorf("trunknode: etcd: %w", err)
		}
		defer cli.Close()
		addr := n.cfg.AdvertiseAddr
		if addr == "" {
			addr = lis.Addr().String()
		}
		info := cluster.NodeInfo{ID: n.cfg.NodeID, Role: cluster.RoleTrunk, Addr: addr}
		if n.cfg.Gossip != nil {
			gc := *n.cfg.Gossip
			gc.Meta = membership.Meta{ID: n.cfg.NodeID, Role: cluster.RoleTrunk, Addr: addr}
			m, err := membership.Start(gc)
			if err != nil {
				stopRun()
				wg.Wait()
				return err
			}
			defer m.Leave(time.Second)
			info.Meta = map[string]string{cluster.GossipMetaKey: m.Addr()}
			wg.Add(2)
			go func() {
				defer wg.Done()
				m.JoinLoop(runCtx, 2*time.Second, func() []string { return cluster.GossipSeeds(runCtx, cli) })
			}()
			go func() { defer wg.Done(); n.watchGossip(runCtx, m) }()
		}
		// The registration lives as long as the node: its keepalive stops with
		// runCtx (a shorter context would let the lease expire after LeaseTTL).
		reg, err = cluster.Register(runCtx, cli, info, n.cfg.LeaseTTL)
		if err != nil {
			stopRun()
			wg.Wait()
			return err
		}
		if n.disp != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.reportLoad(runCtx, cli, reg) }()
			wg.Add(1)
			go func() {
				defer wg.Done()
				cluster.WatchTable(runCtx, cli, func(t *routing.Table) {
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
					n.markReady()
				})
			}()
		} else {
			n.markReady()
		}
	} else {
		n.markReady()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		stopRun()
		wg.Wait()
		return err
	}
	// Graceful drain.
	n.health.Shutdown()
	n.sched.Drain()
	deadline := time.Now().Add(n.cfg.DrainTimeout)
	for time.Now().Before(deadline) {
		if r, w := n.sched.Load(); r == 0 && w == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if reg != nil {
		reg.Close()
	}
	stopRun()
	wg.Wait()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	if n.disp != nil {
		n.disp.Close()
	}
	return nil
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
			held, rec, kv := n.store.Usage()
			r, w := n.sched.Load()
			n.metrics.sessions.WithLabelValues("held").Set(float64(held))
			n.metrics.sessions.WithLabelValues("running").Set(float64(r))
			n.metrics.sessions.WithLabelValues("waiting").Set(float64(w))
			n.metrics.stateBytes.WithLabelValues("recurrent").Set(float64(rec))
			n.metrics.stateBytes.WithLabelValues("kv").Set(float64(kv))
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
	}
}

// watchGossip marks expert nodes down while gossip says they failed.
func (n *Node) watchGossip(ctx context.Context, m *membership.Membership) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-m.Events():
			if n.disp == nil || ev.Node.Role != cluster.RoleExpert {
				continue
			}
			switch ev.Kind {
			case membership.Leave:
				n.disp.MarkDown(ev.Node.ID, time.Hour)
			case membership.Join, membership.Update:
				n.disp.MarkUp(ev.Node.ID)
			}
		}
	}
}

// reportLoad sends the dispatcher's activation counts to etcd every LoadInterval
// (the coordinator's placement input).
func (n *Node) reportLoad(ctx context.Context, cli *clientv3.Client, reg *cluster.Registration) {
	if n.cfg.LoadInterval <= 0 {
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
		cluster.ReportLoad(pctx, cli, reg, rep) // best effort: a missed report only delays re-planning
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
