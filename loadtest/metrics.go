package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// metricPrefix selects the server series the report keeps.
const metricPrefix = "switchyard_"

// maxMetricsBody bounds a scraped exposition.
const maxMetricsBody = 32 << 20

// promSample is one sample line of a Prometheus text exposition.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape is the switchyard_* part of one scrape.
type scrape struct {
	types   map[string]string // family name -> counter, gauge, histogram, summary, untyped
	samples []promSample
	err     error
}

// scrapeMetrics fetches and parses url; a failure is kept in the result.
func scrapeMetrics(ctx context.Context, url string, timeout time.Duration) *scrape {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return &scrape{err: fmt.Errorf("loadtest: metrics: %w", err)}
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return &scrape{err: fmt.Errorf("loadtest: metrics: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &scrape{err: fmt.Errorf("loadtest: metrics: GET %s: %s", url, resp.Status)}
	}
	s, err := parseMetrics(io.LimitReader(resp.Body, maxMetricsBody), metricPrefix)
	if err != nil {
		return &scrape{err: err}
	}
	return s
}

// parseMetrics parses the Prometheus text format, keeping the samples whose
// names start with prefix. Samples with non-finite values are dropped.
func parseMetrics(r io.Reader, prefix string) (*scrape, error) {
	s := &scrape{types: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		if text[0] == '#' {
			f := strings.Fields(text)
			if len(f) >= 4 && f[1] == "TYPE" && strings.HasPrefix(f[2], prefix) {
				s.types[f[2]] = f[3]
			}
			continue
		}
		if !strings.HasPrefix(text, prefix) {
			continue
		}
		ps, err := parseSample(text)
		if err != nil {
			return nil, fmt.Errorf("loadtest: metrics line %d: %w", line, err)
		}
		if !math.IsNaN(ps.value) && !math.IsInf(ps.value, 0) {
			s.samples = append(s.samples, ps)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("loadtest: metrics: %w", err)
	}
	return s, nil
}

// parseSample parses `name{label="value",...} value [timestamp]`.
func parseSample(line string) (promSample, error) {
	ps := promSample{labels: map[string]string{}}
	i := 0
	for i < len(line) && (isNameChar(line[i]) || line[i] == ':') {
		i++
	}
	if i == 0 {
		return ps, fmt.Errorf("no metric name in %q", line)
	}
	ps.name = line[:i]
	if i < len(line) && line[i] == '{' {
		i++
		for {
			for i < len(line) && (line[i] == ' ' || line[i] == ',') {
				i++
			}
			if i < len(line) && line[i] == '}' {
				i++
				break
			}
			j := i
			for i < len(line) && isNameChar(line[i]) {
				i++
			}
			name := line[j:i]
			for i < len(line) && line[i] == ' ' {
				i++
			}
			if name == "" || i+1 >= len(line) || line[i] != '=' || line[i+1] != '"' {
				return ps, fmt.Errorf("bad label in %q", line)
			}
			i += 2
			var val strings.Builder
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) {
					i++
					switch line[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[i])
					}
					continue
				}
				val.WriteByte(line[i])
			}
			if i >= len(line) {
				return ps, fmt.Errorf("unterminated label value in %q", line)
			}
			i++
			ps.labels[name] = val.String()
		}
	}
	f := strings.Fields(line[i:])
	if len(f) < 1 || len(f) > 2 {
		return ps, fmt.Errorf("want a value (and an optional timestamp) in %q", line)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return ps, fmt.Errorf("bad value in %q", line)
	}
	ps.value = v
	return ps, nil
}

