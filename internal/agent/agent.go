// Package agent is the node lifecycle every Switchyard role shares (etcd's
// server and nomad's agent are the models): a role's Run builds an Agent from
// the shared Config, serves its gRPC services through it, registers, starts its
// background loops with Go, and closes it on the way out. The Agent owns, once
// for all roles:
//
//   - the etcd client and the node's registration (a concurrency.Session lease
//     that is re-granted after any outage; cluster.Register);
//   - gossip membership, joined through the addresses registered in etcd and
//     reconciled from memberlist's own state (WatchPeers), so a dropped event
//     is never a lost failure;
//   - gRPC servers (TLS and limits from internal/rpc, OpenTelemetry stats
//     handlers) with a bounded graceful stop;
//   - /metrics, tracing shutdown and the node's structured logger.
//
// Role packages import agent; agent imports no role package.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/membership"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// ErrCrash, as the cancel cause of a role's Run context, makes the role stop
// like a killed process (fault injection): connections drop, nothing is
// deregistered (the lease expires), gossip goes silent.
var ErrCrash = errors.New("agent: simulated crash")

// Options are what a role hands its Agent beyond the shared Config.
type Options struct {
	// Registry is served on Config.MetricsAddr (nil: nothing served).
	Registry *prometheus.Registry
	// Tracing adds OpenTelemetry stats handlers to the servers built by
	// NewServer and is shut down by Close (nil or disabled: none).
	Tracing *telemetry.Tracing
	// OwnHealth: the role registers its own gRPC health service (an expert
	// node's readiness is its assignment's); otherwise NewServer registers the
	// agent's (Health), NOT_SERVING until the role calls SetServing.
	OwnHealth bool
}

// Agent is a running node's shared machinery. Methods are safe for concurrent
// use; Close and Crash are idempotent.
type Agent struct {
	role string
	cfg  Config
	opts Options
	log  *slog.Logger

	// ctx lives until Close: registration keep-alive, watches and the loops
	// started with Go run under it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error

	cli         *clientv3.Client // nil without etcd
	metricsAddr string
	health      *health.Server // nil with Options.OwnHealth

	mu      sync.Mutex
	servers []*grpc.Server
	gossip  *membership.Membership
	reg     *cluster.Registration
	closed  bool
}

// Start validates cfg, builds the logger, connects to etcd (when configured)
// and serves /metrics. It does not register: call Register once the node's
// gRPC server listens.
func Start(role string, cfg Config, o Options) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{role: role, cfg: cfg, opts: o, log: cfg.NewLogger(role), errc: make(chan error, 4)}
	if !o.OwnHealth {
		a.health = health.NewServer()
		a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if len(cfg.Etcd) > 0 {
		cli, err := cluster.NewClient(cfg.Etcd, cfg.EtcdTLS)
		if err != nil {
			a.cancel()
			return nil, fmt.Errorf("agent: etcd: %w", err)
		}
		a.cli = cli
	}
	if cfg.MetricsAddr != "" && o.Registry != nil {
		addr, err := telemetry.ServeMetrics(a.ctx, cfg.MetricsAddr, o.Registry, cfg.EnablePprof)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("agent: metrics on %s: %w", cfg.MetricsAddr, err)
		}
		a.metricsAddr = addr
		a.log.Info("serving metrics", "addr", addr)
	}
	return a, nil
}

// Logger is the node's logger (role and node id on every record).
func (a *Agent) Logger() *slog.Logger { return a.log }

// Etcd is the etcd client (nil when the node runs without a control plane).
func (a *Agent) Etcd() *clientv3.Client { return a.cli }

// MetricsAddr is the bound /metrics address ("" when not served).
func (a *Agent) MetricsAddr() string { return a.metricsAddr }

// NodeID is the node's id.
func (a *Agent) NodeID() string { return a.cfg.NodeID }

// Registration is the node's etcd registration (nil before Register or
// without etcd): keys attached with its Put live and die with the node.
func (a *Agent) Registration() *cluster.Registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reg
}

// Membership is the gossip member (nil without gossip or before Register).
func (a *Agent) Membership() *membership.Membership {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gossip
}

// NewServer builds a gRPC server with the shared interceptors and limits
// (internal/rpc) and, when tracing is on, OpenTelemetry stats handlers.
func (a *Agent) NewServer(sc rpc.ServerConfig) (*grpc.Server, error) {
	if t := a.opts.Tracing; t != nil && t.Enabled {
		sc.ExtraOptions = append(sc.ExtraOptions, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(t.Provider), otelgrpc.WithPropagators(telemetry.Propagator))))
	}
	srv, err := rpc.NewServer(sc)
	if err != nil {
		return nil, err
	}
	if a.health != nil {
		healthpb.RegisterHealthServer(srv, a.health)
	}
	return srv, nil
}

// Health is the node's gRPC health service (nil with Options.OwnHealth).
func (a *Agent) Health() *health.Server { return a.health }

// SetServing reports the node ready (SERVING) or not, overall and for the
// named services. Close sets NOT_SERVING for good.
func (a *Agent) SetServing(ok bool, services ...string) {
	if a.health == nil {
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, s := range append([]string{""}, services...) {
		a.health.SetServingStatus(s, st)
	}
}

// Serve serves srv on lis until Close; a server that stops on its own reports
// on Err.
func (a *Agent) Serve(srv *grpc.Server, lis net.Listener) {
	a.mu.Lock()
	a.servers = append(a.servers, srv)
	a.mu.Unlock()
	a.log.Info("serving gRPC", "addr", lis.Addr().String())
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			a.fail(fmt.Errorf("agent: gRPC server on %s: %w", lis.Addr(), err))
		}
	}()
}

func (a *Agent) fail(err error) {
	select {
	case a.errc <- err:
	default:
	}
}

// Err delivers failures that should end the role's Run (a server stopped).
func (a *Agent) Err() <-chan error { return a.errc }

// Go runs fn on its own goroutine with a context that ends at Close; Close
// waits for it to return.
func (a *Agent) Go(fn func(ctx context.Context)) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		fn(a.ctx)
	}()
}

// Register joins gossip (when configured) and registers the node in etcd at
// addr (the advertised address overrides it) with meta, keeping the
// registration until Close. Without etcd it only joins gossip. A failed call
// may be retried (the gossip member is kept); once registered it does nothing.
func (a *Agent) Register(addr string, meta map[string]string) error {
	if a.cfg.AdvertiseAddr != "" {
		addr = a.cfg.AdvertiseAddr
	}
	info := cluster.NodeInfo{ID: a.cfg.NodeID, Role: a.role, Addr: addr, Meta: map[string]string{}}
	for k, v := range meta {
		info.Meta[k] = v
	}
	if a.cfg.Gossip != nil && a.Membership() == nil { // a retried Register keeps its member
		gc := *a.cfg.Gossip
		gc.Meta = membership.Meta{ID: a.cfg.NodeID, Role: a.role, Addr: addr}
		m, err := membership.Start(gc)
		if err != nil {
			return fmt.Errorf("agent: gossip: %w", err)
		}
		a.mu.Lock()
		a.gossip = m
		a.mu.Unlock()
		a.log.Info("gossip started", "addr", m.Addr())
		if a.cli != nil {
			a.Go(func(ctx context.Context) {
				m.JoinLoop(ctx, 2*time.Second, func() []string {
					sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					defer cancel()
					return cluster.GossipSeeds(sctx, a.cli)
				})
			})
		}
	}
	if m := a.Membership(); m != nil {
		info.Meta[cluster.GossipMetaKey] = m.Addr()
	}
	if a.cli == nil || a.Registration() != nil {
		return nil
	}
	reg, err := cluster.Register(a.ctx, a.cli, info, a.cfg.LeaseTTL, cluster.RegisterOptions{Logger: a.log})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.reg = reg
	a.mu.Unlock()
	a.log.Info("registered in etcd", "addr", addr, "lease_ttl_s", a.cfg.LeaseTTL)
	return nil
}

