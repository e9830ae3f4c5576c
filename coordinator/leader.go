package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/rollout"
	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/placement"
)

// Config configures a coordinator.
type Config struct {
	// Config is the lifecycle every role shares (agent.Config): NodeID (the
	// election candidate value; required), etcd (required), gossip, metrics,
	// logging.
	agent.Config
	// ModelPath is read for the model's shape when Layers or Experts is 0.
	ModelPath string
	// Listen serves the standard gRPC health service ("" = not served).
	Listen  string
	Layers  int
	Experts int
	// SlotsPerNode is the expert-replica capacity of every expert node (0: every
	// node may hold every expert; set it from accelerator memory in production).
	SlotsPerNode int
	Placement    placement.Options
	PlanInterval time.Duration // periodic re-planning
	LoadHalfLife time.Duration // EMA half-life of activation counts
	ReadyTimeout time.Duration // how long a rollout waits for expert nodes to load
	ElectionTTL  int           // seconds; a dead leader is replaced after about this
	// Registry receives the coordinator's metrics (nil: a private registry).
	Registry *prometheus.Registry
}

type leaderMetrics struct {
	isLeader  prometheus.Gauge
	version   prometheus.Gauge
	imbalance prometheus.Gauge
	replicas  prometheus.Gauge
	moves     *prometheus.CounterVec
	rollouts  *prometheus.CounterVec
}

func newLeaderMetrics(reg *prometheus.Registry, id string) *leaderMetrics {
	cl := prometheus.Labels{"node_id": id}
	m := &leaderMetrics{
		isLeader:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_coordinator_leader", Help: "1 while this coordinator is the leader.", ConstLabels: cl}),
		version:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_placement_version", Help: "Routing-table version last published by this coordinator.", ConstLabels: cl}),
		imbalance: prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_placement_predicted_imbalance", Help: "Predicted max/mean expert-node load of the published placement.", ConstLabels: cl}),
		replicas:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_placement_replicas", Help: "Expert replicas in the published placement.", ConstLabels: cl}),
		moves:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_placement_moves_total", Help: "Replicas loaded by rollouts: voluntary moves and repairs.", ConstLabels: cl}, []string{"kind"}),
		rollouts:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_placement_rollouts_total", Help: "Rollouts by outcome.", ConstLabels: cl}, []string{"outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.isLeader, m.version, m.imbalance, m.replicas, m.moves, m.rollouts)
	}
	return m
}

// DefaultConfig returns production defaults (the model's shape unset).
func DefaultConfig() Config {
	return Config{Config: agent.DefaultConfig(), Placement: placement.DefaultOptions(), PlanInterval: 10 * time.Second,
		LoadHalfLife: time.Minute, ReadyTimeout: 60 * time.Second, ElectionTTL: 5}
}

// AddFlags registers the coordinator's flags (and the shared ones) on fs.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	c.Config.AddFlags(fs, "")
	fs.StringVar(&c.ModelPath, "model", c.ModelPath, "model folder or .gguf, for its layer and expert counts (required)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "serve the gRPC health service here (e.g. :7072; empty: none)")
	fs.IntVar(&c.SlotsPerNode, "slots-per-node", c.SlotsPerNode, "expert replicas one expert node can hold (0: unlimited)")
	fs.Float64Var(&c.Placement.RedundantSlotsFraction, "redundant", c.Placement.RedundantSlotsFraction, "extra replicas for hot experts, as a fraction of layers x experts")
	fs.IntVar(&c.Placement.MinReplicas, "min-replicas", c.Placement.MinReplicas, "replicas of every expert on distinct nodes, where nodes and slots allow (2: one node's death leaves every expert served)")
	fs.IntVar(&c.Placement.MigrationBudget, "migration-budget", c.Placement.MigrationBudget, "replicas moved per planning round (-1: unlimited)")
	fs.Float64Var(&c.Placement.MinGain, "min-gain", c.Placement.MinGain, "least imbalance reduction a move must bring")
	fs.DurationVar(&c.PlanInterval, "plan-interval", c.PlanInterval, "re-planning period")
	fs.DurationVar(&c.LoadHalfLife, "load-half-life", c.LoadHalfLife, "half-life of the activation-count EMA")
	fs.IntVar(&c.ElectionTTL, "election-ttl", c.ElectionTTL, "leader session TTL in seconds")
}

// Validate checks the configuration (the model's shape may still be unset
// when ModelPath is given).
func (c *Config) Validate() error {
	var errs []error
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Etcd) == 0 {
		errs = append(errs, errors.New("coordinator: etcd endpoints are required"))
	}
	if (c.Layers <= 0 || c.Experts <= 0) && c.ModelPath == "" {
		errs = append(errs, errors.New("coordinator: the model's shape is required (a model path, or layers and experts)"))
	}
	if c.ElectionTTL <= 0 || c.PlanInterval <= 0 {
		errs = append(errs, errors.New("coordinator: election TTL and plan interval must be positive"))
	}
	return errors.Join(errs...)
}

