package expertnode

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

var (
	// ErrClosed reports use of a closed Node.
	ErrClosed = errors.New("expertnode: node closed")
	// ErrNotReady reports a chunk that arrived before the first assignment loaded.
	ErrNotReady = errors.New("expertnode: not ready (no assignment loaded)")
	// ErrAssignment reports a routing table this node cannot apply.
	ErrAssignment = errors.New("expertnode: bad assignment")
	// ErrStaleTable reports a routing table older than the one applied.
	ErrStaleTable = errors.New("expertnode: stale routing table")
)

// serviceName is the health-service name of ExpertService.
var serviceName = pb.ExpertService_ServiceDesc.ServiceName

// Node serves the experts assigned to it. It is safe for concurrent use.
//
// Locking: loadMu serialises SetAssignment (loading is slow and is done without
// mu); mu guards cur, version and closed. The compute goroutine owns its scratch
// buffers; the queue and the stats have their own locks.
type Node struct {
	cfg    Config
	health *health.Server
	hooks  hooks

	loadMu sync.Mutex

	mu      sync.Mutex
	cur     *shard // guarded by mu; nil until the first assignment and after Close
	version uint64 // guarded by mu; routing-table version of cur
	closed  bool   // guarded by mu

	q     queue
	stats stats

	metrics *nodeMetrics
	tracer  trace.Tracer        // nil unless tracing is enabled
	gpu     *gpu                // nil on the CPU
	experts *hybrid.ExpertCache // the copied experts the assignments share (CPU, without Config.Mmap)

	fatal    chan error // one error when the GPU is lost (buffered)
	lostOnce sync.Once
	lost     atomic.Bool // the GPU is lost: never SERVING again

	metricsAddr atomic.Value // string: the bound /metrics address (Run)

	stop     chan struct{} // closed by Close: ends the compute loop
	loopDone chan struct{} // closed when the compute loop has returned
}

// hooks are test seams; all nil in production.
type hooks struct {
	// roundStart runs in the compute goroutine at the start of a round, after the
	// round has acquired its shard and before it takes the queued chunks.
	roundStart func()
}

// New validates cfg and starts the node's compute goroutine. The node is not
// ready (health NOT_SERVING) until SetAssignment succeeds.
func New(cfg Config) (*Node, error) { return newNode(cfg, hooks{}) }

func newNode(cfg Config, h hooks) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.ModelPath); err != nil {
		return nil, fmt.Errorf("%w: ModelPath: %w", ErrConfig, err)
	}
	if cfg.Deterministic {
		kernels.SetBatchInvariant(true) // process-wide, only ever turned on
	}
	n := &Node{
		cfg:      cfg,
		health:   health.NewServer(),
		hooks:    h,
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),
		fatal:    make(chan error, 1),
	}
	reg := cfg.Registry
	if reg == nil {
		reg = telemetry.NewRegistry()
	}
	n.metrics = newNodeMetrics(reg, cfg.NodeID)
	if mc, err := config.ReadCheckpoint(cfg.ModelPath); err == nil {
		telemetry.RegisterModelInfo(reg, cfg.NodeID, config.ModelName(cfg.ModelPath), mc.Layers, mc.Experts)
	}
	if kind, _, _ := ParseDevice(cfg.Device); kind != "cpu" {
		g, err := openGPU(cfg, reg)
		if err != nil {
			return nil, err
		}
		n.gpu = g
	}
	if cfg.Tracing != nil && cfg.Tracing.Enabled {
		n.tracer = cfg.Tracing.Tracer()
	}
	n.experts = hybrid.NewExpertCache()
	n.q.init()
	n.setServing(false)
	go n.computeLoop()
	return n, nil
}

// ServerOptions returns the grpc.Server options the node's limits need (the
// maximum message sizes) and the node-to-node flow-control windows
// (rpc.PeerServerOptions). Pass them to grpc.NewServer before Register.
func (n *Node) ServerOptions() []grpc.ServerOption {
	return append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(n.cfg.MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(n.cfg.MaxRecvMsgBytes),
	}, rpc.PeerServerOptions()...)
}

// Register registers ExpertService and the standard gRPC health service (for ""
// and "switchyard.v1.ExpertService", SERVING only while the node is ready) on s.
func (n *Node) Register(s *grpc.Server) {
	pb.RegisterExpertServiceServer(s, &service{node: n})
	healthpb.RegisterHealthServer(s, n.health)
}

func (n *Node) setServing(ok bool) {
	ok = ok && !n.lost.Load()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	n.health.SetServingStatus("", st)
	n.health.SetServingStatus(serviceName, st)
	if n.metrics != nil {
		v := 0.0
		if ok {
			v = 1
		}
		n.metrics.ready.Set(v)
	}
}

// Ready reports whether an assignment is loaded and the node is not closed.
func (n *Node) Ready() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cur != nil && !n.closed
}

