package trunknode

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// metrics are the trunk's Prometheus series (names shared with the Grafana
// dashboard in deploy/helm). Latency histograms carry trace-id exemplars.
type metrics struct {
	reg *prometheus.Registry

	ttft, itl, e2e, queue *prometheus.HistogramVec
	genTokens, promptTok  prometheus.Counter
	requests              *prometheus.CounterVec
	apiCalls              *prometheus.CounterVec
	stateLimit, budgetUse *prometheus.GaugeVec
	capacity              *prometheus.GaugeVec
	sessions              *prometheus.GaugeVec
	stateBytes            *prometheus.GaugeVec
	stepSec, stepRows     prometheus.Histogram
	rtt                   *prometheus.HistogramVec
	dRows, dRetries       *prometheus.CounterVec
	dBytes                *prometheus.CounterVec
	activations           *prometheus.CounterVec
	detail                *prometheus.CounterVec // per (layer, expert); nil unless enabled
	tableVersion          prometheus.Gauge
	rss                   *prometheus.GaugeVec
	replicas              prometheus.Gauge
	imbalance             *prometheus.GaugeVec
	transfers             *prometheus.CounterVec // session snapshots by direction and result
	transferBytes         *prometheus.CounterVec

	mu       sync.Mutex
	steps    uint64
	rowsSum  uint64
	busy     time.Duration
	perNode  map[string]float64 // pairs per node since start (observed imbalance)
	lastImbT time.Time
}

func newMetrics(reg *prometheus.Registry, node string, expertDetail bool) *metrics {
	cl := prometheus.Labels{"node_id": node}
	h := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: telemetry.LatencyBuckets, ConstLabels: cl}, labels)
	}
	hr := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: telemetry.RequestLatencyBuckets, ConstLabels: cl}, labels)
	}
	m := &metrics{reg: reg, perNode: map[string]float64{},
		ttft:      hr("switchyard_time_to_first_token_seconds", "Time to first token: request admission queue + prefill + first sample.", "api"),
		itl:       hr("switchyard_inter_token_latency_seconds", "Inter-token latency between consecutive generated tokens of a request.", "api"),
		e2e:       hr("switchyard_request_duration_seconds", "End-to-end request latency, from arrival to the final message.", "api"),
		queue:     hr("switchyard_queue_wait_seconds", "Time a request waited before the scheduler admitted it.", "api"),
		genTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_generated_tokens_total", Help: "Generated tokens.", ConstLabels: cl}),
		promptTok: prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_prompt_tokens_total", Help: "Prompt tokens prefilled.", ConstLabels: cl}),
		requests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_requests_total", Help: "Finished generations by finish reason: stop, length, cancelled (by the client) or error.", ConstLabels: cl}, []string{"reason"}),
		apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_api_requests_total",
			Help: "Public RPCs by method and gRPC status code, refused ones included (authentication, rate limit, validation).", ConstLabels: cl}, []string{"method", "code"}),
		stateLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_session_state_limit_bytes", Help: "Session memory budget: recurrent and kv.", ConstLabels: cl}, []string{"kind"}),
		budgetUse: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_session_budget_usage_ratio",
			Help: "Session memory in use over its budget (0..1), recurrent and kv: the trunk refuses new sessions near 1 (scale out on it).", ConstLabels: cl}, []string{"kind"}),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_scheduler_capacity",
			Help: "Scheduler limits: running (sessions advanced per step) and waiting (queued requests before RESOURCE_EXHAUSTED).", ConstLabels: cl}, []string{"kind"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_sessions", Help: "Sessions by state: running (in the batch), waiting (queued), held (stored).", ConstLabels: cl}, []string{"state"}),
		stateBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_session_state_bytes", Help: "Session memory in use: recurrent (Mamba conv+SSM, fixed per session) and kv (attention cache pages, each counted once, incl. reservations); prefix-cache checkpoints included (switchyard_prefix_cache_bytes).", ConstLabels: cl},
			[]string{"kind"}),
		stepSec:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchyard_step_seconds", Help: "Duration of one batched forward step.", Buckets: telemetry.LatencyBuckets, ConstLabels: cl}),
		stepRows: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchyard_step_rows", Help: "Token rows per forward step.", Buckets: prometheus.ExponentialBuckets(1, 2, 14), ConstLabels: cl}),
		rtt:      h("switchyard_dispatch_rtt_seconds", "Round trip of one MoE layer dispatch to one expert node (the routing tail).", "node"),
		dRows:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_dispatch_rows_total", Help: "Token rows sent to each expert node.", ConstLabels: cl}, []string{"node"}),
		dRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_dispatch_failures_total", Help: "Failed node calls (retried on another replica).", ConstLabels: cl}, []string{"node"}),
		dBytes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_dispatch_bytes_total", Help: "Payload bytes exchanged with each expert node.", ConstLabels: cl}, []string{"node", "direction"}),
		activations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_expert_activations_total", Help: "Routed (row, expert) pairs computed, per layer and expert node.", ConstLabels: cl},
			[]string{"layer", "node"}),
		rss: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_trunk_resident_bytes",
			Help: "Resident memory of the trunk process: anon (heap: session state, buffers) and file (checkpoint pages mapped and touched).", ConstLabels: cl}, []string{"kind"}),
		tableVersion: prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_routing_table_version", Help: "Version of the routing table in use.", ConstLabels: cl}),
		replicas:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_expert_replicas", Help: "Expert replicas in the routing table in use.", ConstLabels: cl}),
		imbalance: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "switchyard_placement_imbalance", Help: "Max/mean expert-node load: predicted by the placement, observed by this trunk.", ConstLabels: cl},
			[]string{"kind"}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_session_transfers_total",
			Help: "Session snapshots sent (export) and received (import), by gRPC result code.", ConstLabels: cl}, []string{"direction", "code"}),
		transferBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_session_transfer_bytes_total",
			Help: "Bytes of session snapshots that were fully sent (export) or taken (import).", ConstLabels: cl}, []string{"direction"}),
	}
	for _, k := range []string{"recurrent", "kv"} {
		m.stateBytes.WithLabelValues(k).Set(0)
	}
	for _, st := range []string{"running", "waiting", "held"} {
		m.sessions.WithLabelValues(st).Set(0)
	}
	if expertDetail {
		m.detail = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_expert_activations_detail_total", Help: "Routed rows per (layer, expert) (opt-in: high cardinality).", ConstLabels: cl}, []string{"layer", "expert"})
		reg.MustRegister(m.detail)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_state_pool_bytes",
		Help: "Memory of dropped sessions (recurrent buffers and KV pages) kept for new sessions (--state-pool-bytes), outside the session budgets.", ConstLabels: cl},
		func() float64 { return float64(hybrid.StatePoolBytes()) }))
	reg.MustRegister(m.ttft, m.itl, m.e2e, m.queue, m.genTokens, m.promptTok, m.requests, m.sessions, m.stateBytes,
		m.stepSec, m.stepRows, m.rtt, m.dRows, m.dRetries, m.dBytes, m.activations, m.tableVersion, m.replicas, m.imbalance, m.rss,
		m.transfers, m.transferBytes, m.apiCalls, m.stateLimit, m.budgetUse, m.capacity)
	return m
}

func (m *metrics) step(rows int, d time.Duration) {
	m.stepSec.Observe(d.Seconds())
	m.stepRows.Observe(float64(rows))
	m.mu.Lock()
	m.steps++
	m.rowsSum += uint64(rows)
	m.busy += d
	m.mu.Unlock()
}

func (m *metrics) admitted(j *Job) {
	telemetry.Observe(m.queue.WithLabelValues(j.api), j.ctx, time.Since(j.enqueued).Seconds())
}

func (m *metrics) token(j *Job, now time.Time) {
	m.genTokens.Inc()
	if j.lastToken.IsZero() {
		telemetry.Observe(m.ttft.WithLabelValues(j.api), j.ctx, now.Sub(j.enqueued).Seconds())
	} else {
		telemetry.Observe(m.itl.WithLabelValues(j.api), j.ctx, now.Sub(j.lastToken).Seconds())
	}
}

func (m *metrics) jobFinished(j *Job, f *Final) {
	reason := f.Reason
	if f.Err != nil && j.ctx.Err() == nil {
		reason = "error" // the server failed it; the client did not go away
	}
	m.requests.WithLabelValues(reason).Inc()
	m.promptTok.Add(float64(f.PromptTokens))
	telemetry.Observe(m.e2e.WithLabelValues(j.api), j.ctx, time.Since(j.enqueued).Seconds())
}

// dispatched records one node call of a layer dispatch.
func (m *metrics) dispatched(c CallInfo) {
	ctx := c.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if c.Err != nil {
		m.dRetries.WithLabelValues(c.Node).Inc()
		return
	}
	telemetry.Observe(m.rtt.WithLabelValues(c.Node), ctx, c.RTT.Seconds())
	m.dRows.WithLabelValues(c.Node).Add(float64(c.Rows))
	m.dBytes.WithLabelValues(c.Node, "out").Add(float64(c.BytesOut))
	m.dBytes.WithLabelValues(c.Node, "in").Add(float64(c.BytesIn))
	m.activations.WithLabelValues(strconv.Itoa(c.Layer), c.Node).Add(float64(c.Pairs))
	m.mu.Lock()
	m.perNode[c.Node] += float64(c.Pairs)
	if time.Since(m.lastImbT) > time.Second {
		m.lastImbT = time.Now()
		var mx, sum float64
		for _, v := range m.perNode {
			mx = max(mx, v)
			sum += v
		}
		if sum > 0 {
			m.imbalance.WithLabelValues("observed").Set(mx / (sum / float64(len(m.perNode))))
		}
	}
	m.mu.Unlock()
}

