package trunknode

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tensor"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Config configures a trunk node. Sizes are bytes, durations wall time.
type Config struct {
	// Config is the lifecycle every role shares (agent.Config): NodeID, etcd
	// (empty runs without a control plane: LocalExperts required), the
	// advertised address, lease TTL, gossip (expert nodes that gossip reports
	// failed get no more rows until they come back), metrics and logging.
	agent.Config
	ModelPath string
	// Listen is the public API address Run serves on.
	Listen string
	// HTTPListen, when set, serves the OpenAI-compatible HTTP API there (same
	// tokens, TLS and limits as the gRPC API).
	HTTPListen string
	// ChatTemplate, when set, is a file holding the Jinja chat template to use
	// instead of the model's (a .jinja file, or a tokenizer_config.json).
	ChatTemplate string
	// PrefixCacheBytes bounds the prefix cache: checkpoints of the session
	// state at shared prompt prefixes that stateless requests resume from
	// (counted in the memory budget; 0 turns the cache off).
	PrefixCacheBytes int64
	// APIToken, when set, is required as "authorization: Bearer <token>" on every
	// public call (health and reflection excepted); its holders are the client
	// "default".
	APIToken string
	// APITokens maps tokens to client identities (one token per client, from
	// --api-tokens-file): sessions belong to the identity that created them
	// (another identity is told they do not exist) and Clients limits apply
	// per identity.
	APITokens map[string]string
	// Clients limits what one identified client may hold (0: no limit).
	Clients ClientLimits
	// LocalExperts computes the routed experts in process instead of on expert
	// nodes (single-node mode and the in-process baseline).
	LocalExperts bool
	// KVDType is the element type of the sessions' KV caches: BF16 (the
	// default: half the KV memory per token; logits move by up to ~1e-3 of
	// their scale), Q8_0 (8.5 bits a value, 53% of BF16; see
	// docs/kv-dtype.md for what it moves) or F32 (exact). The zero value is
	// hybrid.DefaultKVDType.
	KVDType tensor.DType
	// Mmap reads the trunk's weight matrices through the file's memory map
	// (shared through the page cache, nothing copied at start) instead of
	// copying them into anonymous memory, the default, which decodes 14-42%
	// faster (hybrid.LoadOptions.NoMmap; docs/performance.md: Memory-mapped
	// or copied weights).
	Mmap bool

	PublicTLS rpc.TLSFiles // TLS of the public API (plaintext when empty)
	PeerTLS   rpc.TLSFiles // mutual TLS to expert nodes (plaintext when empty)

	Memory MemoryConfig
	// Replication keeps copies of sessions on other trunks (replica.go).
	Replication ReplicationConfig
	// Tier writes idle sessions to a local directory (tier.go).
	Tier     TierConfig
	Sched    SchedConfig
	Limits   Limits
	Dispatch DispatchConfig

	// Tracing is the node's tracer provider (default: from OTEL_* environment).
	Tracing *telemetry.Tracing
	// StepTracing samples forward steps for traces.
	StepTracing StepTracing
	// ExpertDetail adds per-(layer, expert) activation series (high cardinality).
	ExpertDetail bool
	// SnapshotKey, when set, signs exported session snapshots (HMAC-SHA256) and
	// makes imports accept only snapshots signed with it: give every trunk of a
	// cluster the same key (at least 16 bytes).
	SnapshotKey []byte

	// SpinWait is how long the compute threads keep polling for the next
	// product before they park (kernels.SetSpinWait, a process-wide setting
	// the trunk command applies; `switchyard up`, whose nodes share one
	// process, applies its own --spin-wait of the same default). While a step waits for the expert nodes (a millisecond or
	// so a layer) the threads would park, and the next layer's products
	// would start on the caller alone until a woken thread arrives (50 µs to
	// 1 ms on a virtual machine) or, under a millisecond of work, not use
	// it at all. The cost is the threads polling for up to SpinWait after
	// each product. Default 5 ms; 0: the kernels' default.
	SpinWait time.Duration

	MaxRecvBytes int           // largest public request message
	RatePerSec   float64       // new public calls per second (0: unlimited)
	DrainTimeout time.Duration // graceful drain budget on shutdown
	LoadInterval time.Duration // how often activation counts are reported to etcd
}

// ClientLimits bound one client identity, so a flood from one client is
// refused for that client only.
type ClientLimits struct {
	MaxSessions int // sessions held at once
	MaxInflight int // generations running or queued at once
	MaxStreams  int // streaming calls open at once
}