// Coordinator is one coordinator replica.
type Coordinator struct {
	cfg         Config
	met         *leaderMetrics
	metricsAddr atomic.Value // string, set by Run
}

// MetricsAddr is the bound /metrics address once Run has started ("" when not
// served).
func (c *Coordinator) MetricsAddr() string {
	s, _ := c.metricsAddr.Load().(string)
	return s
}

// New validates cfg and reads the model's shape when it is not given.
func New(cfg Config) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Layers <= 0 || cfg.Experts <= 0 {
		mc, err := config.ReadCheckpoint(cfg.ModelPath)
		if err != nil {
			return nil, fmt.Errorf("coordinator: model shape: %w", err)
		}
		cfg.Layers, cfg.Experts = mc.Layers, mc.Experts
	}
	if cfg.Registry == nil {
		cfg.Registry = telemetry.NewRegistry()
	}
	return &Coordinator{cfg: cfg, met: newLeaderMetrics(cfg.Registry, cfg.NodeID)}, nil
}

// Layers and Experts are the model's shape the coordinator places.
func (c *Coordinator) Layers() int { return c.cfg.Layers }

// Experts is the number of routed experts per layer.
func (c *Coordinator) Experts() int { return c.cfg.Experts }

// Close releases nothing today; it completes the role lifecycle.
func (c *Coordinator) Close() error { return nil }

// Run campaigns for leadership until ctx ends and, while leader, keeps the
// placement in step with membership and measured load, rolling out every
// change make-before-break (package rollout). Followers wait; when the
// leader's session ends (crash, partition) another coordinator takes over
// within about ElectionTTL.
func (c *Coordinator) Run(ctx context.Context) error {
	cfg := c.cfg
	a, err := agent.Start(cluster.RoleCoordinator, cfg.Config, agent.Options{Registry: cfg.Registry})
	if err != nil {
		return err
	}
	c.metricsAddr.Store(a.MetricsAddr())
	defer func() {
		if errors.Is(context.Cause(ctx), agent.ErrCrash) {
			a.Crash()
		} else {
			a.Close()
		}
	}()
	log := a.Logger()
	addr := ""
	if cfg.Listen != "" {
		lis, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("coordinator: health listener: %w", err)
		}
		srv, err := a.NewServer(rpc.ServerConfig{}) // with the agent's health service
		if err != nil {
			lis.Close()
			return err
		}
		a.Serve(srv, lis)
		a.SetServing(true)
		addr = lis.Addr().String()
	}
	// The coordinator waits for etcd rather than exiting: it is useless
	// without it, and the data plane does not need it meanwhile.
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		err := a.Register(addr, nil)
		if err == nil {
			break
		}
		log.Warn("registering in etcd; retrying", "err", err, "retry_in", backoff)
		if sleepCtx(ctx, backoff); ctx.Err() != nil {
			return nil
		}
	}
	// Gossip: expert nodes that fail are re-placed at once, before their
	// etcd lease expires.
	replan := make(chan struct{}, 1)
	var dead func() map[string]bool
	if m := a.Membership(); m != nil {
		dead = m.Dead
		var last agent.View
		a.WatchPeers(250*time.Millisecond, func(all agent.View) {
			// Only expert nodes matter to placement.
			v := all.Of(cluster.RoleExpert)
			if sameIDs(v.Alive, last.Alive) && sameIDs(v.Dead, last.Dead) {
				return
			}
			last = v
			select {
			case replan <- struct{}{}:
			default:
			}
		})
	}
	log.Info("coordinator running", "layers", cfg.Layers, "experts", cfg.Experts)
	cli := a.Etcd()
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(cfg.ElectionTTL), concurrency.WithContext(ctx))
		if err != nil {
			log.Debug("election session", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		el := concurrency.NewElection(sess, cluster.ElectionKey)
		if err := el.Campaign(ctx, cfg.NodeID); err != nil {
			sess.Close()
			sleepCtx(ctx, 500*time.Millisecond)
			continue
		}
		log.Info("coordinator is leader")
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
			case <-lctx.Done():
			}
			cancel()
		}()
		l := &leader{cli: cli, cfg: cfg, dead: dead, replan: replan, m: c.met, log: log}
		c.met.isLeader.Set(1)
		l.run(lctx)
		c.met.isLeader.Set(0)
		cancel()
		if errors.Is(context.Cause(ctx), agent.ErrCrash) {
			sess.Orphan() // like a killed process: the session expires after its TTL
			break
		}
		log.Info("coordinator is no longer leader")
		// Step down at once so another coordinator takes over; if etcd is
		// unreachable the election session simply expires after its TTL.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := el.Resign(rctx); err != nil {
			log.Debug("resigning leadership", "err", err)
		}
		rcancel()
		sess.Orphan()
		rctx, rcancel = context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := cli.Revoke(rctx, sess.Lease()); err != nil {
			log.Debug("revoking the election lease", "err", err)
		}
		rcancel()
	}
	return nil
}