// StepStats returns the number of forward steps, rows and time spent in them.
func (n *Node) StepStats() (steps, rows uint64, busy time.Duration) {
	m := n.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.steps, m.rowsSum, m.busy
}

// Registry is the node's metrics registry.
func (n *Node) Registry() *prometheus.Registry { return n.metrics.reg }

// residentBytes reads the process's anonymous and file-backed resident memory
// (Linux /proc/self/status; zeros elsewhere).
func residentBytes() (anon, file int64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "RssAnon:":
			anon = kb << 10
		case "RssFile:":
			file = kb << 10
		}
	}
	return anon, file
}

// watchDispatch registers the time forward steps spent blocked on expert
// nodes (DispatchStats.WaitNanos), read at each scrape.
func (m *metrics) watchDispatch(node string, d *Dispatcher) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_dispatch_wait_seconds_total",
		Help:        "Time forward steps spent blocked on expert nodes after the trunk's own work of each MoE layer (the shared expert): the remote experts' cost beyond what the trunk overlaps (with --ping-pong, the other micro-batch computes meanwhile).",
		ConstLabels: prometheus.Labels{"node_id": node}},
		func() float64 { return float64(d.Stats().WaitNanos.Load()) / 1e9 }))
}

// watchPrefix registers the prefix cache's series, read from the store at
// each scrape: lookups and hits (hit rate = hits / lookups), prompt tokens
// not prefilled, checkpoints stored and evicted (for the cache's own budget,
// or yielding room to sessions), and the memory the checkpoints hold.
func (m *metrics) watchPrefix(node string, st *Store) {
	cl := func(extra ...string) prometheus.Labels {
		l := prometheus.Labels{"node_id": node}
		for i := 0; i+1 < len(extra); i += 2 {
			l[extra[i]] = extra[i+1]
		}
		return l
	}
	counter := func(name, help string, labels prometheus.Labels, v func(PrefixStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v(st.PrefixStats())) })
	}
	gauge := func(name, help string, labels prometheus.Labels, v func(PrefixStats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return v(st.PrefixStats()) })
	}
	const evHelp = "Prefix-cache checkpoints evicted: for the cache's own budget (budget) or to make room for sessions (pressure)."
	const bHelp = "Memory held by prefix-cache checkpoints: recurrent (conv+SSM copies) and kv (distinct pages, some shared with running sessions)."
	m.reg.MustRegister(
		counter("switchyard_prefix_cache_lookups_total", "Stateless prompts longer than a block looked up in the prefix cache.", cl(),
			func(s PrefixStats) uint64 { return s.Lookups }),
		counter("switchyard_prefix_cache_hits_total", "Lookups that resumed from a prefix-cache checkpoint.", cl(),
			func(s PrefixStats) uint64 { return s.Hits }),
		counter("switchyard_prefix_cache_saved_tokens_total", "Prompt tokens not prefilled thanks to a prefix-cache checkpoint.", cl(),
			func(s PrefixStats) uint64 { return s.SavedTokens }),
		counter("switchyard_prefix_cache_inserts_total", "Prefix-cache checkpoints stored.", cl(),
			func(s PrefixStats) uint64 { return s.Inserts }),
		counter("switchyard_prefix_cache_evictions_total", evHelp, cl("reason", "budget"),
			func(s PrefixStats) uint64 { return s.Evictions }),
		counter("switchyard_prefix_cache_evictions_total", evHelp, cl("reason", "pressure"),
			func(s PrefixStats) uint64 { return s.Yielded }),
		gauge("switchyard_prefix_cache_entries", "Prefix-cache checkpoints held.", cl(),
			func(s PrefixStats) float64 { return float64(s.Entries) }),
		gauge("switchyard_prefix_cache_bytes", bHelp, cl("kind", "recurrent"),
			func(s PrefixStats) float64 { return float64(s.RecurrentBytes) }),
		gauge("switchyard_prefix_cache_bytes", bHelp, cl("kind", "kv"),
			func(s PrefixStats) float64 { return float64(s.KVBytes) }),
		gauge("switchyard_prefix_cache_limit_bytes", "Prefix-cache budget (--prefix-cache-bytes; 0: off).", cl(),
			func(s PrefixStats) float64 { return float64(s.LimitBytes) }),
	)
}

// transfer records one ExportSession or ImportSession call.
func (m *metrics) transfer(direction string, err error, bytes int64) {
	m.transfers.WithLabelValues(direction, status.Code(err).String()).Inc()
	if err == nil {
		m.transferBytes.WithLabelValues(direction).Add(float64(bytes))
	}
}
