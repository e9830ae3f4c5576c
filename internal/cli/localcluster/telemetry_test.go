package localcluster

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// otlpReceiver is a real OTLP/gRPC trace collector endpoint kept in memory.
type otlpReceiver struct {
	collectorpb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []recvSpan
}

type recvSpan struct {
	service string
	span    *tracepb.Span
}

func (r *otlpReceiver) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		svc := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				svc = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				r.spans = append(r.spans, recvSpan{svc, sp})
			}
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) snapshot() []recvSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recvSpan(nil), r.spans...)
}

// TestTracesAndMetrics runs a cluster exporting to an in-process OTLP receiver:
// dispatch spans are children of the step span and the expert nodes' compute spans
// are children of the dispatch spans (context carried on the stream messages);
// the trunk's /metrics parses and holds the serving series with sane values.
func TestTracesAndMetrics(t *testing.T) {
	recv := &otlpReceiver{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(gs, recv)
	go gs.Serve(lis)
	defer gs.Stop()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+lis.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "1")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: 2, ExpertMetrics: true,
		Trunk: func(tc *trunknode.Config) {
			tc.MetricsAddr = "127.0.0.1:0"
			tc.StepTracing = trunknode.StepTracing{Ratio: 1}
		}})
	if err != nil {
		t.Fatal(err)
	}
	cli := clientFor(t, c.Endpoint)
	p := goldenPrompts(t)[1]
	if _, err := gen(ctx, cli, p.IDs, 4); err != nil {
		t.Fatal(err)
	}
	metricsAddr := c.Trunk.MetricsAddr()
	families, openMetrics := scrape(t, "http://"+metricsAddr+"/metrics")
	c.Close() // flushes every node's spans

	spans := recv.snapshot()
	byID := map[string]recvSpan{}
	for _, s := range spans {
		byID[hex.EncodeToString(s.span.SpanId)] = s
	}
	count := map[string]int{}
	for _, s := range spans {
		count[s.span.Name]++
		parent := byID[hex.EncodeToString(s.span.ParentSpanId)]
		switch s.span.Name {
		case "dispatch":
			if parent.span == nil || parent.span.Name != "forward_step" {
				t.Errorf("dispatch span's parent is %v, want forward_step", parent.span.GetName())
			}
		case "expert_compute":
			if s.service != "switchyard-expert" {
				t.Errorf("expert_compute from service %q", s.service)
			}
			if parent.span == nil || parent.span.Name != "dispatch" || parent.service != "switchyard-trunk" {
				t.Errorf("expert_compute's parent is %v (%s), want the trunk's dispatch span", parent.span.GetName(), parent.service)
			}
		case "prefill":
			if parent.span == nil || parent.span.Name != "switchyard.v1.Switchyard/Generate" {
				t.Errorf("prefill's parent is %v, want the Generate RPC span", parent.span.GetName())
			}
		}
	}
	// A request and the steps it took part in link to each other (both ways),
	// and the request span carries the GenAI attributes and its queue time.
	var req *tracepb.Span
	for _, s := range spans {
		if s.span.Name == "switchyard.v1.Switchyard/Generate" {
			req = s.span
		}
	}
	if req != nil {
		steps := map[string]bool{}
		for _, l := range req.Links {
			if st := byID[hex.EncodeToString(l.SpanId)]; st.span != nil && st.span.Name == "forward_step" {
				steps[hex.EncodeToString(l.SpanId)] = true
			}
		}
		if len(steps) < 4 { // prefill and three more decode steps
			t.Errorf("request links to %d forward steps, want every step it took part in (>= 4)", len(steps))
		}
		for id := range steps {
			back := false
			for _, l := range byID[id].span.Links {
				back = back || hex.EncodeToString(l.SpanId) == hex.EncodeToString(req.SpanId)
			}
			if !back {
				t.Errorf("forward_step %s does not link back to the request", id)
			}
		}
		attrs := map[string]string{}
		for _, a := range req.Attributes {
			attrs[a.Key] = a.GetValue().String()
		}
		for _, k := range []string{"gen_ai.operation.name", "gen_ai.request.model", "gen_ai.request.max_tokens", "gen_ai.usage.input_tokens",
			"gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons"} {
			if attrs[k] == "" {
				t.Errorf("request span lacks %s (has %v)", k, attrs)
			}
		}
	}
	for _, name := range []string{"switchyard.v1.Switchyard/Generate", "queue", "prefill", "decode", "forward_step", "dispatch", "expert_compute"} {
		if count[name] == 0 {
			t.Errorf("no %q span received (got %v)", name, count)
		}
	}

	// Metrics: present and sane after the run.
	hist := func(name string) *dto.Histogram {
		f := families[name]
		if f == nil || len(f.Metric) == 0 {
			t.Errorf("metric %s missing", name)
			return &dto.Histogram{}
		}
		return f.Metric[0].GetHistogram()
	}
	if h := hist("switchyard_time_to_first_token_seconds"); h.GetSampleCount() != 1 || h.GetSampleSum() <= 0 {
		t.Errorf("ttft: %d samples, sum %v", h.GetSampleCount(), h.GetSampleSum())
	}
	if h := hist("switchyard_inter_token_latency_seconds"); h.GetSampleCount() != 3 {
		t.Errorf("itl: %d samples, want 3", h.GetSampleCount())
	}
	if f := families["switchyard_dispatch_rtt_seconds"]; f == nil || len(f.Metric) != 2 {
		t.Errorf("dispatch rtt series per node: %v", f)
	}
	if f := families["switchyard_generated_tokens_total"]; f == nil || f.Metric[0].GetCounter().GetValue() != 4 {
		t.Errorf("generated tokens: %v", f)
	}
	if f := families["switchyard_api_requests_total"]; f != nil {
		ok := false
		for _, m := range f.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			ok = ok || (strings.HasPrefix(labels["method"], "/switchyard.v1.Switchyard/") && labels["code"] == "OK" && m.GetCounter().GetValue() >= 1)
		}
		if !ok {
			t.Errorf("no successful call counted by method and code: %v", f)
		}
	}
	for _, name := range []string{"switchyard_expert_activations_total", "switchyard_dispatch_bytes_total", "switchyard_routing_table_version",
		"switchyard_session_state_bytes", "switchyard_step_seconds", "switchyard_request_duration_seconds", "switchyard_queue_wait_seconds",
		"switchyard_build_info", "switchyard_model_info", "switchyard_session_budget_usage_ratio", "switchyard_session_state_limit_bytes",
		"switchyard_scheduler_capacity", "switchyard_api_requests_total", "switchyard_state_pool_bytes"} {
		if families[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	// Exemplars carry trace ids on latency histograms (OpenMetrics).
	if !regexp.MustCompile(`switchyard_time_to_first_token_seconds_bucket\{[^}]*\} 1 # \{trace_id="[0-9a-f]{32}"\}`).MatchString(openMetrics) {
		t.Error("ttft histogram has no trace-id exemplar in the OpenMetrics exposition")
	}
}

// scrape parses /metrics in the classic text format with the Prometheus parser
// and returns the families plus the raw OpenMetrics exposition (for exemplars).
func scrape(t *testing.T, url string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	get := func(accept string) *http.Response {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := get("text/plain; version=0.0.4")
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	out, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	om := get("application/openmetrics-text; version=1.0.0")
	defer om.Body.Close()
	raw, _ := io.ReadAll(om.Body)
	return out, string(raw)
}
