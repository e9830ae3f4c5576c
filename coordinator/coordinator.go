// Package coordinator is the control plane of a Switchyard cluster. It keeps the
// cluster state in etcd (key schema: internal/cluster) and publishes the routing
// table that trunk nodes follow.
//
// This first version places experts statically: whenever the set of registered
// expert nodes changes it spreads every (layer, expert) over them round-robin
// (routing.Static) and publishes a new table version. Load-driven placement with
// replication, leader election and make-before-break rollout build on this loop.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/routing"
)

// Config configures the coordinator.
type Config struct {
	Layers  int // MoE layers of the served model
	Experts int // routed experts per layer
	Logger  *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Layers <= 0 || c.Experts <= 0 {
		return errors.New("coordinator: the model must have MoE layers and experts")
	}
	return nil
}

// RunStatic publishes a static routing table for the live expert nodes, again on
// every membership change, until ctx ends.
func RunStatic(ctx context.Context, cli *clientv3.Client, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var last []string
	cluster.WatchNodes(ctx, cli, cluster.RoleExpert, func(ns []cluster.NodeInfo) {
		ids := make([]string, len(ns))
		nodes := make([]routing.Node, len(ns))
		for i, n := range ns {
			ids[i] = n.ID + "@" + n.Addr
			nodes[i] = routing.Node{ID: n.ID, Addr: n.Addr}
		}
		if slices.Equal(ids, last) || len(nodes) == 0 {
			return
		}
		if err := publishStatic(ctx, cli, cfg, nodes); err != nil {
			log.Warn("publish routing table", "err", err)
			return
		}
		last = ids
		log.Info("published routing table", "expert_nodes", len(nodes))
	})
	return ctx.Err()
}

func publishStatic(ctx context.Context, cli *clientv3.Client, cfg Config, nodes []routing.Node) error {
	var version uint64 = 1
	if cur, err := cluster.LoadTable(ctx, cli); err == nil {
		version = cur.Version + 1
	} else if !errors.Is(err, cluster.ErrNotFound) {
		return err
	}
	t, err := routing.Static(version, cfg.Layers, cfg.Experts, nodes)
	if err != nil {
		return err
	}
	if err := cluster.PublishTable(ctx, cli, t); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	return nil
}
