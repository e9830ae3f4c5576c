package loadtest

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const metricsBefore = `# HELP switchyard_sessions Sessions held.
# TYPE switchyard_sessions gauge
switchyard_sessions{node="trunk-0"} 2
# TYPE switchyard_tokens_total counter
switchyard_tokens_total{node="trunk-0",kind="output"} 100
# TYPE switchyard_dispatch_seconds histogram
switchyard_dispatch_seconds_bucket{node="trunk-0",le="0.001"} 10
switchyard_dispatch_seconds_bucket{node="trunk-0",le="0.01"} 20
switchyard_dispatch_seconds_bucket{node="trunk-0",le="0.1"} 20
switchyard_dispatch_seconds_bucket{node="trunk-0",le="+Inf"} 20
switchyard_dispatch_seconds_sum{node="trunk-0"} 0.05
switchyard_dispatch_seconds_count{node="trunk-0"} 20
# TYPE go_goroutines gauge
go_goroutines 55
`

const metricsAfter = `# HELP switchyard_sessions Sessions held.
# TYPE switchyard_sessions gauge
switchyard_sessions{node="trunk-0"} 5
switchyard_state_bytes{node="trunk-0",kind="kv"} 1.5e+06 1700000000000
# TYPE switchyard_tokens_total counter
switchyard_tokens_total{node="trunk-0",kind="output"} 1100
switchyard_imbalance{label="a \"quoted\" \\ value"} NaN
# TYPE switchyard_dispatch_seconds histogram
switchyard_dispatch_seconds_bucket{node="trunk-0",le="0.001"} 10
switchyard_dispatch_seconds_bucket{node="trunk-0",le="0.01"} 120
switchyard_dispatch_seconds_bucket{node="trunk-0",le="0.1"} 220
switchyard_dispatch_seconds_bucket{node="trunk-0",le="+Inf"} 220
switchyard_dispatch_seconds_sum{node="trunk-0"} 2.05
switchyard_dispatch_seconds_count{node="trunk-0"} 220
go_goroutines 60
`

func TestParseSample(t *testing.T) {
	tests := []struct {
		line   string
		name   string
		labels string
		value  float64
		bad    bool
	}{
		{line: `switchyard_x 3`, name: "switchyard_x", value: 3},
		{line: `switchyard_x{} 3 1700000000`, name: "switchyard_x", value: 3},
		{line: `switchyard_x{b="2",a="1",} -1.5e3`, name: "switchyard_x", labels: `{a="1",b="2"}`, value: -1500},
		{line: `switchyard_x{a="q\"x\\y\nz"} 1`, name: "switchyard_x", labels: `{a="q\"x\\y\nz"}`, value: 1},
		{line: `switchyard_x{a="1"}`, bad: true},
		{line: `switchyard_x{a=1} 2`, bad: true},
		{line: `switchyard_x{a="1} 2`, bad: true},
		{line: `switchyard_x one`, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			ps, err := parseSample(tt.line)
			if tt.bad {
				if err == nil {
					t.Fatalf("parseSample(%q) = %+v, want an error", tt.line, ps)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ps.name != tt.name || labelString(ps.labels, "") != tt.labels || ps.value != tt.value {
				t.Fatalf("parseSample = %s%s %v, want %s%s %v", ps.name, labelString(ps.labels, ""), ps.value, tt.name, tt.labels, tt.value)
			}
		})
	}
}

func TestDiffMetrics(t *testing.T) {
	before, err := parseMetrics(strings.NewReader(metricsBefore), metricPrefix)
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseMetrics(strings.NewReader(metricsAfter), metricPrefix)
	if err != nil {
		t.Fatal(err)
	}
	m := diffMetrics("u", before, after)
	if len(m.Errors) != 0 {
		t.Fatalf("errors %v", m.Errors)
	}
	got := map[string]MetricSeries{}
	for _, s := range m.Series {
		if !strings.HasPrefix(s.Name, metricPrefix) {
			t.Fatalf("kept a foreign series %s", s.Name)
		}
		got[s.Name+s.Labels] = s
	}
	if len(got) != 3 { // the NaN sample is dropped, histogram parts are summarised apart
		t.Fatalf("series %+v, want 3", m.Series)
	}
	if s := got[`switchyard_tokens_total{kind="output",node="trunk-0"}`]; s.Delta != 1000 || s.Type != "counter" {
		t.Fatalf("counter %+v, want delta 1000", s)
	}
	if s := got[`switchyard_sessions{node="trunk-0"}`]; s.Before != 2 || s.After != 5 || s.Delta != 3 {
		t.Fatalf("gauge %+v", s)
	}
	if s := got[`switchyard_state_bytes{kind="kv",node="trunk-0"}`]; s.HasBefore || !s.HasAfter || s.After != 1.5e6 {
		t.Fatalf("new series %+v", s)
	}
	if len(m.Histograms) != 1 {
		t.Fatalf("histograms %+v", m.Histograms)
	}
	h := m.Histograms[0]
	// During the run: 200 observations, 100 in (0.001, 0.01] and 100 in (0.01, 0.1].
	if h.Count != 200 || math.Abs(h.Sum-2) > 1e-9 || math.Abs(h.Mean-0.01) > 1e-9 || h.Cumulative {
		t.Fatalf("histogram %+v", h)
	}
	if math.Abs(h.P50-0.01) > 1e-9 || math.Abs(h.P90-0.082) > 1e-9 || math.Abs(h.P99-0.0982) > 1e-9 {
		t.Fatalf("histogram quantiles p50 %v p90 %v p99 %v, want 0.01 0.082 0.0982", h.P50, h.P90, h.P99)
	}
	// Without a first scrape the histogram covers the server's lifetime.
	if c := diffMetrics("u", &scrape{err: context.DeadlineExceeded}, after); len(c.Errors) != 1 || !c.Histograms[0].Cumulative || c.Histograms[0].Count != 220 {
		t.Fatalf("cumulative diff %+v", c)
	}
}

func TestScrapeMetrics(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(metricsAfter)) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()
	if s := scrapeMetrics(ctx, srv.URL+"/metrics", time.Second); s.err != nil || len(s.samples) != 9 {
		t.Fatalf("scrape: err %v, %d samples, want 9", s.err, len(s.samples))
	}
	if s := scrapeMetrics(ctx, srv.URL+"/nothing", time.Second); s.err == nil {
		t.Fatal("a 404 scrape did not fail")
	}
	m := diffMetrics("x", scrapeMetrics(ctx, srv.URL+"/nothing", time.Second), scrapeMetrics(ctx, "http://127.0.0.1:1/metrics", time.Second))
	if len(m.Errors) != 2 || len(m.Series) != 0 {
		t.Fatalf("absent endpoint: %+v", m)
	}
}