// View is the gossip cluster as one member sees it (the member itself
// excluded).
type View struct {
	Alive map[string]membership.Meta // by node id
	Dead  map[string]membership.Meta // failed or left, not rejoined, by node id
}

// Of returns the view restricted to one role.
func (v View) Of(role string) View {
	out := View{Alive: map[string]membership.Meta{}, Dead: map[string]membership.Meta{}}
	for id, m := range v.Alive {
		if m.Role == role {
			out.Alive[id] = m
		}
	}
	for id, m := range v.Dead {
		if m.Role == role {
			out.Dead[id] = m
		}
	}
	return out
}

// WatchPeers calls fn with the gossip view now and whenever it changes, until
// Close. The view is reconciled from memberlist's state every interval (and at
// once on its events), so fn never misses a failure because an event was
// dropped. fn runs on one goroutine. Without gossip it does nothing.
func (a *Agent) WatchPeers(interval time.Duration, fn func(View)) {
	m := a.Membership()
	if m == nil {
		return
	}
	a.Go(func(ctx context.Context) {
		t := time.NewTicker(interval)
		defer t.Stop()
		var last View
		for {
			v := View{Alive: map[string]membership.Meta{}, Dead: m.DeadMembers()}
			for _, mm := range m.Members() {
				if _, dead := v.Dead[mm.ID]; !dead && mm.ID != a.cfg.NodeID {
					v.Alive[mm.ID] = mm
				}
			}
			delete(v.Dead, a.cfg.NodeID)
			if !sameView(last, v) {
				fn(v)
				last = v
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-m.Events():
			}
		}
	})
}

func sameView(a, b View) bool {
	if a.Alive == nil || len(a.Alive) != len(b.Alive) || len(a.Dead) != len(b.Dead) {
		return false
	}
	for id, m := range a.Alive {
		if b.Alive[id] != m {
			return false
		}
	}
	for id := range a.Dead {
		if _, ok := b.Dead[id]; !ok {
			return false
		}
	}
	return true
}

// Close stops the node gracefully: it deregisters (watchers see the node leave
// at once), leaves gossip, stops the loops started with Go, stops the servers
// (in-flight calls get StopTimeout to finish), shuts tracing down and closes
// the etcd client. It never waits on an unreachable etcd for long.
func (a *Agent) Close() { a.stop(false) }

// Crash stops the node like a killed process (fault injection): the lease is
// abandoned (it expires after its TTL), gossip stops without a leave message,
// connections are cut.
func (a *Agent) Crash() { a.stop(true) }

func (a *Agent) stop(crash bool) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	reg, gossip, servers := a.reg, a.gossip, a.servers
	a.mu.Unlock()
	if a.health != nil {
		a.health.Shutdown() // NOT_SERVING first: balancers stop sending
	}
	if crash {
		for _, s := range servers {
			s.Stop()
		}
	}
	if reg != nil {
		if crash {
			reg.Abandon()
		} else if err := reg.Close(); err != nil {
			a.log.Warn("deregistering", "err", err)
		}
	}
	if gossip != nil {
		if crash {
			gossip.Shutdown()
		} else {
			gossip.Leave(time.Second)
		}
	}
	a.cancel()
	a.wg.Wait()
	for _, s := range servers {
		stopGracefully(s, a.cfg.StopTimeout)
	}
	if t := a.opts.Tracing; t != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.Shutdown(sctx)
		cancel()
	}
	if a.cli != nil {
		a.cli.Close()
	}
	a.log.Info("stopped", "crash", crash)
}

func stopGracefully(s *grpc.Server, timeout time.Duration) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		s.Stop()
		<-done
	}
}
