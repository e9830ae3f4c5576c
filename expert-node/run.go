package expertnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/rollout"
	"github.com/switchyard-serving/switchyard/internal/rpc"
)

// MetricsAddr is the bound /metrics address once Run has started ("" when not
// served).
func (n *Node) MetricsAddr() string {
	s, _ := n.metricsAddr.Load().(string)
	return s
}

// Run serves the node as a cluster member until ctx ends: it listens on
// Config.Listen (or uses Config.Listener), registers in etcd, and keeps the
// node loaded with its share of the routing tables through the make-before-
// break protocol (rollout.Follower). It returns nil when ctx ends (stopping
// like a killed process when ctx's cause is agent.ErrCrash), or the error that
// took the node out of service (a lost GPU: the supervisor restarts it). Call
// Close afterwards.
func (n *Node) Run(ctx context.Context) error {
	if len(n.cfg.Etcd) == 0 {
		if n.cfg.Listener != nil {
			n.cfg.Listener.Close()
		}
		return fmt.Errorf("%w: an expert node needs etcd endpoints (--etcd)", ErrConfig)
	}
	lis := n.cfg.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", n.cfg.Listen); err != nil {
			return fmt.Errorf("expertnode: listen: %w", err)
		}
	}
	a, err := agent.Start(cluster.RoleExpert, n.cfg.Config, agent.Options{Registry: n.metrics.reg, Tracing: n.cfg.Tracing, OwnHealth: true})
	if err != nil {
		lis.Close()
		return err
	}
	n.metricsAddr.Store(a.MetricsAddr())
	srv, err := a.NewServer(rpc.ServerConfig{TLS: n.cfg.PeerTLS, ExtraOptions: n.ServerOptions()})
	if err != nil {
		lis.Close()
		a.Close()
		return err
	}
	n.Register(srv)
	a.Serve(srv, lis)
	if n.cfg.HealthListen != "" {
		hl, err := net.Listen("tcp", n.cfg.HealthListen)
		if err != nil {
			a.Close()
			return fmt.Errorf("expertnode: health listener: %w", err)
		}
		hs := grpc.NewServer()
		healthpb.RegisterHealthServer(hs, n.health)
		go hs.Serve(hl)
		defer hs.Stop()
	}
	meta := map[string]string{}
	if s := n.Slots(); s > 0 {
		// A GPU node's capacity: the coordinator never places more experts on it.
		meta[cluster.SlotsMetaKey] = strconv.Itoa(s)
	}
	if err := a.Register(lis.Addr().String(), meta); err != nil {
		a.Close()
		return err
	}
	log := a.Logger()
	if d := n.DeviceInfo(); d != "" {
		log.Info("computing on GPU", "device", d, "slots", n.Slots())
	}
	f := rollout.NewFollower(rollout.FollowerConfig{Node: n.cfg.NodeID, Target: n, Grace: n.cfg.DropGrace, Logger: log,
		Report: func(ctx context.Context, v uint64) error {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return cluster.ReportReady(rctx, a.Registration(), n.cfg.NodeID, v)
		}})
	a.Go(f.Run)
	a.Go(func(ctx context.Context) { cluster.WatchTable(ctx, a.Etcd(), f.SetCurrent) })
	a.Go(func(ctx context.Context) { cluster.WatchPending(ctx, a.Etcd(), f.SetPending) })
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), agent.ErrCrash) {
			a.Crash()
		} else {
			a.Close()
		}
		return nil
	case err := <-n.Fatal():
		log.Error("leaving the cluster: the GPU is lost", "err", err)
		a.Close()
		return err
	case err := <-a.Err():
		a.Close()
		return err
	}
}
