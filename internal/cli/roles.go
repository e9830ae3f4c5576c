package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/coordinator"
	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/roles"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

func init() {
	register("trunk", "run a trunk node (public API, sessions, scheduler, dispatch)", runTrunk)
	register("expert", "run an expert node (computes routed experts for trunk nodes)", runExpert)
	register("coordinator", "run the coordinator (publishes the routing table)", runCoordinator)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "node"
	}
	return h
}

func tlsFlags(fs *flag.FlagSet, prefix, what string) *rpc.TLSFiles {
	f := &rpc.TLSFiles{}
	fs.StringVar(&f.Cert, prefix+"cert", "", what+" certificate (PEM)")
	fs.StringVar(&f.Key, prefix+"key", "", what+" private key (PEM)")
	fs.StringVar(&f.CA, prefix+"ca", "", what+" CA bundle (PEM); enables mutual TLS on servers")
	return f
}

func endpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func runTrunk(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("trunk", stderr)
	d := trunknode.DefaultConfig()
	listen := fs.String("listen", "127.0.0.1:7070", "public API address")
	advertise := fs.String("advertise", "", "address registered in etcd (default: the listen address)")
	id := fs.String("node-id", hostname(), "node id")
	model := fs.String("model", "", "model: Hugging Face folder or .gguf (required)")
	etcdOpts := etcdFlags(fs, "")
	apiToken := fs.String("api-token", os.Getenv("SWITCHYARD_API_TOKEN"), "require this bearer token on the public API (default $SWITCHYARD_API_TOKEN)")
	local := fs.Bool("local-experts", false, "compute experts in process (no expert nodes)")
	pub := tlsFlags(fs, "tls-", "public API")
	peer := tlsFlags(fs, "peer-tls-", "node-to-node")
	rec := fs.Int64("recurrent-budget", d.Memory.RecurrentBytes, "bytes for sessions' recurrent state")
	kv := fs.Int64("kv-budget", d.Memory.KVBytes, "bytes for sessions' KV caches")
	ttl := fs.Duration("session-ttl", d.Memory.IdleTTL, "idle sessions are deleted after this")
	maxRunning := fs.Int("max-running", d.Sched.MaxRunning, "sessions advanced together per step")
	maxStep := fs.Int("max-step-tokens", d.Sched.MaxTokensPerStep, "token budget per step")
	pingPong := fs.Bool("ping-pong", d.Sched.PingPong, "overlap expert dispatch with trunk compute by splitting big steps into two micro-batches")
	maxCtx := fs.Int("max-context", d.Limits.MaxContext, "tokens a session may hold")
	maxNew := fs.Int("max-new-tokens", d.Limits.MaxNewTokens, "upper bound for max_tokens")
	ratePS := fs.Float64("rate-limit", d.RatePerSec, "new public calls per second (0: unlimited)")
	drain := fs.Duration("drain-timeout", d.DrainTimeout, "graceful drain budget on SIGTERM")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus /metrics on this address (e.g. :9090)")
	stepRatio := fs.Float64("trace-step-ratio", d.StepTracing.Ratio, "fraction of forward steps traced (with OTEL_EXPORTER_OTLP_ENDPOINT set)")
	stepSlow := fs.Duration("trace-slow-step", d.StepTracing.SlowThreshold, "always trace forward steps slower than this (0: off)")
	detail := fs.Bool("expert-metrics-detail", false, "export per-(layer, expert) activation series (high cardinality)")
	gossip := gossipFlags(fs)
	wireDT := fs.String("wire-dtype", "bf16", "element type of rows sent to expert nodes: bf16 (half the bytes) or f32 (exact)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var err error
	cfg := d
	cfg.NodeID, cfg.ModelPath, cfg.LocalExperts, cfg.AdvertiseAddr, cfg.APIToken = *id, *model, *local, *advertise, *apiToken
	cfg.Etcd, cfg.EtcdTLS = etcdOpts()
	cfg.PublicTLS, cfg.PeerTLS = *pub, *peer
	cfg.Memory = trunknode.MemoryConfig{RecurrentBytes: *rec, KVBytes: *kv, IdleTTL: *ttl}
	cfg.Sched.MaxRunning, cfg.Sched.MaxTokensPerStep, cfg.Sched.PingPong = *maxRunning, *maxStep, *pingPong
	cfg.Limits.MaxContext, cfg.Limits.MaxNewTokens = *maxCtx, *maxNew
	cfg.RatePerSec, cfg.DrainTimeout = *ratePS, *drain
	cfg.MetricsAddr, cfg.ExpertDetail = *metricsAddr, *detail
	if cfg.Gossip, err = gossip(); err != nil {
		return err
	}
	switch *wireDT {
	case "bf16":
		cfg.Dispatch.WireDType = pb.WireDType_WIRE_DTYPE_BF16
	case "f32":
		cfg.Dispatch.WireDType = pb.WireDType_WIRE_DTYPE_F32
	default:
		return fmt.Errorf("--wire-dtype %q: want bf16 or f32", *wireDT)
	}
	cfg.StepTracing = trunknode.StepTracing{Ratio: *stepRatio, SlowThreshold: *stepSlow}
	n, err := trunknode.New(cfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() {
		<-n.Ready()
		fmt.Fprintf(stdout, "trunk %s ready on %s\n", cfg.NodeID, lis.Addr())
	}()
	return n.Serve(ctx, lis)
}

func runExpert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("expert", stderr)
	listen := fs.String("listen", "127.0.0.1:7071", "expert service address")
	advertise := fs.String("advertise", "", "address registered in etcd (default: the listen address)")
	id := fs.String("node-id", hostname(), "node id")
	model := fs.String("model", "", "model: Hugging Face folder or .gguf (required)")
	etcdOpts := etcdFlags(fs, "")
	peer := tlsFlags(fs, "peer-tls-", "node-to-node")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus /metrics on this address (e.g. :9090)")
	device := fs.String("device", "cpu", "where routed experts run: cpu, cuda, cuda:N (one GPU per expert node; needs the -cuda build), or fake (emulated GPU, tests)")
	gpuMem := fs.String("gpu-memory", "", "GPU memory for experts and scratch: a fraction of the GPU's memory (0.8) or a size (40GiB); default 0.9 of the free memory")
	smallRows := fs.Int("gpu-small-rows", 0, "GPU: experts with at most this many rows in a round use the grouped GEMV kernel, larger ones cuBLAS (0: default 32; -1: always cuBLAS)")
	gossip := gossipFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	gc, err := gossip()
	if err != nil {
		return err
	}
	ec := expertnode.DefaultConfig()
	ec.NodeID, ec.ModelPath = *id, *model
	ec.Device, ec.GPUMemory, ec.GPUSmallRows = *device, *gpuMem, *smallRows
	tr, err := telemetry.NewTracing(ctx, "expert", *id)
	if err != nil {
		return err
	}
	ec.Tracing = tr
	n, err := expertnode.New(ec)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "expert %s serving on %s\n", *id, lis.Addr())
	if d := n.DeviceInfo(); d != "" {
		fmt.Fprintf(stdout, "expert %s computes on %s, %d expert slots in its GPU budget\n", *id, d, n.Slots())
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	eps, etls := etcdOpts()
	return roles.RunExpert(ctx, n, lis, roles.ExpertConfig{NodeID: *id, Etcd: eps, EtcdTLS: etls, AdvertiseAddr: *advertise,
		Server: rpc.ServerConfig{TLS: *peer}, MetricsAddr: *metricsAddr, Tracing: tr, Gossip: gc, OnError: func(err error) { log.Error("assignment", "err", err) }})
}

func runCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("coordinator", stderr)
	etcdOpts := etcdFlags(fs, "")
	model := fs.String("model", "", "model folder or .gguf, for its layer and expert counts (required)")
	listen := fs.String("listen", "", "serve the gRPC health service here (e.g. :7072; empty: none)")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus /metrics here (e.g. :9090)")
	id := fs.String("node-id", hostname(), "coordinator id (election candidate value)")
	d := coordinator.DefaultLeaderConfig()
	slots := fs.Int("slots-per-node", 0, "expert replicas one expert node can hold (0: unlimited)")
	redundant := fs.Float64("redundant", d.Placement.RedundantSlotsFraction, "extra replicas for hot experts, as a fraction of layers x experts")
	budget := fs.Int("migration-budget", d.Placement.MigrationBudget, "replicas moved per planning round (-1: unlimited)")
	minGain := fs.Float64("min-gain", d.Placement.MinGain, "least imbalance reduction a move must bring")
	interval := fs.Duration("plan-interval", d.PlanInterval, "re-planning period")
	halfLife := fs.Duration("load-half-life", d.LoadHalfLife, "half-life of the activation-count EMA")
	ttl := fs.Int("election-ttl", d.ElectionTTL, "leader session TTL in seconds")
	gossip := gossipFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	gc, err := gossip()
	if err != nil {
		return err
	}
	var cfg *config.Config
	if hybrid.IsGGUF(*model) {
		m, _, err := hybrid.LoadGGUF(*model, hybrid.LoadOptions{KeepExpert: func(int, int) bool { return false }})
		if err != nil {
			return err
		}
		cfg = m.Cfg
		m.Close()
	} else {
		c, err := config.Load(filepath.Join(*model, "config.json"))
		if err != nil {
			return err
		}
		cfg = c
	}
	eps, etls := etcdOpts()
	cli, err := cluster.NewClient(eps, etls)
	if err != nil {
		return err
	}
	defer cli.Close()
	reg := telemetry.NewRegistry()
	if *metricsAddr != "" {
		if _, err := telemetry.ServeMetrics(ctx, *metricsAddr, reg); err != nil {
			return err
		}
	}
	if *listen != "" {
		stop, err := serveHealth(*listen)
		if err != nil {
			return err
		}
		defer stop()
	}
	fmt.Fprintf(stdout, "coordinator %s running (%d layers x %d experts)\n", *id, cfg.Layers, cfg.Experts)
	lc := d
	lc.NodeID, lc.Layers, lc.Experts, lc.SlotsPerNode = *id, cfg.Layers, cfg.Experts, *slots
	lc.Placement.RedundantSlotsFraction, lc.Placement.MigrationBudget, lc.Placement.MinGain = *redundant, *budget, *minGain
	lc.PlanInterval, lc.LoadHalfLife, lc.ElectionTTL = *interval, *halfLife, *ttl
	lc.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	lc.Gossip = gc
	lc.Registry = reg
	err = coordinator.Run(ctx, cli, lc)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// serveHealth serves the standard gRPC health service (SERVING) on addr.
func serveHealth(addr string) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := grpc.NewServer()
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	go s.Serve(lis)
	return s.Stop, nil
}
