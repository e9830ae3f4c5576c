package loadtest

import (
	"math"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

// histOf builds the run's histogram of the given observations (seconds) on
// the given bucket bounds.
func histOf(obs []float64, les []float64) *histData {
	h := &histData{buckets: map[float64]float64{math.Inf(1): 0}}
	for _, le := range les {
		h.buckets[le] = 0
	}
	for _, v := range obs {
		h.count++
		h.sum += v
		for le := range h.buckets {
			if v <= le {
				h.buckets[le]++
			}
		}
	}
	return h
}

func TestLatencyAgreement(t *testing.T) {
	// Request latencies spread from 40 to 400 ms.
	var obs []float64
	var ms []float64
	for i := range 500 {
		v := 0.040 + 0.36*float64(i)/499
		obs = append(obs, v)
		ms = append(ms, 1000*v)
	}
	client := summarize(ms)
	for _, tc := range []struct {
		name    string
		les     []float64
		cfg     Config
		agree   bool
		reasons []string
	}{
		{name: "request buckets agree", les: telemetry.RequestLatencyBuckets, agree: true},
		{name: "coarse buckets explained", les: []float64{0.01, 0.1, 1, 10}, reasons: []string{"buckets:", "scope:"}},
		{name: "warm-up explained", les: []float64{0.01, 0.1, 1, 10}, cfg: Config{WarmupRequests: 10}, reasons: []string{"warm-up:", "buckets:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := &Report{TTFT: client}
			hists := map[histKey]*histData{{family: metricPrefix + "time_to_first_token_seconds", labels: `{api="generate"}`}: histOf(obs, tc.les)}
			got := compareLatencies(rep, &tc.cfg, &MetricsReport{}, hists)
			if len(got) != 1 {
				t.Fatalf("%d comparisons", len(got))
			}
			a := got[0]
			if a.Agree != tc.agree {
				t.Fatalf("agree = %v (client p50 %v p99 %v, server p50 %v p99 %v)", a.Agree, a.ClientP50Ms, a.ClientP99Ms, a.ServerP50Ms, a.ServerP99Ms)
			}
			all := strings.Join(a.Reasons, "\n")
			for _, r := range tc.reasons {
				if !strings.Contains(all, r) {
					t.Errorf("reasons lack %q:\n%s", r, all)
				}
			}
			var w strings.Builder
			writeAgreement(&w, got)
			if !strings.Contains(w.String(), "client vs server latency") {
				t.Fatalf("summary:\n%s", w.String())
			}
		})
	}
}
