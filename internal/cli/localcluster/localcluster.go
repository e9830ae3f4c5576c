// Package localcluster starts a whole Switchyard cluster inside one process on
// loopback: an embedded etcd (or the caller's, Options.EtcdEndpoints, e.g. an
// etcd process a test stops and restarts), the coordinator, N expert nodes and trunk nodes,
// each on its own real gRPC listener. `switchyard up` runs it, and the integration
// tests use it as their multi-node harness (with fault injection: kill, crash or
// restart an expert node, kill a coordinator, stop etcd).
//
// Every node is started exactly as its production subcommand starts it: the
// role's Config (from its DefaultConfig, with loopback addresses and tight
// timers), New, Run, Close. It lives under the CLI because it is the only code
// besides the CLI that imports role packages.
package localcluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-serving/switchyard/coordinator"
	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/embedetcd"
	"github.com/switchyard-serving/switchyard/internal/membership"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// Options describe the cluster.
type Options struct {
	ModelPath   string
	ExpertNodes int    // default 2
	Listen      string // public API address (default 127.0.0.1:0)
	DataDir     string // etcd data (default: a temporary folder removed on Close)
	// EtcdEndpoints, when set, is an etcd the cluster uses instead of starting
	// the embedded one (an etcd process of the test's, say); DataDir is then
	// unused, and StopEtcd and StartEtcd are not available.
	EtcdEndpoints []string
	// Trunks is the number of trunk nodes (default 1); they share the expert nodes.
	Trunks int
	// Trunk adjusts each trunk's configuration before it starts (trunks after the
	// first serve metrics on a free port when MetricsAddr is set).
	Trunk func(*trunknode.Config)
	// ExpertMetrics serves each expert node's /metrics on a free loopback port;
	// CoordinatorMetrics each coordinator's.
	ExpertMetrics      bool
	CoordinatorMetrics bool
	// NoGossip turns off the memberlist cluster (on by default, encrypted).
	NoGossip bool
	// Coordinators is the number of coordinator replicas (default 1).
	Coordinators int
	// Coordinator adjusts the coordinators' configuration (tests tighten timers).
	Coordinator func(*coordinator.Config)
	// Expert adjusts each expert node's configuration before it starts.
	Expert func(*expertnode.Config)
	// Logger receives every node's logs (default: discarded).
	Logger *slog.Logger
	// ExpertDevice is the expert nodes' compute device (expertnode.Config.Device:
	// "" or "cpu", "cuda:N", "fake"); ExpertGPUMemory their GPU budget.
	ExpertDevice    string
	ExpertGPUMemory string
}

// Cluster is a running local cluster.
type Cluster struct {
	closeOnce sync.Once
	Endpoint  string            // public gRPC address of the first trunk
	Etcd      *embedetcd.Server // nil with Options.EtcdEndpoints
	// EtcdEndpoints are the client URLs of the cluster's etcd.
	EtcdEndpoints []string
	Trunk         *trunknode.Node // the first trunk
	// Endpoints and Trunks list every trunk node (Endpoint and Trunk are the first).
	Endpoints []string
	Trunks    []*trunknode.Node

	opts    Options
	cfg     *config.Config
	cli     *clientv3.Client
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	tmp     string
	dataDir string
	gossip  *membership.Config
	mu      sync.Mutex
	experts []*expertProc
	coords  []*coordProc
	errs    chan error
}

type coordProc struct {
	id     string
	co     *coordinator.Coordinator
	cancel func() // stops it gracefully (resigns, deregisters)
	crash  func() // stops it like a killed process: the election session expires
	done   chan struct{}
}

type expertProc struct {
	id     string
	node   *expertnode.Node
	cancel func()
	crash  func()
	done   chan struct{}
}

