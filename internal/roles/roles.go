// Package roles wires the node packages to the control plane: it runs an expert
// node's gRPC server, registers it in etcd and applies the routing tables it
// watches. The node packages stay free of etcd (expert-node imports none); the
// CLI and the local cluster start roles through here.
package roles

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/membership"
	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// ExpertConfig configures RunExpert.
type ExpertConfig struct {
	NodeID        string
	Etcd          []string
	EtcdTLS       cluster.EtcdTLS
	AdvertiseAddr string // registered address (default: the listener's)
	LeaseTTL      int64  // seconds
	Server        rpc.ServerConfig
	OnError       func(error) // assignment failures (default: ignored)
	MetricsAddr   string      // serve /metrics here ("" = not served)
	// Tracing is the node's tracer provider (shut down when RunExpert returns);
	// it should be the one the node was built with.
	Tracing *telemetry.Tracing
	// Gossip, when set, joins the memberlist cluster.
	Gossip *membership.Config
}

// RunExpert serves node on lis, registers it in etcd and loads the assignment of
// every routing table version, until ctx ends.
func RunExpert(ctx context.Context, node *expertnode.Node, lis net.Listener, c ExpertConfig) error {
	if c.NodeID == "" || len(c.Etcd) == 0 {
		lis.Close()
		return errors.New("roles: expert node needs a node id and etcd endpoints")
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5
	}
	sc := c.Server
	sc.ExtraOptions = append(sc.ExtraOptions, node.ServerOptions()...)
	if c.Tracing != nil && c.Tracing.Enabled {
		defer c.Tracing.Shutdown(context.Background())
		sc.ExtraOptions = append(sc.ExtraOptions, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(c.Tracing.Provider), otelgrpc.WithPropagators(telemetry.Propagator))))
	}
	if c.MetricsAddr != "" {
		if _, err := telemetry.ServeMetrics(ctx, c.MetricsAddr, node.Registry()); err != nil {
			lis.Close()
			return fmt.Errorf("roles: metrics: %w", err)
		}
	}
	srv, err := rpc.NewServer(sc)
	if err != nil {
		lis.Close()
		return err
	}
	node.Register(srv)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	defer func() {
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second):
			srv.Stop()
		}
		node.Close()
	}()
	cli, err := cluster.NewClient(c.Etcd, c.EtcdTLS)
	if err != nil {
		return fmt.Errorf("roles: etcd: %w", err)
	}
	defer cli.Close()
	addr := c.AdvertiseAddr
	if addr == "" {
		addr = lis.Addr().String()
	}
	info := cluster.NodeInfo{ID: c.NodeID, Role: cluster.RoleExpert, Addr: addr, Meta: map[string]string{}}
	if s := node.Slots(); s > 0 {
		// A GPU node's capacity: the coordinator never places more experts on it.
		info.Meta[cluster.SlotsMetaKey] = strconv.Itoa(s)
	}
	var gossip *membership.Membership
	if c.Gossip != nil {
		gc := *c.Gossip
		gc.Meta = membership.Meta{ID: c.NodeID, Role: cluster.RoleExpert, Addr: addr}
		if gossip, err = membership.Start(gc); err != nil {
			return err
		}
		info.Meta[cluster.GossipMetaKey] = gossip.Addr()
		go gossip.JoinLoop(ctx, 2*time.Second, func() []string { return cluster.GossipSeeds(ctx, cli) })
	}
	reg, err := cluster.Register(ctx, cli, info, c.LeaseTTL)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a := &assigner{node: node, cfg: c, report: func(v uint64) {
		// A lost ready report only delays the rollout (the coordinator retries the
		// round); surface it.
		if err := cluster.ReportReady(wctx, cli, reg, c.NodeID, v); err != nil && c.OnError != nil && wctx.Err() == nil {
			c.OnError(fmt.Errorf("report ready version %d: %w", v, err))
		}
	}}
	go cluster.WatchTable(wctx, cli, func(t *routing.Table) { a.update(t, nil, false) })
	go cluster.WatchPending(wctx, cli, func(t *routing.Table) { a.update(nil, t, true) })
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), ErrCrash) {
			// Simulated crash: no deregistration, no graceful stop, gossip silent.
			reg.Abandon()
			srv.Stop()
			if gossip != nil {
				gossip.Shutdown()
			}
		} else {
			reg.Close()
			if gossip != nil {
				gossip.Leave(time.Second)
			}
		}
		return nil
	case err := <-node.Fatal():
		// The GPU is lost: leave the cluster so the supervisor restarts us.
		reg.Close()
		if gossip != nil {
			gossip.Leave(time.Second)
		}
		return err
	case err := <-errc:
		return err
	}
}

// ErrCrash, as the cancel cause of RunExpert's context, makes it stop like a
// crashed process: connections drop, nothing is deregistered (the lease expires).
var ErrCrash = errors.New("roles: simulated crash")

// assigner keeps an expert node loaded with the union of the current routing
// table and the pending one of a rollout (make-before-break), and drops replicas
// that left the current table only after a grace period (trunks may still be
// finishing a step on the previous table).
type assigner struct {
	node   *expertnode.Node
	cfg    ExpertConfig
	report func(version uint64)

	mu      sync.Mutex
	current *routing.Table
	pending *routing.Table
	applied *routing.Table // what the node holds now
	local   uint64         // assignment version handed to the node (monotonic)
	timer   *time.Timer
}

// DropGrace is how long replicas no longer in the current table stay loaded.
var DropGrace = 3 * time.Second

func (a *assigner) update(cur, pend *routing.Table, pendingChanged bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur != nil {
		a.current = cur
	}
	if pendingChanged {
		a.pending = pend
	}
	want := a.current
	if a.pending != nil && (a.current == nil || a.pending.Version > a.current.Version) {
		want = routing.Union(a.current, a.pending)
	}
	if want == nil {
		return
	}
	// Load additions now; never drop anything immediately.
	now := routing.Union(a.applied, want)
	if a.applied == nil || !sameSet(now.Assigned(a.cfg.NodeID), a.applied.Assigned(a.cfg.NodeID)) {
		a.apply(now)
	}
	a.report(want.Version)
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	if !sameSet(now.Assigned(a.cfg.NodeID), want.Assigned(a.cfg.NodeID)) {
		a.timer = time.AfterFunc(DropGrace, func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			latest := a.current
			if a.pending != nil && (latest == nil || a.pending.Version > latest.Version) {
				latest = routing.Union(a.current, a.pending)
			}
			if latest != nil && sameSet(latest.Assigned(a.cfg.NodeID), want.Assigned(a.cfg.NodeID)) {
				a.apply(want)
			}
		})
	}
}

func sameSet(a, b map[[2]int]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// apply hands the node a copy of t under a fresh local version and reports the
// table version it now covers.
func (a *assigner) apply(t *routing.Table) {
	a.local++
	cp := *t
	cp.Version = a.local
	if err := a.node.SetAssignment(&cp); err != nil {
		if a.cfg.OnError != nil {
			a.cfg.OnError(err)
		}
		return
	}
	a.applied = t
}
