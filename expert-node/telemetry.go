package expertnode

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// nodeMetrics are the expert node's Prometheus series.
type nodeMetrics struct {
	reg       *prometheus.Registry
	compute   *prometheus.HistogramVec // per layer
	batchRows prometheus.Histogram
	rows      *prometheus.CounterVec // per layer
	ready     prometheus.Gauge
}

func newNodeMetrics(reg *prometheus.Registry, node string) *nodeMetrics {
	cl := prometheus.Labels{"node_id": node}
	m := &nodeMetrics{reg: reg,
		compute: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "switchyard_expert_compute_seconds",
			Help: "Compute time of one coalesced expert batch.", Buckets: telemetry.LatencyBuckets, ConstLabels: cl}, []string{"layer"}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchyard_expert_batch_rows",
			Help: "Token rows per coalesced batch (rows of all trunk streams computed together).", Buckets: prometheus.ExponentialBuckets(1, 2, 14), ConstLabels: cl}),
		rows:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_expert_rows_total", Help: "Token rows computed per layer.", ConstLabels: cl}, []string{"layer"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_expert_ready", Help: "1 when every assigned expert is loaded.", ConstLabels: cl}),
	}
	reg.MustRegister(m.compute, m.batchRows, m.rows, m.ready)
	return m
}

// Registry is the node's metrics registry (serve it with telemetry.ServeMetrics).
func (n *Node) Registry() *prometheus.Registry { return n.metrics.reg }

// observeBatch records a coalesced batch and opens, for every chunk whose trunk
// sent a sampled trace context, an "expert_compute" span child of the trunk's
// dispatch span (timestamps of the batch).
func (n *Node) observeBatch(layer int, jobs []*job, rows int, start time.Time, d time.Duration) {
	l := strconv.Itoa(layer)
	n.metrics.compute.WithLabelValues(l).Observe(d.Seconds())
	n.metrics.batchRows.Observe(float64(rows))
	n.metrics.rows.WithLabelValues(l).Add(float64(rows))
	if n.tracer == nil {
		return
	}
	for _, j := range jobs {
		tc := j.b.GetTrace()
		if len(tc) == 0 {
			continue
		}
		ctx := telemetry.Propagator.Extract(context.Background(), telemetry.MapCarrier(tc))
		if !trace.SpanContextFromContext(ctx).IsSampled() {
			continue
		}
		_, sp := n.tracer.Start(ctx, "expert_compute", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
			trace.WithAttributes(attribute.Int("layer", layer), attribute.String("expert_node", n.cfg.NodeID),
				attribute.Int("rows", int(j.b.GetRows())), attribute.Int("coalesced_rows", rows), attribute.Int("coalesced_chunks", len(jobs))))
		sp.End(trace.WithTimestamp(start.Add(d)))
	}
}
