package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/membership"
	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/placement"
)

// LeaderConfig configures the load-driven coordinator.
type LeaderConfig struct {
	NodeID  string // this coordinator's id (election value)
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
	// Dead, if set, reports expert nodes that gossip says are dead before their
	// etcd lease expires (they get no replicas). Gossip sets it.
	Dead func() map[string]bool
	// Gossip, when set, joins the memberlist cluster and uses it for Dead and to
	// re-plan as soon as an expert node fails.
	Gossip *membership.Config
	// Registry receives the coordinator's metrics (nil: none).
	Registry *prometheus.Registry
	Logger   *slog.Logger
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

// DefaultLeaderConfig returns production defaults (Layers/Experts/NodeID unset).
func DefaultLeaderConfig() LeaderConfig {
	return LeaderConfig{Placement: placement.DefaultOptions(), PlanInterval: 10 * time.Second, LoadHalfLife: time.Minute,
		ReadyTimeout: 60 * time.Second, ElectionTTL: 5}
}

// Run campaigns for leadership and, while leader, keeps the placement in step
// with membership and measured load, rolling out every change make-before-break:
// publish the next table as pending, wait until every expert node of it holds its
// experts, then make it current. Followers wait; when the leader's session ends
// (crash, partition) another coordinator takes over within about ElectionTTL.
func Run(ctx context.Context, cli *clientv3.Client, cfg LeaderConfig) error {
	if cfg.NodeID == "" || cfg.Layers <= 0 || cfg.Experts <= 0 {
		return errors.New("coordinator: node id and model shape (layers, experts) are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var gossipEvents <-chan membership.Event
	if cfg.Gossip != nil {
		gc := *cfg.Gossip
		gc.Meta = membership.Meta{ID: cfg.NodeID, Role: cluster.RoleCoordinator}
		m, err := membership.Start(gc)
		if err != nil {
			return err
		}
		defer m.Leave(time.Second)
		cfg.Dead = m.Dead
		gossipEvents = m.Events()
		reg, err := cluster.Register(ctx, cli, cluster.NodeInfo{ID: cfg.NodeID, Role: cluster.RoleCoordinator,
			Meta: map[string]string{cluster.GossipMetaKey: m.Addr()}}, int64(cfg.ElectionTTL))
		if err != nil {
			return err
		}
		defer reg.Close()
		go m.JoinLoop(ctx, 2*time.Second, func() []string { return cluster.GossipSeeds(ctx, cli) })
	}
	met := newLeaderMetrics(cfg.Registry, cfg.NodeID)
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(cfg.ElectionTTL), concurrency.WithContext(ctx))
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		el := concurrency.NewElection(sess, cluster.ElectionKey)
		if err := el.Campaign(ctx, cfg.NodeID); err != nil {
			sess.Close()
			sleepCtx(ctx, 500*time.Millisecond)
			continue
		}
		cfg.Logger.Info("coordinator is leader", "node", cfg.NodeID)
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
			case <-lctx.Done():
			}
			cancel()
		}()
		l := &leader{cli: cli, cfg: cfg, gossip: gossipEvents, m: met}
		met.isLeader.Set(1)
		l.run(lctx)
		met.isLeader.Set(0)
		cancel()
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		el.Resign(rctx)
		rcancel()
		sess.Close()
	}
	return ctx.Err()
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
	cfg    LeaderConfig
	gossip <-chan membership.Event
	m      *leaderMetrics

	mu       sync.Mutex
	experts  []cluster.NodeInfo
	load     [][]float64 // EMA of routed pairs per second
	lastLoad time.Time
	current  *routing.Table
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
	if t, err := cluster.LoadTable(ctx, l.cli); err == nil {
		l.current = t
	}
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
		case ev := <-l.gossip:
			if ev.Node.Role != cluster.RoleExpert {
				continue
			}
		case <-tick.C:
		}
		if err := l.round(ctx); err != nil && ctx.Err() == nil {
			l.cfg.Logger.Warn("placement round", "err", err)
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
	cur := l.current
	l.mu.Unlock()
	dead := map[string]bool{}
	if l.cfg.Dead != nil {
		dead = l.cfg.Dead()
	}
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
		return nil
	}
	next.Version = 1
	if cur != nil {
		next.Version = cur.Version + 1
	}
	if err := l.rollout(ctx, next); err != nil {
		l.m.rollouts.WithLabelValues("abandoned").Inc()
		return err
	}
	l.m.rollouts.WithLabelValues("published").Inc()
	l.m.version.Set(float64(next.Version))
	l.m.imbalance.Set(plan.Imbalance)
	l.m.replicas.Set(float64(plan.ReplicaCount()))
	l.m.moves.WithLabelValues("voluntary").Add(float64(plan.Moves - plan.Repairs))
	l.m.moves.WithLabelValues("repair").Add(float64(plan.Repairs))
	l.mu.Lock()
	l.current = next
	l.mu.Unlock()
	sum := Summary{Version: next.Version, Leader: l.cfg.NodeID, Imbalance: plan.Imbalance, NodeLoad: plan.NodeLoad,
		Replicas: plan.ReplicaCount(), Moves: plan.Moves, Repairs: plan.Repairs, At: time.Now().UTC()}
	b, _ := json.Marshal(sum)
	_, err = l.cli.Put(ctx, cluster.PlacementKey, string(b))
	l.cfg.Logger.Info("routing table published", "version", next.Version, "imbalance", plan.Imbalance, "moves", plan.Moves, "repairs", plan.Repairs)
	return err
}

// rollout publishes t as pending, waits until every expert node in t holds its
// assignment (ready >= t.Version), then makes t current.
func (l *leader) rollout(ctx context.Context, t *routing.Table) error {
	if err := cluster.PublishPending(ctx, l.cli, t); err != nil {
		return err
	}
	deadline := time.Now().Add(l.cfg.ReadyTimeout)
	for {
		ready, err := cluster.ReadyVersions(ctx, l.cli)
		if err == nil {
			all := true
			for _, n := range t.Nodes {
				if ready[n.ID] < t.Version {
					all = false
				}
			}
			if all {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coordinator: expert nodes did not load table %d within %v", t.Version, l.cfg.ReadyTimeout)
		}
		if gone := l.departed(t); gone != "" {
			// A node of the new table left: abandon this rollout; the membership
			// event triggers a new round without it.
			cluster.ClearPending(ctx, l.cli)
			return fmt.Errorf("coordinator: expert node %s left during the rollout of table %d", gone, t.Version)
		}
		sleepCtx(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := cluster.PublishTable(ctx, l.cli, t); err != nil {
		return err
	}
	return cluster.ClearPending(ctx, l.cli)
}

// departed returns a node of t that is no longer registered or is dead.
func (l *leader) departed(t *routing.Table) string {
	dead := map[string]bool{}
	if l.cfg.Dead != nil {
		dead = l.cfg.Dead()
	}
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