// SetAssignment loads the experts t assigns to this node (t.Assigned(NodeID))
// and swaps them in atomically: chunks already being computed finish on the old
// set, whose mapping is closed once no round uses it. It records t.Version and
// marks the node ready. A table older than the applied one is refused with
// ErrStaleTable; the same version again is a no-op. A new table with the same
// assignment only records the version, without reloading.
func (n *Node) SetAssignment(t *routing.Table) error {
	if t == nil {
		return fmt.Errorf("%w: nil routing table", ErrAssignment)
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrAssignment, err)
	}
	n.loadMu.Lock()
	defer n.loadMu.Unlock()
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		return ErrClosed
	}

	want := t.Assigned(n.cfg.NodeID)
	old, version := n.acquire()
	if old != nil {
		defer old.release()
		switch {
		case t.Version < version:
			return fmt.Errorf("%w: version %d, node has %d", ErrStaleTable, t.Version, version)
		case t.Version == version:
			return nil
		case maps.Equal(want, old.assigned):
			old.refs.Add(1) // install takes over a reference
			return n.install(old, t.Version)
		}
	}
	sh, err := n.load(t, want)
	if err != nil {
		return err
	}
	return n.install(sh, t.Version)
}

// load maps the checkpoint keeping only the assigned experts.
func (n *Node) load(t *routing.Table, want map[[2]int]bool) (*shard, error) {
	opt := hybrid.LoadOptions{KeepExpert: func(layer, expert int) bool { return want[[2]int{layer, expert}] }}
	if n.gpu == nil && !n.cfg.Mmap {
		opt.NoMmap, opt.ExpertCache = true, n.experts
	}
	m, _, err := hybrid.Open(n.cfg.ModelPath, opt) // the model's Close closes the file
	if err != nil {
		return nil, fmt.Errorf("expertnode: load assignment of table version %d: %w", t.Version, err)
	}
	c := m.Cfg
	if t.Layers != c.Layers || t.Experts != c.Experts {
		m.Close()
		return nil, fmt.Errorf("%w: table version %d is for %d layers x %d experts, model has %d x %d",
			ErrAssignment, t.Version, t.Layers, t.Experts, c.Layers, c.Experts)
	}
	sh := newShard(m, want)
	if n.gpu != nil {
		// Make-before-break: the new experts are on the GPU before the node
		// reports the table ready; experts kept from the previous assignment are
		// shared with it, not copied.
		held, err := n.gpu.acquire(m, want)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%w: table version %d on %s: %w", ErrAssignment, t.Version, n.cfg.Device, err)
		}
		sh.gpu, sh.gpuKeys = n.gpu, held
	}
	return sh, nil
}

// install makes sh (with the caller's reference, which it takes over) current
// at table version v, and drops the node's reference to the previous shard.
func (n *Node) install(sh *shard, v uint64) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		sh.release()
		return ErrClosed
	}
	old := n.cur
	n.cur, n.version = sh, v
	n.mu.Unlock()
	if old != nil {
		old.release() // a retired mapping that fails to unmap is not this table's fault
	}
	n.setServing(true)
	return nil
}

// acquire returns the current shard with a reference taken (nil before the
// first assignment) and the table version it comes from. The caller releases it.
func (n *Node) acquire() (*shard, uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cur == nil {
		return nil, n.version
	}
	n.cur.refs.Add(1) // safe: the node's own reference keeps refs > 0 while n.mu is held
	return n.cur, n.version
}

// Close marks the node not ready, stops the compute goroutine (after its current
// round), answers the still-queued chunks with an error, and closes the model
// mapping. It returns the error of closing the mapping, if any. Calling it again
// does nothing.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.health.Shutdown() // NOT_SERVING for every service, and stays so
	close(n.stop)
	<-n.loopDone
	for _, j := range n.q.close() {
		j.fail(ErrClosed)
	}
	n.loadMu.Lock() // wait for a SetAssignment in progress; it sees closed and drops its shard
	defer n.loadMu.Unlock()
	n.mu.Lock()
	sh := n.cur
	n.cur = nil
	n.mu.Unlock()
	var errs []error
	if sh != nil {
		errs = append(errs, sh.release())
	}
	if n.gpu != nil {
		errs = append(errs, n.gpu.close())
	}
	return errors.Join(errs...)
}

// shard is one loaded assignment: the checkpoint mapping with only the
// assigned experts' weights. refs counts the node's reference (while current)
// plus one per compute round or reader using it; the mapping is closed when it
// drops to zero.
type shard struct {
	model    *hybrid.Model
	assigned map[[2]int]bool
	loaded   int // (layer, expert) pairs with weights

	// gpu and gpuKeys: the experts this shard holds references to on the GPU.
	gpu     *gpu
	gpuKeys [][2]int

	refs atomic.Int64
	// closed is closed once the mapping has been released (tests watch it).
	closed chan struct{}
}

func newShard(m *hybrid.Model, assigned map[[2]int]bool) *shard {
	loaded := 0
	for _, lw := range m.W.Layers {
		for _, ew := range lw.Experts {
			if ew.Gate.Data != nil {
				loaded++
			}
		}
	}
	s := &shard{model: m, assigned: assigned, loaded: loaded, closed: make(chan struct{})}
	s.refs.Store(1)
	return s
}

// release drops one reference; the last one closes the mapping.
func (s *shard) release() error {
	switch r := s.refs.Add(-1); {
	case r > 0:
		return nil
	case r < 0:
		panic("expertnode: shard released more often than acquired")
	}
	defer close(s.closed)
	var errs []error
	if s.gpu != nil {
		if err := s.gpu.release(s.gpuKeys); err != nil {
			errs = append(errs, fmt.Errorf("expertnode: release GPU experts: %w", err))
		}
	}
	if err := s.model.Close(); err != nil {
		errs = append(errs, fmt.Errorf("expertnode: close model mapping: %w", err))
	}
	return errors.Join(errs...)
}