// DefaultConfig returns production defaults; the session memory budgets are
// sized from the memory available to the process (defaultMemory).
func DefaultConfig() Config {
	ac := agent.DefaultConfig()
	ac.NodeID = "trunk-0"
	rec, kv := defaultMemory()
	// The pool of dropped sessions' memory sits outside the budgets: at most
	// an eighth of them by default (256 MiB from 2 GiB of budgets up).
	pool := min(int64(hybrid.DefaultStatePoolLimit), (rec+kv)/8)
	return Config{
		Config:      ac,
		Listen:      "127.0.0.1:7070",
		Memory:      MemoryConfig{RecurrentBytes: rec, KVBytes: kv, IdleTTL: 30 * time.Minute, StatePoolBytes: pool},
		Replication: ReplicationConfig{Replicas: 1},
		KVDType:     hybrid.DefaultKVDType,
		Sched:       SchedConfig{MaxRunning: 64, MaxTokensPerStep: 512, MaxQueue: 1024, DecodePrefillTokens: 128, PingPongMinRows: DefaultPingPongMinRows},
		Limits:      Limits{MaxContext: 131072, MaxNewTokens: 8192, MaxPromptText: 4 << 20, MaxStops: 16},
		Dispatch: DispatchConfig{Timeout: 5 * time.Second, Deadline: 30 * time.Second, MaxMsgBytes: 16 << 20, WireDType: pb.WireDType_WIRE_DTYPE_BF16,
			Deterministic: true, HedgeFactor: 8, HedgeMin: 200 * time.Millisecond},
		MaxRecvBytes: 8 << 20, RatePerSec: 0, DrainTimeout: 30 * time.Second, Clients: ClientLimits{MaxSessions: 1024, MaxInflight: 64, MaxStreams: 128},
		StepTracing: StepTracing{Ratio: 0.01, SlowThreshold: 500 * time.Millisecond}, LoadInterval: 2 * time.Second,
		SpinWait: 5 * time.Millisecond,
	}
}