func sameIDs[M ~map[string]V, V any](a, b M) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Leader returns the current leader's id ("" if none).
func Leader(ctx context.Context, cli *clientv3.Client) (string, error) {
	resp, err := cli.Get(ctx, cluster.ElectionKey, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil || len(resp.Kvs) == 0 {
		return "", err
	}
	return string(resp.Kvs[0].Value), nil
}

type leader struct {
	cli    *clientv3.Client
	cfg    Config
	dead   func() map[string]bool // gossip's failed nodes (nil without gossip)
	replan <-chan struct{}        // gossip membership changed
	m      *leaderMetrics
	log    *slog.Logger

	mu       sync.Mutex
	experts  []cluster.NodeInfo
	load     [][]float64 // EMA of routed pairs per second
	lastLoad time.Time
}

// Summary is what the leader stores under cluster.PlacementKey after a rollout.
type Summary struct {
	Version   uint64             `json:"version"`
	Leader    string             `json:"leader"`
	Imbalance float64            `json:"imbalance"`
	NodeLoad  map[string]float64 `json:"node_load"`
	Replicas  int                `json:"replicas"`
	Moves     int                `json:"moves"`
	Repairs   int                `json:"repairs"`
	At        time.Time          `json:"at"`
}

func (l *leader) run(ctx context.Context) {
	events := make(chan struct{}, 1)
	signal := func() {
		select {
		case events <- struct{}{}:
		default:
		}
	}
	go cluster.WatchNodes(ctx, l.cli, cluster.RoleExpert, func(ns []cluster.NodeInfo) {
		l.mu.Lock()
		l.experts = ns
		l.mu.Unlock()
		signal()
	})
	go cluster.WatchLoad(ctx, l.cli, l.addLoad)
	tick := time.NewTicker(l.cfg.PlanInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
		case <-l.replan:
		case <-tick.C:
		}
		if err := l.round(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("placement round", "err", err)
		}
	}
}

// addLoad folds a trunk's report into the EMA.
func (l *leader) addLoad(rep cluster.LoadReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.load == nil {
		l.load = make([][]float64, l.cfg.Layers)
		for i := range l.load {
			l.load[i] = make([]float64, l.cfg.Experts)
		}
	}
	decay := 1.0
	if !l.lastLoad.IsZero() && l.cfg.LoadHalfLife > 0 {
		decay = math.Exp2(-now.Sub(l.lastLoad).Seconds() / l.cfg.LoadHalfLife.Seconds())
	}
	l.lastLoad = now
	for li := range l.load {
		for e := range l.load[li] {
			l.load[li][e] *= decay
			if li < len(rep.Counts) && e < len(rep.Counts[li]) {
				l.load[li][e] += float64(rep.Counts[li][e])
			}
		}
	}
}

// round plans once and rolls the plan out if it changes the routing.
func (l *leader) round(ctx context.Context) error {
	l.mu.Lock()
	experts := append([]cluster.NodeInfo(nil), l.experts...)
	var load [][]float64
	for _, row := range l.load {
		load = append(load, append([]float64(nil), row...))
	}
	l.mu.Unlock()
	// The store is the truth for the current and pending tables, read every
	// round: a cached copy missed after a failed read would make the leader
	// number its tables below the current one for its whole term.
	cur, err := l.store().Current(ctx)
	if err != nil {
		return fmt.Errorf("reading the current table: %w", err)
	}
	pend, err := l.store().Pending(ctx)
	if err != nil {
		return fmt.Errorf("reading the pending table: %w", err)
	}
	dead := l.deadNodes()
	slots := l.cfg.SlotsPerNode
	if slots <= 0 {
		slots = l.cfg.Layers * l.cfg.Experts
	}
	snap := placement.Snapshot{Layers: l.cfg.Layers, Experts: l.cfg.Experts, Load: load}
	addr := map[string]string{}
	for _, n := range experts {
		alive := !dead[n.ID]
		snap.Nodes = append(snap.Nodes, placement.Node{ID: n.ID, Alive: alive, Capacity: nodeSlots(n, slots)})
		if alive {
			addr[n.ID] = n.Addr
		}
	}
	if len(addr) == 0 {
		return nil
	}
	if cur != nil {
		snap.Current = planFromTable(cur)
	}
	plan, err := placement.Compute(snap, l.cfg.Placement)
	if err != nil {
		return err
	}
	next := tableFromPlan(plan, addr, l.cfg.Layers, l.cfg.Experts)
	if cur != nil && sameRouting(cur, next) {
		if pend != nil && pend.Version > cur.Version {
			// A former leader's unfinished rollout: nothing to move, so end it
			// (expert nodes stop holding its extra replicas).
			return l.store().ClearPending(ctx, pend.Version)
		}
		return nil
	}
	// Above any table a former leader left pending: versions are never reused.
	next.Version = rollout.NextVersion(cur, pend)
	err = rollout.Roll(ctx, l.store(), next, rollout.Config{ReadyTimeout: l.cfg.ReadyTimeout, Gone: l.departed})
	if err != nil {
		l.m.rollouts.WithLabelValues("abandoned").Inc()
		return err
	}
	l.m.rollouts.WithLabelValues("published").Inc()
	l.m.version.Set(float64(next.Version))
	l.m.imbalance.Set(plan.Imbalance)
	l.m.replicas.Set(float64(plan.ReplicaCount()))
	l.m.moves.WithLabelValues("voluntary").Add(float64(plan.Moves - plan.Repairs))
	l.m.moves.WithLabelValues("repair").Add(float64(plan.Repairs))
	sum := Summary{Version: next.Version, Leader: l.cfg.NodeID, Imbalance: plan.Imbalance, NodeLoad: plan.NodeLoad,
		Replicas: plan.ReplicaCount(), Moves: plan.Moves, Repairs: plan.Repairs, At: time.Now().UTC()}
	b, _ := json.Marshal(sum)
	_, err = l.cli.Put(ctx, cluster.PlacementKey, string(b))
	l.log.Info("routing table published", "version", next.Version, "imbalance", plan.Imbalance, "moves", plan.Moves, "repairs", plan.Repairs)
	return err
}

func (l *leader) store() rollout.Store { return rollout.EtcdStore{Client: l.cli} }

func (l *leader) deadNodes() map[string]bool {
	if l.dead == nil {
		return map[string]bool{}
	}
	return l.dead()
}

// departed returns a node of t that is no longer registered or is dead.
func (l *leader) departed(t *routing.Table) string {
	dead := l.deadNodes()
	l.mu.Lock()
	defer l.mu.Unlock()
	live := map[string]bool{}
	for _, n := range l.experts {
		live[n.ID] = !dead[n.ID]
	}
	for _, n := range t.Nodes {
		if !live[n.ID] {
			return n.ID
		}
	}
	return ""
}

func planFromTable(t *routing.Table) *placement.Plan {
	p := &placement.Plan{Replicas: make([][][]placement.Replica, len(t.Replicas))}
	for li, row := range t.Replicas {
		p.Replicas[li] = make([][]placement.Replica, len(row))
		for e, reps := range row {
			for _, r := range reps {
				p.Replicas[li][e] = append(p.Replicas[li][e], placement.Replica{Node: r.Node, Share: r.Share})
			}
		}
	}
	return p
}

func tableFromPlan(p *placement.Plan, addr map[string]string, layers, experts int) *routing.Table {
	t := routing.NewTable(0, layers, experts)
	ids := make([]string, 0, len(addr))
	for id := range addr {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		t.Nodes = append(t.Nodes, routing.Node{ID: id, Addr: addr[id]})
	}
	for li, row := range p.Replicas {
		for e, reps := range row {
			for _, r := range reps {
				t.Replicas[li][e] = append(t.Replicas[li][e], routing.Replica{Node: r.Node, Share: r.Share})
			}
		}
	}
	t.Imbalance = p.Imbalance
	return t
}

// sameRouting reports whether two tables route identically (same node
// addresses, same replicas, shares within 0.05).
func sameRouting(a, b *routing.Table) bool {
	if len(a.Nodes) != len(b.Nodes) {
		return false
	}
	for i := range a.Nodes {
		if a.Nodes[i] != b.Nodes[i] {
			return false
		}
	}
	for li := range a.Replicas {
		for e := range a.Replicas[li] {
			ra, rb := a.Lookup(li, e), b.Lookup(li, e)
			if len(ra) != len(rb) {
				return false
			}
			for i := range ra {
				if ra[i].Node != rb[i].Node || math.Abs(ra[i].Share-rb[i].Share) > 0.05 {
					return false
				}
			}
		}
	}
	return true
}

// nodeSlots is a node's capacity: the cluster-wide slots, or fewer where the
// node reports its own (a GPU node's memory budget, cluster.SlotsMetaKey).
func nodeSlots(n cluster.NodeInfo, slots int) int {
	if s, err := strconv.Atoi(n.Meta[cluster.SlotsMetaKey]); err == nil && s > 0 && s < slots {
		return s
	}
	return slots
}