func isNameChar(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// labelString is the canonical `{a="x",b="y"}` form of labels without skip.
func labelString(labels map[string]string, skip string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		if k != skip {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(labels[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// MetricsReport holds the server's switchyard_* series read before and after
// the run. Histograms are summarised from the change of their buckets over the
// run (or from their totals when the first scrape failed).
type MetricsReport struct {
	URL        string             `json:"url"`
	Errors     []string           `json:"errors,omitempty"`
	Series     []MetricSeries     `json:"series,omitempty"`
	Histograms []HistogramSummary `json:"histograms,omitempty"`
	// Agreement compares the report's latencies with the server's histograms.
	Agreement []LatencyAgreement `json:"agreement,omitempty"`
}

// MetricSeries is one counter, gauge or untyped series.
type MetricSeries struct {
	Name      string  `json:"name"`
	Labels    string  `json:"labels,omitempty"`
	Type      string  `json:"type,omitempty"`
	Before    float64 `json:"before"`
	After     float64 `json:"after"`
	Delta     float64 `json:"delta"`
	HasBefore bool    `json:"has_before"`
	HasAfter  bool    `json:"has_after"`
}

// HistogramSummary is a histogram's observations during the run, with
// quantiles interpolated within buckets.
type HistogramSummary struct {
	Name   string  `json:"name"`
	Labels string  `json:"labels,omitempty"`
	Count  float64 `json:"count"`
	Sum    float64 `json:"sum"`
	Mean   float64 `json:"mean"`
	P50    float64 `json:"p50"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	// Cumulative is true when there was no first scrape: the figures cover the
	// server's lifetime, not the run.
	Cumulative bool `json:"cumulative,omitempty"`
}

// histKey groups one histogram's samples.
type histKey struct{ family, labels string }

type histData struct {
	buckets    map[float64]float64 // le -> cumulative count
	sum, count float64
}

// split groups the histogram families of s by series; other samples go to plain.
func (s *scrape) split() (hists map[histKey]*histData, plain map[[2]string]promSample) {
	hists, plain = map[histKey]*histData{}, map[[2]string]promSample{}
	if s == nil || s.err != nil {
		return hists, plain
	}
	for _, ps := range s.samples {
		fam, suffix := "", ""
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(ps.name, suf); ok && s.types[base] == "histogram" {
				fam, suffix = base, suf
				break
			}
		}
		if fam == "" {
			plain[[2]string{ps.name, labelString(ps.labels, "")}] = ps
			continue
		}
		k := histKey{fam, labelString(ps.labels, "le")}
		h := hists[k]
		if h == nil {
			h = &histData{buckets: map[float64]float64{}}
			hists[k] = h
		}
		switch suffix {
		case "_bucket":
			le, err := strconv.ParseFloat(ps.labels["le"], 64)
			if err == nil {
				h.buckets[le] = ps.value
			}
		case "_sum":
			h.sum = ps.value
		case "_count":
			h.count = ps.value
		}
	}
	return hists, plain
}

// runHistograms returns each histogram's observations during the run (after
// minus before; everything when there was no first scrape).
func runHistograms(before, after *scrape) map[histKey]*histData {
	bh, _ := before.split()
	ah, _ := after.split()
	out := map[histKey]*histData{}
	for k, a := range ah {
		d := &histData{buckets: map[float64]float64{}, sum: a.sum, count: a.count}
		for le, c := range a.buckets {
			d.buckets[le] = c
		}
		if b, ok := bh[k]; ok {
			d.sum -= b.sum
			d.count -= b.count
			for le := range d.buckets {
				d.buckets[le] -= b.buckets[le]
			}
		}
		out[k] = d
	}
	return out
}

// diffMetrics compares two scrapes.
func diffMetrics(url string, before, after *scrape) *MetricsReport {
	m := &MetricsReport{URL: url}
	for i, s := range []*scrape{before, after} {
		if s != nil && s.err != nil {
			m.Errors = append(m.Errors, []string{"before the run: ", "after the run: "}[i]+s.err.Error())
		}
	}
	bh, bp := before.split()
	_, ap := after.split()
	keys := map[[2]string]bool{}
	for k := range bp {
		keys[k] = true
	}
	for k := range ap {
		keys[k] = true
	}
	for k := range keys {
		b, hb := bp[k]
		a, ha := ap[k]
		ms := MetricSeries{Name: k[0], Labels: k[1], HasBefore: hb, HasAfter: ha, Before: b.value, After: a.value}
		if after != nil {
			ms.Type = after.types[k[0]]
		}
		if hb && ha {
			ms.Delta = a.value - b.value
		}
		m.Series = append(m.Series, ms)
	}
	sort.Slice(m.Series, func(i, j int) bool {
		x, y := m.Series[i], m.Series[j]
		return x.Name < y.Name || x.Name == y.Name && x.Labels < y.Labels
	})
	for k, d := range runHistograms(before, after) {
		hs := HistogramSummary{Name: k.family, Labels: k.labels}
		_, hadBefore := bh[k]
		hs.Cumulative = !hadBefore
		hs.Count, hs.Sum, hs.Mean = d.count, d.sum, div(d.sum, d.count)
		hs.P50, hs.P90, hs.P99 = d.quantile(0.5), d.quantile(0.9), d.quantile(0.99)
		m.Histograms = append(m.Histograms, hs)
	}
	sort.Slice(m.Histograms, func(i, j int) bool {
		x, y := m.Histograms[i], m.Histograms[j]
		return x.Name < y.Name || x.Name == y.Name && x.Labels < y.Labels
	})
	return m
}

// quantile interpolates the q-quantile linearly within the bucket that holds
// it (as Prometheus' histogram_quantile does); the +Inf bucket answers with
// the highest finite bound.
func (h *histData) quantile(q float64) float64 {
	les := make([]float64, 0, len(h.buckets))
	for le := range h.buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	if len(les) == 0 {
		return 0
	}
	total := h.buckets[les[len(les)-1]]
	if total <= 0 {
		return 0
	}
	rank := q * total
	prevLE, prevC := 0.0, 0.0
	for _, le := range les {
		c := h.buckets[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return prevLE
			}
			if c == prevC {
				return le
			}
			return prevLE + (le-prevLE)*(rank-prevC)/(c-prevC)
		}
		prevLE, prevC = le, c
	}
	return prevLE
}

func (m *MetricsReport) writeSummary(w io.Writer) {
	fmt.Fprintf(w, "\nserver metrics (%s):\n", m.URL)
	for _, e := range m.Errors {
		fmt.Fprintf(w, "  unavailable: %s\n", e)
	}
	if len(m.Series) == 0 && len(m.Histograms) == 0 {
		fmt.Fprintf(w, "  no %s* series\n", metricPrefix)
		return
	}
	for _, s := range m.Series {
		switch {
		case s.HasBefore && s.HasAfter:
			fmt.Fprintf(w, "  %s%s  %s -> %s (delta %s)\n", s.Name, s.Labels, num(s.Before), num(s.After), num(s.Delta))
		case s.HasAfter:
			fmt.Fprintf(w, "  %s%s  %s\n", s.Name, s.Labels, num(s.After))
		default:
			fmt.Fprintf(w, "  %s%s  %s (before only)\n", s.Name, s.Labels, num(s.Before))
		}
	}
	for _, h := range m.Histograms {
		scope := "during the run"
		if h.Cumulative {
			scope = "since server start"
		}
		fmt.Fprintf(w, "  %s%s  %s observations %s: mean %s p50 %s p90 %s p99 %s\n",
			h.Name, h.Labels, num(h.Count), scope, num(h.Mean), num(h.P50), num(h.P90), num(h.P99))
	}
	writeAgreement(w, m.Agreement)
}

// num formats a metric value compactly.
func num(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }
