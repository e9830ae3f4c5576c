package loadtest

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
)

var htmlTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"f1":    func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"f2":    func(v float64) string { return fmt.Sprintf("%.2f", v) },
	"pct":   func(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) },
	"bytes": bytesStr,
	"num":   num,
	"inc":   func(i int) int { return i + 1 },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Switchyard load test — {{.R.Config.Addr}}</title>
<style>
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.note { color: #666; font-size: 13px; }
.warn { color: #a00; font-weight: bold; }
</style></head><body>
<h1>Switchyard load test</h1>
<p>Against <b>{{.R.Config.Addr}}</b>: {{.Desc}}.<br>
Model <b>{{.R.Model.Name}}</b>: vocab {{.R.Model.VocabSize}}, {{.R.Model.Layers}} layers ({{.R.Model.AttentionLayers}} attention),
{{.R.Model.Experts}} experts top-{{.R.Model.ExpertsPerToken}}, max context {{.R.Model.MaxContext}},
recurrent state {{bytes .RecBytes}}/session, KV {{.R.Model.KVBytesPerToken}} B/token.<br>
Started {{.R.Started.Format "2006-01-02 15:04:05 MST"}}; {{f2 .R.MeasuredSeconds}}s measured of {{f2 .R.WallSeconds}}s.</p>
{{if .R.Interrupted}}<p class="warn">Interrupted: the figures cover the part of the run that was done.</p>{{end}}

<h2>Summary</h2>
<table>
<tr><th class="l">sent</th><th class="l">completed</th><th class="l">failed</th><th class="l">warm-up excluded</th><th class="l">dropped arrivals</th><th class="l">sessions</th></tr>
<tr><td>{{.R.Counts.Sent}}</td><td>{{.R.Counts.Completed}}</td><td>{{.R.Counts.Failed}}</td><td>{{.R.Counts.WarmupExcluded}}</td><td>{{.R.Counts.Dropped}}</td><td>{{.R.Counts.Sessions}}</td></tr>
</table>
<table>
<tr><th class="l">requests/s</th><th class="l">output tokens/s</th><th class="l">prompt tokens/s</th><th class="l">goodput req/s</th><th class="l">met SLO</th><th class="l">SLO</th></tr>
<tr><td>{{f2 .R.Throughput.RequestsPerSec}}</td><td>{{f1 .R.Throughput.OutputTokensPerSec}}</td><td>{{f1 .R.Throughput.PromptTokensPerSec}}</td>
<td>{{f2 .R.Goodput.PerSec}}</td><td>{{pct .R.Goodput.Fraction}}</td><td class="l">{{.SLO}}</td></tr>
</table>

<h2>Latency (ms)</h2>
<table>
<tr><th class="l">metric</th><th>n</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
{{range .Lat}}<tr><td class="l">{{.Name}}</td><td>{{.L.Count}}</td><td>{{f2 .L.MeanMs}}</td><td>{{f2 .L.P50Ms}}</td><td>{{f2 .L.P90Ms}}</td><td>{{f2 .L.P99Ms}}</td><td>{{f2 .L.P999Ms}}</td><td>{{f2 .L.MaxMs}}</td></tr>
{{end}}</table>
<div class="plots">{{range .CDFs}}{{.}}{{end}}</div>

<h2>Over time</h2>
<p class="note">Buckets of {{.R.Series.IntervalSeconds}}s, warm-up included (dotted line: end of warm-up). In-flight figures are time averages over each bucket.</p>
<div class="plots">{{range .TimePlots}}{{.}}{{end}}</div>

{{if gt (len .R.ByTurn) 1}}<h2>By turn</h2>
<table><tr><th>turn</th><th>completed</th><th>prompt tokens</th><th>cached tokens</th><th>TTFT p50 ms</th><th>TTFT p90 ms</th></tr>
{{range .R.ByTurn}}<tr><td>{{inc .Turn}}</td><td>{{.Completed}}</td><td>{{f1 .MeanPromptTokens}}</td><td>{{f1 .MeanCachedTokens}}</td><td>{{f2 .TTFTP50Ms}}</td><td>{{f2 .TTFTP90Ms}}</td></tr>
{{end}}</table>{{end}}

{{if .R.Sessions.Measured}}<h2>Session state after the last turn</h2>
<table><tr><th class="l"></th><th>mean</th><th>p50</th><th>max</th></tr>
<tr><td class="l">tokens</td><td>{{f1 .R.Sessions.Tokens.Mean}}</td><td>{{f1 .R.Sessions.Tokens.P50}}</td><td>{{f1 .R.Sessions.Tokens.Max}}</td></tr>
<tr><td class="l">state bytes</td><td>{{bytes .R.Sessions.StateBytes.Mean}}</td><td>{{bytes .R.Sessions.StateBytes.P50}}</td><td>{{bytes .R.Sessions.StateBytes.Max}}</td></tr>
<tr><td class="l">recurrent bytes</td><td>{{bytes .R.Sessions.RecurrentBytes.Mean}}</td><td>{{bytes .R.Sessions.RecurrentBytes.P50}}</td><td>{{bytes .R.Sessions.RecurrentBytes.Max}}</td></tr>
<tr><td class="l">KV bytes</td><td>{{bytes .R.Sessions.KVBytes.Mean}}</td><td>{{bytes .R.Sessions.KVBytes.P50}}</td><td>{{bytes .R.Sessions.KVBytes.Max}}</td></tr>
</table>{{end}}

<h2>Errors</h2>
{{if .R.Errors}}<table><tr><th class="l">gRPC code</th><th>count</th><th class="l">example</th></tr>
{{range .R.Errors}}<tr><td class="l">{{.Code}}</td><td>{{.Count}}</td><td class="l">{{.Example}}</td></tr>
{{end}}</table>{{else}}<p>None.</p>{{end}}

{{with .R.Metrics}}<h2>Server metrics</h2>
<p class="note">{{.URL}}</p>
{{range .Errors}}<p class="warn">{{.}}</p>{{end}}
{{if .Series}}<table><tr><th class="l">series</th><th class="l">type</th><th>before</th><th>after</th><th>delta</th></tr>
{{range .Series}}<tr><td class="l">{{.Name}}{{.Labels}}</td><td class="l">{{.Type}}</td><td>{{if .HasBefore}}{{num .Before}}{{end}}</td><td>{{if .HasAfter}}{{num .After}}{{end}}</td><td>{{if and .HasBefore .HasAfter}}{{num .Delta}}{{end}}</td></tr>
{{end}}</table>{{end}}
{{if .Histograms}}<table><tr><th class="l">histogram</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th class="l">scope</th></tr>
{{range .Histograms}}<tr><td class="l">{{.Name}}{{.Labels}}</td><td>{{num .Count}}</td><td>{{num .Mean}}</td><td>{{num .P50}}</td><td>{{num .P90}}</td><td>{{num .P99}}</td><td class="l">{{if .Cumulative}}since server start{{else}}during the run{{end}}</td></tr>
{{end}}</table>{{end}}
{{if not (or .Series .Histograms)}}<p>No switchyard_* series.</p>{{end}}
{{end}}
</body></html>
`))

// WriteHTML writes a self-contained HTML report: the summary tables, latency
// CDFs (TTFT, ITL and TPOT, E2E) and the throughput, completions and in-flight
// requests and sessions over time, as inline SVG.
func (r *Report) WriteHTML(w io.Writer) error {
	type latRow struct {
		Name string
		L    Latency
	}
	quantiles := []float64{0.5, 0.9, 0.99}
	cdf := func(title string, lines ...line) template.HTML {
		c := chart{title: title, xLabel: "latency (ms)", yLabel: "cumulative fraction", lines: lines,
			yMin: 0, yMax: 1, hlines: quantiles}
		return template.HTML(c.svg()) //nolint:gosec // built by chart.svg, which escapes all text
	}
	s := r.Series
	var tok, done, fail, inReq, sess []([2]float64)
	for _, b := range s.Buckets {
		mid := b.T + s.IntervalSeconds/2
		tok = append(tok, [2]float64{mid, b.OutputTokensPerSec})
		done = append(done, [2]float64{mid, b.CompletedPerSec})
		fail = append(fail, [2]float64{mid, b.FailedPerSec})
		inReq = append(inReq, [2]float64{mid, b.InFlightRequests})
		sess = append(sess, [2]float64{mid, b.RunningSessions})
	}
	var vl []float64
	if s.WarmupEndSeconds > 0 {
		vl = []float64{s.WarmupEndSeconds}
	}
	series := func(title, y string, lines ...line) template.HTML {
		c := chart{title: title, xLabel: "time since start (s)", yLabel: y, lines: lines, vlines: vl, vlabel: "warm-up end"}
		return template.HTML(c.svg()) //nolint:gosec // built by chart.svg, which escapes all text
	}
	data := struct {
		R         *Report
		Desc, SLO string
		RecBytes  float64
		Lat       []latRow
		CDFs      []template.HTML
		TimePlots []template.HTML
	}{
		R: r, Desc: r.Config.describe(), SLO: r.Goodput.SLO.String(), RecBytes: float64(r.Model.RecurrentStateBytes),
		Lat: []latRow{{"TTFT", r.TTFT}, {"ITL", r.ITL}, {"TPOT", r.TPOT}, {"E2E", r.E2E}},
		CDFs: []template.HTML{
			cdf("TTFT CDF", cdfLine("TTFT", "#1f77b4", r.TTFT)),
			cdf("ITL and TPOT CDF", cdfLine("ITL (per token)", "#2ca02c", r.ITL), cdfLine("TPOT (per request)", "#9467bd", r.TPOT)),
			cdf("E2E latency CDF", cdfLine("E2E", "#d62728", r.E2E)),
		},
		TimePlots: []template.HTML{
			series("Output throughput", "tokens/s", line{name: "output tokens/s", color: "#1f77b4", pts: tok}),
			series("Requests finished", "requests/s", line{name: "completed/s", color: "#2ca02c", pts: done},
				line{name: "failed/s", color: "#d62728", pts: fail}),
			series("In flight", "count", line{name: "running sessions", color: "#ff7f0e", pts: sess},
				line{name: "in-flight requests", color: "#9467bd", pts: inReq, dashed: true}),
		},
	}
	var buf bytes.Buffer
	if err := htmlTmpl.Execute(&buf, data); err != nil {
		return fmt.Errorf("loadtest: html report: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("loadtest: html report: %w", err)
	}
	return nil
}