// Start brings the cluster up and returns once the public API serves and every
// expert node has loaded its assignment.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.ExpertNodes == 0 {
		o.ExpertNodes = 2
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	c = &Cluster{opts: o, errs: make(chan error, 16)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if len(o.EtcdEndpoints) > 0 {
		c.EtcdEndpoints = o.EtcdEndpoints
		c.cli, err = clientv3.New(clientv3.Config{Endpoints: o.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, err
		}
	} else {
		if o.DataDir == "" {
			if c.tmp, err = os.MkdirTemp("", "switchyard-etcd-"); err != nil {
				return nil, err
			}
			o.DataDir = c.tmp
		}
		c.dataDir = o.DataDir
		if c.Etcd, err = embedetcd.Start(ctx, embedetcd.Config{Dir: o.DataDir}); err != nil {
			return nil, err
		}
		c.EtcdEndpoints = c.Etcd.Endpoints
		if c.cli, err = c.Etcd.Client(); err != nil {
			return nil, err
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	if !o.NoGossip {
		key := make([]byte, 32)
		rand.Read(key)
		c.gossip = &membership.Config{SecretKey: key}
	}

	nTrunks := max(o.Trunks, 1)
	// One cluster, one snapshot key: trunks accept only each other's sessions.
	snapKey := make([]byte, 32)
	rand.Read(snapKey)
	var tcfg trunknode.Config
	remote := false // some trunk computes experts on expert nodes
	for i := range nTrunks {
		tcfg = trunknode.DefaultConfig()
		tcfg.NodeID = fmt.Sprintf("trunk-%d", i)
		tcfg.ModelPath = o.ModelPath
		tcfg.Etcd = c.EtcdEndpoints
		tcfg.SnapshotKey = snapKey
		// Trunks in one process share its memory: split the default budgets.
		tcfg.Memory.RecurrentBytes /= int64(nTrunks)
		tcfg.Memory.KVBytes /= int64(nTrunks)
		tcfg.Gossip = c.gossip
		if o.Trunk != nil {
			o.Trunk(&tcfg)
		}
		if i > 0 && tcfg.MetricsAddr != "" {
			tcfg.MetricsAddr = "127.0.0.1:0"
		}
		tcfg.Logger = c.logger()
		remote = remote || !tcfg.LocalExperts
		t, err := trunknode.New(tcfg)
		if err != nil {
			return nil, err
		}
		c.Trunks = append(c.Trunks, t)
	}
	c.Trunk = c.Trunks[0]
	c.cfg = c.Trunk.Model().Cfg
	if c.cfg.IsMoE() && remote {
		if o.Coordinators == 0 {
			o.Coordinators = 1
			c.opts.Coordinators = 1
		}
		for i := range o.Coordinators {
			c.StartCoordinator(fmt.Sprintf("coordinator-%d", i))
		}
		for i := range o.ExpertNodes {
			if err := c.StartExpert(fmt.Sprintf("expert-%d", i)); err != nil {
				return nil, err
			}
		}
	}
	for i, t := range c.Trunks {
		addr := "127.0.0.1:0"
		if i == 0 {
			addr = o.Listen
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("localcluster: listen %s: %w", addr, err)
		}
		c.Endpoints = append(c.Endpoints, lis.Addr().String())
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer t.Close()
			if err := t.Serve(runCtx, lis); err != nil {
				c.errs <- fmt.Errorf("trunk-%d: %w", i, err)
			}
		}()
	}
	c.Endpoint = c.Endpoints[0]
	if err := c.WaitReady(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) logger() *slog.Logger {
	if c.opts.Logger != nil {
		return c.opts.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// StartCoordinator starts a coordinator replica.
func (c *Cluster) StartCoordinator(id string) {
	lc := coordinator.DefaultConfig()
	lc.NodeID, lc.Layers, lc.Experts = id, c.cfg.Layers, c.cfg.Experts
	lc.Etcd, lc.Gossip, lc.Logger, lc.LeaseTTL = c.EtcdEndpoints, c.gossip, c.logger(), 2
	lc.PlanInterval, lc.ElectionTTL, lc.ReadyTimeout = 2*time.Second, 2, 20*time.Second
	if c.opts.CoordinatorMetrics {
		lc.MetricsAddr = "127.0.0.1:0"
	}
	if c.opts.Coordinator != nil {
		c.opts.Coordinator(&lc)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	co, err := coordinator.New(lc)
	if err != nil {
		cancel(nil)
		c.errs <- fmt.Errorf("coordinator %s: %w", id, err)
		return
	}
	p := &coordProc{id: id, co: co, cancel: func() { cancel(nil) }, crash: func() { cancel(agent.ErrCrash) }, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer co.Close()
		if err := co.Run(ctx); err != nil && ctx.Err() == nil {
			c.errs <- fmt.Errorf("coordinator %s: %w", id, err)
		}
	}()
	c.mu.Lock()
	c.coords = append(c.coords, p)
	c.mu.Unlock()
}

// KillCoordinator stops coordinator id without resigning (its election session
// expires after the TTL, like a crash).
func (c *Cluster) KillCoordinator(id string) error {
	c.mu.Lock()
	var p *coordProc
	for i, e := range c.coords {
		if e.id == id {
			p = e
			c.coords = append(c.coords[:i], c.coords[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("localcluster: no coordinator %q", id)
	}
	p.crash()
	<-p.done
	return nil
}

// StopEtcd stops the embedded etcd (the data plane must keep serving);
// StartEtcd starts it again on the same address and data. Neither applies to
// an etcd given by Options.EtcdEndpoints.
func (c *Cluster) StopEtcd() {
	if c.Etcd != nil {
		c.Etcd.Close()
	}
}

// StartEtcd restarts the embedded etcd after StopEtcd.
func (c *Cluster) StartEtcd(ctx context.Context) error {
	if c.Etcd == nil {
		return errors.New("localcluster: the cluster's etcd is not embedded")
	}
	addr := strings.TrimPrefix(c.Etcd.Endpoints[0], "http://")
	s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: c.dataDir, ClientAddr: addr, PeerAddr: c.Etcd.PeerAddr})
	if err != nil {
		return err
	}
	c.Etcd = s
	return nil
}

// Client is an etcd client of the cluster.
func (c *Cluster) Client() *clientv3.Client { return c.cli }

// StartExpert starts (or restarts) an expert node with the given id.
func (c *Cluster) StartExpert(id string) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ecfg := expertnode.DefaultConfig()
	ecfg.NodeID, ecfg.ModelPath, ecfg.Listener = id, c.opts.ModelPath, lis
	ecfg.Etcd, ecfg.Gossip, ecfg.LeaseTTL, ecfg.Logger = c.EtcdEndpoints, c.gossip, 2, c.logger()
	ecfg.Device, ecfg.GPUMemory = c.opts.ExpertDevice, c.opts.ExpertGPUMemory
	if c.opts.ExpertMetrics {
		ecfg.MetricsAddr = "127.0.0.1:0"
	}
	if c.opts.Expert != nil {
		c.opts.Expert(&ecfg)
	}
	if ecfg.Tracing, err = telemetry.NewTracing(context.Background(), "expert", id); err != nil {
		lis.Close()
		return err
	}
	n, err := expertnode.New(ecfg)
	if err != nil {
		lis.Close()
		return err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	p := &expertProc{id: id, node: n, cancel: func() { cancel(nil) }, crash: func() { cancel(agent.ErrCrash) }, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer n.Close()
		if err := n.Run(ctx); err != nil && ctx.Err() == nil {
			c.errs <- fmt.Errorf("expert %s: %w", id, err)
		}
	}()
	c.mu.Lock()
	c.experts = append(c.experts, p)
	c.mu.Unlock()
	return nil
}

// KillExpert stops expert node id gracefully: it deregisters from etcd and the
// coordinator re-places its experts.
func (c *Cluster) KillExpert(id string) error { return c.stopExpert(id, false) }

// CrashExpert stops expert node id like a killed process: connections drop,
// nothing is deregistered; its etcd lease expires after the TTL.
func (c *Cluster) CrashExpert(id string) error { return c.stopExpert(id, true) }

func (c *Cluster) stopExpert(id string, crash bool) error {
	c.mu.Lock()
	var p *expertProc
	for i, e := range c.experts {
		if e.id == id {
			p = e
			c.experts = append(c.experts[:i], c.experts[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("localcluster: no expert node %q", id)
	}
	if crash {
		p.crash()
	} else {
		p.cancel()
	}
	<-p.done
	return nil
}

// MetricsAddrs lists every node's bound /metrics address by node id (nodes
// that serve none are left out; an expert node's or coordinator's appears once
// it has started).
func (c *Cluster) MetricsAddrs() map[string]string {
	out := map[string]string{}
	for i, t := range c.Trunks {
		if a := t.MetricsAddr(); a != "" {
			out[fmt.Sprintf("trunk-%d", i)] = a
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.experts {
		if a := e.node.MetricsAddr(); a != "" {
			out[e.id] = a
		}
	}
	for _, p := range c.coords {
		if a := p.co.MetricsAddr(); a != "" {
			out[p.id] = a
		}
	}
	return out
}

// ExpertIDs lists the running expert nodes.
func (c *Cluster) ExpertIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.experts {
		out = append(out, e.id)
	}
	return out
}

// WaitReady waits until the trunk serves and every running expert node holds the
// assignment of the current routing table.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case err := <-c.errs:
			return err
		default:
		}
		ready := true
		for _, t := range c.Trunks {
			select {
			case <-t.Ready():
			default:
				ready = false
			}
		}
		c.mu.Lock()
		for _, e := range c.experts {
			ready = ready && e.node.Ready()
			// ... and every trunk routes to it (a trunk is ready with the first
			// table, which may predate an expert node's registration).
			for _, t := range c.Trunks {
				if d := t.Dispatcher(); d != nil {
					tb := d.Table()
					if tb == nil {
						ready = false
					} else if _, ok := tb.Addr(e.id); !ok {
						ready = false
					}
				}
			}
		}
		c.mu.Unlock()
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("localcluster: cluster not ready in time")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Errors delivers background failures of the cluster's nodes.
func (c *Cluster) Errors() <-chan error { return c.errs }

// Close stops every node, the coordinator and etcd. It may be called more
// than once.
func (c *Cluster) Close() { c.closeOnce.Do(c.close) }

func (c *Cluster) close() {
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Lock()
	ex, co := c.experts, c.coords
	c.experts, c.coords = nil, nil
	c.mu.Unlock()
	for _, p := range co {
		p.cancel()
		<-p.done
	}
	for _, e := range ex {
		e.cancel()
		<-e.done
	}
	c.wg.Wait()
	if c.cli != nil {
		c.cli.Close()
	}
	if c.Etcd != nil {
		c.Etcd.Close()
	}
	if c.tmp != "" {
		os.RemoveAll(c.tmp)
	}
}
