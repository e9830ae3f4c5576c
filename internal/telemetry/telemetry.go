// Package telemetry sets up Switchyard's observability: OpenTelemetry tracing
// exported over OTLP (configured by the standard OTEL_* environment variables, off
// when no OTLP endpoint is set) and Prometheus metrics served on /metrics in the
// OpenMetrics format, so latency histograms carry trace-id exemplars that link a
// slow bucket in Grafana to the trace in Jaeger.
//
// Every node builds its own TracerProvider (several nodes may share a process in
// `switchyard up` and tests, each with its own service name) and its own metrics
// registry.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Propagator is the W3C trace-context propagator used on RPCs and expert-stream
// messages.
var Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// TracingEnabled reports whether the environment asks for OTLP trace export.
func TracingEnabled() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") || os.Getenv("OTEL_TRACES_EXPORTER") == "none" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Tracing is a node's tracer provider and its shutdown.
type Tracing struct {
	Provider trace.TracerProvider
	Enabled  bool
	shutdown func(context.Context) error
}

// Shutdown flushes and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// Tracer returns the node's tracer.
func (t *Tracing) Tracer() trace.Tracer {
	if t == nil || t.Provider == nil {
		return noop.NewTracerProvider().Tracer("switchyard")
	}
	return t.Provider.Tracer("github.com/switchyard-serving/switchyard")
}

// NewTracing builds a tracer provider for one node (service "switchyard-<role>",
// instance nodeID). Without an OTLP endpoint in the environment it returns a
// no-op provider. The SDK reads the standard variables itself: the exporter's
// OTEL_EXPORTER_OTLP_* settings, OTEL_EXPORTER_OTLP_PROTOCOL (or
// _TRACES_PROTOCOL: grpc, the default here, or http/protobuf), and
// OTEL_TRACES_SAMPLER with OTEL_TRACES_SAMPLER_ARG. One compatibility rule: a
// ratio in OTEL_TRACES_SAMPLER_ARG without OTEL_TRACES_SAMPLER means
// parentbased_traceidratio (as Switchyard documented before).
func NewTracing(ctx context.Context, role, nodeID string) (*Tracing, error) {
	if !TracingEnabled() {
		return &Tracing{Provider: noop.NewTracerProvider()}, nil
	}
	exp, err := newExporter(ctx)
	if err != nil {
		return nil, err
	}
	svc := os.Getenv("OTEL_SERVICE_NAME")
	if svc == "" {
		svc = "switchyard-" + role
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(svc), semconv.ServiceInstanceID(nodeID))
	opts := []sdktrace.TracerProviderOption{sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)), sdktrace.WithResource(res)}
	if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		if v, err := strconv.ParseFloat(os.Getenv("OTEL_TRACES_SAMPLER_ARG"), 64); err == nil && v >= 0 && v <= 1 {
			opts = append(opts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(v))))
		}
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return &Tracing{Provider: tp, Enabled: true, shutdown: tp.Shutdown}, nil
}

// newExporter picks the OTLP transport the environment names.
func newExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "", "grpc":
		return otlptracegrpc.New(ctx)
	case "http/protobuf":
		return otlptracehttp.New(ctx)
	}
	return nil, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL %q: want grpc or http/protobuf", proto)
}

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors and switchyard_build_info.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoCollector())
	return r
}

// ServeMetrics serves /metrics (OpenMetrics with exemplars, or the classic text
// format on request) on addr until ctx ends. It returns the bound address.
// With pprof it also serves the Go runtime's profiles under /debug/pprof/
// (net/http/pprof: CPU profile, heap, goroutines, execution trace), as
// etcd's --enable-pprof does: anyone who reaches the address can read them.
func ServeMetrics(ctx context.Context, addr string, reg *prometheus.Registry, pprof bool) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	if pprof {
		mux.HandleFunc("/debug/pprof/", httppprof.Index) // and the named profiles under it
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return lis.Addr().String(), nil
}

// Exemplar returns the trace-id exemplar labels of ctx's sampled span, or nil.
func Exemplar(ctx context.Context) prometheus.Labels {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsSampled() {
		return nil
	}
	return prometheus.Labels{"trace_id": sc.TraceID().String()}
}

// Observe records v in h, with ctx's trace id as exemplar when sampled.
func Observe(h prometheus.Observer, ctx context.Context, v float64) {
	if ex := Exemplar(ctx); ex != nil {
		if eo, ok := h.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, ex)
			return
		}
	}
	h.Observe(v)
}

// LatencyBuckets are histogram buckets from 50µs to ~100s.
var LatencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 22)

// RequestLatencyBuckets are finer buckets for request latencies (time to first
// token, inter-token latency, request duration, queue wait): 1 ms to ~130 s in
// steps of 2^(1/3), so a quantile interpolated inside a bucket stays close to
// the exact one (the load test compares them).
var RequestLatencyBuckets = prometheus.ExponentialBuckets(1e-3, math.Cbrt(2), 52)

// MapCarrier adapts a map[string]string (the expert stream's trace field) for
// propagation.
type MapCarrier = propagation.MapCarrier
