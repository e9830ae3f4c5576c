package loadtest

import (
	"fmt"
	"io"
	"math"
	"sort"
)

// LatencyAgreement compares one latency as the load generator measured it
// (exact percentiles of its own requests) with the server's Prometheus
// histogram of the same run, and says why they differ when they do.
type LatencyAgreement struct {
	Name        string  `json:"name"`   // ttft, itl or e2e
	Metric      string  `json:"metric"` // the server histogram
	ClientP50Ms float64 `json:"client_p50_ms"`
	ServerP50Ms float64 `json:"server_p50_ms"`
	ClientP99Ms float64 `json:"client_p99_ms"`
	ServerP99Ms float64 `json:"server_p99_ms"`
	ClientCount int     `json:"client_count"`
	ServerCount float64 `json:"server_count"`
	// Agree is true when both percentiles are within 10% (or 1 ms).
	Agree bool `json:"agree"`
	// Reasons explains a disagreement, most likely cause first.
	Reasons []string `json:"reasons,omitempty"`
}

// agreementTolerance is the relative difference accepted as agreement.
const agreementTolerance = 0.10

// compareLatencies matches the client-side latencies with the server's
// histograms (all series of a family merged: every API and node).
func compareLatencies(rep *Report, cfg *Config, m *MetricsReport, hists map[histKey]*histData) []LatencyAgreement {
	pairs := []struct {
		name, metric string
		client       Latency
	}{
		{"ttft", metricPrefix + "time_to_first_token_seconds", rep.TTFT},
		{"itl", metricPrefix + "inter_token_latency_seconds", rep.ITL},
		{"e2e", metricPrefix + "request_duration_seconds", rep.E2E},
	}
	var out []LatencyAgreement
	for _, p := range pairs {
		merged := &histData{buckets: map[float64]float64{}}
		cumulative := false
		for k, d := range hists {
			if k.family != p.metric {
				continue
			}
			merged.sum += d.sum
			merged.count += d.count
			for le, c := range d.buckets {
				merged.buckets[le] += c
			}
		}
		for _, h := range m.Histograms {
			cumulative = cumulative || (h.Name == p.metric && h.Cumulative)
		}
		if merged.count <= 0 || p.client.Count == 0 {
			continue
		}
		a := LatencyAgreement{Name: p.name, Metric: p.metric, ClientP50Ms: p.client.P50Ms, ClientP99Ms: p.client.P99Ms,
			ServerP50Ms: 1000 * merged.quantile(0.5), ServerP99Ms: 1000 * merged.quantile(0.99), ClientCount: p.client.Count, ServerCount: merged.count}
		a.Agree = near(a.ClientP50Ms, a.ServerP50Ms) && near(a.ClientP99Ms, a.ServerP99Ms)
		if !a.Agree {
			a.Reasons = disagreement(p.name, a, merged, cfg, rep, cumulative)
		}
		out = append(out, a)
	}
	return out
}

func near(a, b float64) bool {
	d := math.Abs(a - b)
	return d <= 1 || d <= agreementTolerance*math.Max(a, b)
}

// disagreement lists the causes that can explain the gap in this run.
func disagreement(name string, a LatencyAgreement, h *histData, cfg *Config, rep *Report, cumulative bool) []string {
	var why []string
	if cumulative {
		why = append(why, "the server histogram covers the server's whole life (the scrape before the run failed), not this run")
	}
	if cfg.WarmupRequests > 0 || (cfg.Warmup > 0 && rep.Counts.WarmupExcluded > 0 && a.ServerCount > float64(a.ClientCount)) {
		why = append(why, fmt.Sprintf("warm-up: the server observed %.0f requests, the report counts %d (warm-up and failed requests are excluded from the report; the server's window starts at the end of the time-based warm-up, not after warm-up requests)",
			a.ServerCount, a.ClientCount))
	}
	for _, q := range []struct {
		label string
		v     float64
	}{{"p50", a.ServerP50Ms}, {"p99", a.ServerP99Ms}} {
		lo, hi := h.bucketOf(q.v / 1000)
		if hi > 0 && !math.IsInf(hi, 1) && (hi-lo)/hi > 2*agreementTolerance {
			why = append(why, fmt.Sprintf("buckets: the server %s is interpolated inside the bucket (%s ms, %s ms], so it can be off by up to %.0f%%",
				q.label, num(1000*lo), num(1000*hi), 100*(hi-lo)/hi))
		}
	}
	switch name {
	case "ttft", "e2e":
		why = append(why, "scope: the report measures from the client's send to the token's arrival (network, TLS, the RPC's admission before the scheduler's queue included); the server measures from the queue entry")
	case "itl":
		why = append(why, "scope: the report spreads a streamed chunk of n tokens as n equal gaps; the server times each token as it is sampled")
	}
	return why
}

// bucketOf returns the bounds of the bucket holding value v.
func (h *histData) bucketOf(v float64) (lo, hi float64) {
	les := make([]float64, 0, len(h.buckets))
	for le := range h.buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	for _, le := range les {
		if v <= le {
			return lo, le
		}
		lo = le
	}
	return lo, math.Inf(1)
}

func writeAgreement(w io.Writer, as []LatencyAgreement) {
	if len(as) == 0 {
		return
	}
	fmt.Fprintf(w, "\nclient vs server latency (server: Prometheus histograms of the run, all APIs and nodes):\n")
	for _, a := range as {
		verdict := "agree within 10%"
		if !a.Agree {
			verdict = "DIFFER"
		}
		fmt.Fprintf(w, "  %-4s p50 %s / %s ms, p99 %s / %s ms (client / server; %d / %.0f requests): %s\n",
			a.Name, num(a.ClientP50Ms), num(a.ServerP50Ms), num(a.ClientP99Ms), num(a.ServerP99Ms), a.ClientCount, a.ServerCount, verdict)
		for _, r := range a.Reasons {
			fmt.Fprintf(w, "       - %s\n", r)
		}
	}
}
