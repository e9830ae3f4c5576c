package agent

import (
	"context"
	"encoding/base64"
	"flag"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/membership"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep process-wide goroutines.
		goleak.IgnoreTopFunction("go.etcd.io/etcd/client/pkg/v3/logutil.init.0.func1"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.(*serverWatchStream).sendLoop"),
	)
}

func TestConfigFlags(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.NodeID == "" || c.LeaseTTL != 5 || c.Gossip != nil || len(c.Etcd) != 0 {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "etcd list", args: []string{"--etcd", " a:1, ,b:2 "}, check: func(t *testing.T, c Config) {
			if strings.Join(c.Etcd, ";") != "a:1;b:2" {
				t.Fatalf("etcd %q", c.Etcd)
			}
		}},
		{name: "gossip", args: []string{"--gossip-bind", "0.0.0.0:7946", "--gossip-advertise", "10.0.0.1:7946", "--gossip-key", key}, check: func(t *testing.T, c Config) {
			g := c.Gossip
			if g == nil || g.BindAddr != "0.0.0.0" || g.BindPort != 7946 || g.AdvertiseAddr != "10.0.0.1" || len(g.SecretKey) != 32 || !g.LAN {
				t.Fatalf("gossip %+v", g)
			}
		}},
		{name: "advertise needs bind", args: []string{"--gossip-advertise", "1.2.3.4:5"}, wantErr: "needs --gossip-bind"},
		{name: "bad key", args: []string{"--gossip-bind", ":7946", "--gossip-key", "c2hvcnQ="}, wantErr: "16, 24 or 32 bytes"},
		{name: "bad port", args: []string{"--gossip-bind", "host:99999"}, wantErr: "bad port"},
		{name: "bad level", args: []string{"--log-level", "loud"}, wantErr: "log level"},
		{name: "bad format", args: []string{"--log-format", "xml"}, wantErr: "log format"},
		{name: "bad ttl", args: []string{"--lease-ttl", "0"}, wantErr: "TTL"},
		{name: "empty id", args: []string{"--node-id", ""}, wantErr: "node id"},
		{name: "pprof needs metrics", args: []string{"--enable-pprof"}, wantErr: "set --metrics-addr"},
		{name: "pprof", args: []string{"--enable-pprof", "--metrics-addr", "127.0.0.1:0"}, check: func(t *testing.T, c Config) {
			if !c.EnablePprof || c.MetricsAddr != "127.0.0.1:0" {
				t.Fatalf("%+v", c)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			c.AddFlags(fs, "")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func config(e *testutil.Etcd, id string) Config {
	cfg := DefaultConfig()
	cfg.NodeID, cfg.Etcd, cfg.LeaseTTL, cfg.StopTimeout = id, []string{e.Endpoint()}, 1, time.Second
	return cfg
}

var waitFor = testutil.WaitFor

// serveHealth starts a gRPC server with the health service through a.
func serveHealth(t *testing.T, a *Agent) (string, *health.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := a.NewServer(rpc.ServerConfig{}) // registers the agent's health service
	if err != nil {
		t.Fatal(err)
	}
	a.Serve(srv, lis)
	return lis.Addr().String(), a.Health()
}

func TestLifecycle(t *testing.T) {
	c := testutil.StartEtcd(t)
	a, err := Start(cluster.RoleExpert, config(c, "e1"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveHealth(t, a)
	if err := a.Register(addr, map[string]string{"slots": "4"}); err != nil {
		t.Fatal(err)
	}
	key := cluster.NodesPrefix + "expert/e1"
	waitFor(t, "registration", func() bool { return c.Has(key) })
	var stopped sync.WaitGroup
	stopped.Add(1)
	a.Go(func(ctx context.Context) { defer stopped.Done(); <-ctx.Done() })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health: %v", err)
		}
		return r.Status
	}
	if st := check(); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health before SetServing: %v", st)
	}
	a.SetServing(true)
	if st := check(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after SetServing: %v", st)
	}
	a.Close()
	stopped.Wait() // Close waited for the loop
	if c.Has(key) {
		t.Fatal("still registered after Close")
	}
	a.Close() // idempotent
}

func TestCloseWithEtcdUnreachable(t *testing.T) {
	c := testutil.StartEtcd(t)
	a, err := Start(cluster.RoleTrunk, config(c, "t1"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Register("127.0.0.1:1", nil); err != nil {
		t.Fatal(err)
	}
	a.Go(func(ctx context.Context) { cluster.WatchTable(ctx, a.Etcd(), nil) })
	c.Bridge.Cut()
	time.Sleep(1500 * time.Millisecond) // the lease is lost; attempts at registering again fail
	start := time.Now()
	a.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v with etcd unreachable", d)
	}
}

func TestCrashLeavesLeaseToExpire(t *testing.T) {
	c := testutil.StartEtcd(t)
	a, err := Start(cluster.RoleExpert, config(c, "e2"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Register("127.0.0.1:1", nil); err != nil {
		t.Fatal(err)
	}
	key := cluster.NodesPrefix + "expert/e2"
	waitFor(t, "registration", func() bool { return c.Has(key) })
	a.Crash()
	if !c.Has(key) {
		t.Fatal("a crash revoked the registration")
	}
	waitFor(t, "lease expiry", func() bool { return !c.Has(key) })
}

// The gossip view comes from memberlist's state, not only its events: a
// consumer that steals every event does not hide a failure.
func TestWatchPeersReconciles(t *testing.T) {
	c := testutil.StartEtcd(t)
	key := make([]byte, 32)
	start := func(id, role string) *Agent {
		cfg := config(c, id)
		cfg.Gossip = &membership.Config{SecretKey: key}
		a, err := Start(role, cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Register("127.0.0.1:1", nil); err != nil {
			t.Fatal(err)
		}
		return a
	}
	trunk := start("t", cluster.RoleTrunk)
	defer trunk.Close()
	expert := start("e", cluster.RoleExpert)
	stolen := make(chan struct{})
	go func() { // an event channel that drops everything
		defer close(stolen)
		for {
			select {
			case <-trunk.Membership().Events():
			case <-time.After(3 * time.Second):
				return
			}
		}
	}()
	var mu sync.Mutex
	var last View
	trunk.WatchPeers(50*time.Millisecond, func(v View) { mu.Lock(); last = v; mu.Unlock() })
	view := func() View { mu.Lock(); defer mu.Unlock(); return last }
	waitFor(t, "expert alive in the view", func() bool { _, ok := view().Alive["e"]; return ok })
	expert.Crash()
	waitFor(t, "expert dead in the view", func() bool {
		v := view().Of(cluster.RoleExpert)
		_, alive := v.Alive["e"]
		_, dead := v.Dead["e"]
		return dead && !alive
	})
	<-stolen
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	var buf strings.Builder
	log, err := NewLogger(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	log.With("role", "trunk").InfoContext(ctx, "request failed", "code", "Internal")
	log.Info("no trace")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"`) ||
		!strings.Contains(lines[0], `"role":"trunk"`) || strings.Contains(lines[1], "trace_id") {
		t.Fatalf("log lines:\n%s", buf.String())
	}
}