// AddFlags registers the trunk node's flags (and the shared ones) on fs.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	c.Config.AddFlags(fs, "")
	fs.StringVar(&c.Listen, "listen", c.Listen, "public API address")
	fs.DurationVar(&c.SpinWait, "spin-wait", c.SpinWait, "how long idle compute threads poll for the next product before parking (a layer's wait for the expert nodes should fit; 0: 200µs)")
	fs.StringVar(&c.HTTPListen, "http-listen", c.HTTPListen, "OpenAI-compatible HTTP API address (empty: off)")
	fs.StringVar(&c.ChatTemplate, "chat-template", c.ChatTemplate, "Jinja chat template file (.jinja or tokenizer_config.json) replacing the model's own")
	fs.Int64Var(&c.PrefixCacheBytes, "prefix-cache-bytes", c.PrefixCacheBytes, "bytes of state checkpoints kept for shared prompt prefixes (0: off)")
	fs.StringVar(&c.ModelPath, "model", c.ModelPath, "model: Hugging Face folder or .gguf (required)")
	fs.StringVar(&c.APIToken, "api-token", os.Getenv("SWITCHYARD_API_TOKEN"), "require this bearer token on the public API (default $SWITCHYARD_API_TOKEN)")
	fs.Func("api-tokens-file", "file of client tokens, one \"<identity> <token>\" per line: each client's sessions are its own and limits apply per client", func(p string) error {
		m, err := readTokens(p)
		if err != nil {
			return err
		}
		c.APITokens = m
		return nil
	})
	fs.IntVar(&c.Clients.MaxSessions, "client-max-sessions", c.Clients.MaxSessions, "sessions one identified client may hold (0: no limit)")
	fs.IntVar(&c.Clients.MaxInflight, "client-max-inflight", c.Clients.MaxInflight, "generations one identified client may have in flight (0: no limit)")
	fs.IntVar(&c.Clients.MaxStreams, "client-max-streams", c.Clients.MaxStreams, "streaming calls one identified client may have open (0: no limit)")
	fs.BoolVar(&c.LocalExperts, "local-experts", c.LocalExperts, "compute experts in process (no expert nodes)")
	tlsFlags(fs, &c.PublicTLS, "tls-", "public API")
	tlsFlags(fs, &c.PeerTLS, "peer-tls-", "node-to-node")
	fs.Int64Var(&c.Memory.RecurrentBytes, "recurrent-budget", c.Memory.RecurrentBytes, "bytes for sessions' recurrent state")
	fs.Int64Var(&c.Memory.KVBytes, "kv-budget", c.Memory.KVBytes, "bytes for sessions' KV caches")
	fs.Int64Var(&c.Memory.StatePoolBytes, "state-pool-bytes", c.Memory.StatePoolBytes, "bytes of dropped sessions' memory (recurrent buffers and KV pages) kept for new sessions, outside the budgets (a new session takes them instead of faulting fresh memory in during its first prefill; 0: none; default 256 MiB or an eighth of the default budgets, whichever is less)")
	fs.IntVar(&c.Replication.Replicas, "session-replicas", c.Replication.Replicas, "copies of each session kept on other trunks after every turn, so a trunk's death loses no finished turn (needs --snapshot-key and etcd; 0: none)")
	fs.Int64Var(&c.Replication.MaxBytes, "replica-budget", c.Replication.MaxBytes, "bytes of memory for the copies of other trunks' sessions (0: a quarter of the session budgets)")
	fs.StringVar(&c.Tier.Dir, "offload-dir", c.Tier.Dir, "directory for sessions written out of memory (idle ones, and the least recently used under memory pressure); a restarted trunk serves the sessions found there (empty: off)")
	fs.DurationVar(&c.Tier.After, "offload-after", c.Tier.After, "with --offload-dir, write sessions idle this long to disk (0: only under memory pressure)")
	fs.Int64Var(&c.Tier.DiskBytes, "offload-disk-bytes", c.Tier.DiskBytes, "with --offload-dir, bytes of session files kept (the longest idle dropped first; 0: no limit)")
	fs.DurationVar(&c.Memory.IdleTTL, "session-ttl", c.Memory.IdleTTL, "idle sessions are deleted after this")
	fs.IntVar(&c.Sched.MaxRunning, "max-running", c.Sched.MaxRunning, "sessions advanced together per step")
	fs.IntVar(&c.Sched.MaxTokensPerStep, "max-step-tokens", c.Sched.MaxTokensPerStep, "token budget per step")
	fs.IntVar(&c.Sched.DecodePrefillTokens, "decode-prefill-tokens", c.Sched.DecodePrefillTokens, "prompt tokens prefilled per step while other sessions decode (bounds a long prompt's effect on their inter-token latency; 0: up to --max-step-tokens)")
	fs.BoolVar(&c.Sched.PingPong, "ping-pong", c.Sched.PingPong, "overlap expert dispatch with trunk compute by splitting big steps (--ping-pong-min-rows) into two micro-batches")
	fs.IntVar(&c.Sched.PingPongMinRows, "ping-pong-min-rows", c.Sched.PingPongMinRows, "with --ping-pong, the fewest rows (decode tokens and prompt tokens) of a step that is split: each micro-batch reads the trunk's weights again, which costs more than the overlap gains while a step is bound by reading them")
	fs.IntVar(&c.Limits.MaxContext, "max-context", c.Limits.MaxContext, "tokens a session may hold")
	fs.IntVar(&c.Limits.MaxNewTokens, "max-new-tokens", c.Limits.MaxNewTokens, "upper bound for max_tokens")
	fs.Float64Var(&c.RatePerSec, "rate-limit", c.RatePerSec, "new public calls per second (0: unlimited)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "graceful drain budget on SIGTERM")
	fs.Float64Var(&c.StepTracing.Ratio, "trace-step-ratio", c.StepTracing.Ratio, "fraction of forward steps traced (with OTEL_EXPORTER_OTLP_ENDPOINT set)")
	fs.DurationVar(&c.StepTracing.SlowThreshold, "trace-slow-step", c.StepTracing.SlowThreshold, "always trace forward steps slower than this (0: off)")
	fs.BoolVar(&c.ExpertDetail, "expert-metrics-detail", c.ExpertDetail, "export per-(layer, expert) activation series (high cardinality)")
	fs.Func("snapshot-key", "the cluster's key for signing session snapshots (prefer $SWITCHYARD_SNAPSHOT_KEY or --snapshot-key-file; at least 16 bytes)", func(s string) error {
		if len(s) < 16 {
			return fmt.Errorf("the snapshot key must be at least 16 bytes, got %d", len(s))
		}
		c.SnapshotKey = []byte(s)
		return nil
	})
	fs.Func("snapshot-key-file", "file holding the cluster's snapshot key (as --snapshot-key)", func(p string) error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b = bytes.TrimSpace(b)
		if len(b) < 16 {
			return fmt.Errorf("the snapshot key in %s must be at least 16 bytes, got %d", p, len(b))
		}
		c.SnapshotKey = b
		return nil
	})
	fs.Func("kv-dtype", "element type of the sessions' KV caches: bf16 (half the KV memory), q8_0 (8.5 bits a value, 53% of bf16: llama.cpp's q8_0 cache; heads of multiples of 32) or f32 (exact) (default bf16)", func(s string) error {
		dt, err := hybrid.ParseKVDType(s)
		if err != nil {
			return err
		}
		c.KVDType = dt
		return nil
	})
	fs.BoolVar(&c.Mmap, "mmap", c.Mmap, "read the weight matrices through the file's memory map (page cache, shared, nothing copied at start) instead of copying them into anonymous memory with transparent huge pages (the default: faster decode, anonymous memory the size of the weights)")
	fs.BoolVar(&c.Dispatch.Deterministic, "deterministic", c.Dispatch.Deterministic, "the same tokens whatever the batch and expert placement: batch-invariant kernels (expert nodes need it too: it is their default), and each expert's output sent back on its own and added in expert-id order; --deterministic=false: the one- and two-row kernels that round differently (faster on CPUs without AVX-512 BF16) and one sum per row and node on the wire (a third of the bytes back with top-6 on 2 nodes)")
	fs.Func("wire-dtype", "element type of rows sent to expert nodes: bf16 (half the bytes) or f32 (exact) (default bf16)", func(s string) error {
		switch s {
		case "bf16":
			c.Dispatch.WireDType = pb.WireDType_WIRE_DTYPE_BF16
		case "f32":
			c.Dispatch.WireDType = pb.WireDType_WIRE_DTYPE_F32
		default:
			return fmt.Errorf("want bf16 or f32, got %q", s)
		}
		return nil
	})
}

