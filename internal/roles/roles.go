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
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// ExpertConfig configures RunExpert.
type ExpertConfig struct {
	NodeID        string
	Etcd          []string
	AdvertiseAddr string // registered address (default: the listener's)
	LeaseTTL      int64  // seconds
	Server        rpc.ServerConfig
	OnError       func(error) // assignment failures (default: ignored)
	MetricsAddr   string      // serve /metrics here ("" = not served)
	// Tracing is the node's tracer provider (shut down when RunExpert returns);
	// it should be the one the node was built with.
	Tracing *telemetry.Tracing
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
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Etcd, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("roles: etcd: %w", err)
	}
	defer cli.Close()
	addr := c.AdvertiseAddr
	if addr == "" {
		addr = lis.Addr().String()
	}
	reg, err := cluster.Register(ctx, cli, cluster.NodeInfo{ID: c.NodeID, Role: cluster.RoleExpert, Addr: addr}, c.LeaseTTL)
	if err != nil {
		return err
	}
	defer reg.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go cluster.WatchTable(wctx, cli, func(t *routing.Table) {
		if err := node.SetAssignment(t); err != nil {
			if c.OnError != nil {
				c.OnError(err)
			}
			return
		}
		cluster.ReportReady(wctx, cli, reg, c.NodeID, t.Version)
	})
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}