func tlsFlags(fs *flag.FlagSet, f *rpc.TLSFiles, prefix, what string) {
	fs.StringVar(&f.Cert, prefix+"cert", f.Cert, what+" certificate (PEM)")
	fs.StringVar(&f.Key, prefix+"key", f.Key, what+" private key (PEM)")
	fs.StringVar(&f.CA, prefix+"ca", f.CA, what+" CA bundle (PEM); enables mutual TLS on servers")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	switch {
	case c.ModelPath == "":
		return errors.New("trunknode: model path is required")
	case len(c.Etcd) == 0 && !c.LocalExperts:
		return errors.New("trunknode: etcd endpoints are required unless experts run locally")
	case c.Memory.RecurrentBytes <= 0 || c.Memory.KVBytes <= 0:
		return errors.New("trunknode: memory budgets must be positive")
	case c.Limits.MaxContext <= 0 || c.Limits.MaxNewTokens <= 0:
		return errors.New("trunknode: context and max-new-token limits must be positive")
	case c.PrefixCacheBytes < 0:
		return errors.New("trunknode: the prefix cache size must be >= 0")
	case c.Memory.StatePoolBytes < 0:
		return errors.New("trunknode: --state-pool-bytes must be >= 0")
	case c.SpinWait < 0:
		return errors.New("trunknode: the spin wait must be >= 0")
	case c.Sched.PingPongMinRows < 2:
		return fmt.Errorf("trunknode: --ping-pong-min-rows is %d: a step of fewer than 2 rows cannot be split", c.Sched.PingPongMinRows)
	}
	return nil
}

// listen returns the configured listener address's listener.
func (c *Config) listen() (net.Listener, error) {
	lis, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("trunknode: listen: %w", err)
	}
	return lis, nil
}

// readTokens reads a tokens file: "<identity> <token>" per line, # comments.
func readTokens(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		switch {
		case len(f) != 2:
			return nil, fmt.Errorf("%s:%d: want \"<identity> <token>\"", path, i+1)
		case len(f[1]) < 16:
			return nil, fmt.Errorf("%s:%d: the token of %q is shorter than 16 characters", path, i+1, f[0])
		}
		if prev, dup := out[f[1]]; dup {
			return nil, fmt.Errorf("%s:%d: %q and %q share a token", path, i+1, prev, f[0])
		}
		out[f[1]] = f[0]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no tokens", path)
	}
	return out, nil
}
