package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// cdfPoints is the number of quantile steps a Latency's CDF holds (0%, 0.5%, ..., 100%).
const cdfPoints = 200

// Report is the outcome of a run. Latencies are milliseconds, rates per second
// of the measured window (from the first measured request's start to the last
// one's end). Warm-up requests are left out of every figure but the counts and
// the time series.
type Report struct {
	Config          Config       `json:"config"`
	Model           ModelSummary `json:"model"`
	Started         time.Time    `json:"started"`
	WallSeconds     float64      `json:"wall_seconds"`     // whole run: warm-up, measurement and drain
	MeasuredSeconds float64      `json:"measured_seconds"` // the measured window
	Interrupted     bool         `json:"interrupted,omitempty"`

	Counts     Counts     `json:"counts"`
	Throughput Throughput `json:"throughput"`
	Goodput    Goodput    `json:"goodput"`

	TTFT Latency `json:"ttft"` // to the first token
	ITL  Latency `json:"itl"`  // between tokens, over all tokens of all requests (a chunk of n tokens counts as n gaps of gap/n)
	TPOT Latency `json:"tpot"` // per request: (last token - first token) / (tokens - 1)
	E2E  Latency `json:"e2e"`  // whole request

	Errors        []ErrorCount   `json:"errors,omitempty"`
	FinishReasons map[string]int `json:"finish_reasons,omitempty"` // of completed measured requests
	ByTurn        []TurnSummary  `json:"by_turn,omitempty"`
	Sessions      SessionSummary `json:"sessions"`
	Series        Series         `json:"series"`
	Metrics       *MetricsReport `json:"metrics,omitempty"`
}

// ModelSummary is the server's ModelInfo.
type ModelSummary struct {
	Name                string `json:"name"`
	VocabSize           int    `json:"vocab_size"`
	Layers              int    `json:"layers"`
	AttentionLayers     int    `json:"attention_layers"`
	Experts             int    `json:"experts"`
	ExpertsPerToken     int    `json:"experts_per_token"`
	MaxContext          int    `json:"max_context"`
	RecurrentStateBytes int64  `json:"recurrent_state_bytes"`
	KVBytesPerToken     int64  `json:"kv_bytes_per_token"`
}

// Counts counts requests (turns). Sent == Completed + Failed; warm-up requests
// are counted apart.
type Counts struct {
	Sent           int `json:"sent"`
	Completed      int `json:"completed"`
	Failed         int `json:"failed"`
	WarmupExcluded int `json:"warmup_excluded"`
	WarmupFailed   int `json:"warmup_failed,omitempty"`
	Dropped        int `json:"dropped,omitempty"` // open-loop arrivals refused by MaxInFlight
	Sessions       int `json:"sessions"`          // measured sessions
}

// Throughput is measured completed work per second.
type Throughput struct {
	RequestsPerSec     float64 `json:"requests_per_sec"`
	OutputTokensPerSec float64 `json:"output_tokens_per_sec"`
	PromptTokensPerSec float64 `json:"prompt_tokens_per_sec"`
	OutputTokens       int     `json:"output_tokens"`
	PromptTokens       int     `json:"prompt_tokens"` // new prompt tokens the server read (usage.prompt_tokens)
	CachedTokens       int     `json:"cached_tokens"` // session or prefix-cache tokens reused (usage.cached_tokens)
	// PrefillTokens is the prompt tokens the server computed: prompt_tokens,
	// less cached_tokens for stateless requests (whose cached tokens are the
	// part of their prompt a prefix-cache checkpoint held; a session's are its
	// history, not part of prompt_tokens).
	PrefillTokens int `json:"prefill_tokens"`
}

// Goodput is the rate of requests that completed within every SLO. Fraction is
// of all measured requests, failed ones included.
type Goodput struct {
	SLO      SLO     `json:"slo"`
	Met      int     `json:"met"`
	PerSec   float64 `json:"per_sec"`
	Fraction float64 `json:"fraction"`
}

// Latency summarises a latency sample in milliseconds. Percentiles are
// nearest-rank. CDF[i] is the (i/cdfPoints)-quantile.
type Latency struct {
	Count  int       `json:"count"`
	MeanMs float64   `json:"mean_ms"`
	MinMs  float64   `json:"min_ms"`
	P50Ms  float64   `json:"p50_ms"`
	P90Ms  float64   `json:"p90_ms"`
	P99Ms  float64   `json:"p99_ms"`
	P999Ms float64   `json:"p999_ms"`
	MaxMs  float64   `json:"max_ms"`
	CDF    []float64 `json:"cdf_ms,omitempty"`
}

// ErrorCount counts measured failures with one gRPC code.
type ErrorCount struct {
	Code    string `json:"code"`
	Count   int    `json:"count"`
	Example string `json:"example"`
}

// TurnSummary describes the measured, completed requests of one turn index
// (0 = a session's first turn): later turns of server-side sessions show the
// reused state in CachedTokens and their TTFT.
type TurnSummary struct {
	Turn             int     `json:"turn"`
	Completed        int     `json:"completed"`
	MeanPromptTokens float64 `json:"mean_prompt_tokens"`
	MeanCachedTokens float64 `json:"mean_cached_tokens"`
	TTFTP50Ms        float64 `json:"ttft_p50_ms"`
	TTFTP90Ms        float64 `json:"ttft_p90_ms"`
}

// SessionSummary describes measured sessions. The sizes come from GetSession
// after each server-side session's last turn (SessionStats).
type SessionSummary struct {
	Count          int     `json:"count"`
	ServerSide     int     `json:"server_side"`
	MeanTurns      float64 `json:"mean_turns"`
	Measured       int     `json:"measured"` // sessions whose size was read
	Tokens         Stat    `json:"tokens"`
	StateBytes     Stat    `json:"state_bytes"`
	RecurrentBytes Stat    `json:"recurrent_bytes"`
	KVBytes        Stat    `json:"kv_bytes"`
}

// Stat summarises a sample.
type Stat struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	Max  float64 `json:"max"`
}

// Series is the run over time, in buckets of IntervalSeconds from the start.
type Series struct {
	IntervalSeconds  float64  `json:"interval_seconds"`
	WarmupEndSeconds float64  `json:"warmup_end_seconds"`
	Buckets          []Bucket `json:"buckets"`
}

// Bucket is one interval of the series. Rates count every request, warm-up
// included; in-flight figures are time averages over the bucket.
type Bucket struct {
	T                  float64 `json:"t"` // bucket start, seconds from the run's start
	OutputTokensPerSec float64 `json:"output_tokens_per_sec"`
	CompletedPerSec    float64 `json:"completed_per_sec"`
	FailedPerSec       float64 `json:"failed_per_sec"`
	InFlightRequests   float64 `json:"in_flight_requests"`
	RunningSessions    float64 `json:"running_sessions"`
}

// percentile is the nearest-rank q-quantile (q in [0,1]) of sorted xs; 0 when empty.
func percentile(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(n))) - 1
	return sorted[min(max(i, 0), n-1)]
}

// summarize sorts ms in place and summarises it.
func summarize(ms []float64) Latency {
	if len(ms) == 0 {
		return Latency{}
	}
	slices.Sort(ms)
	sum := 0.0
	for _, v := range ms {
		sum += v
	}
	l := Latency{Count: len(ms), MeanMs: sum / float64(len(ms)), MinMs: ms[0], MaxMs: ms[len(ms)-1],
		P50Ms: percentile(ms, 0.50), P90Ms: percentile(ms, 0.90), P99Ms: percentile(ms, 0.99), P999Ms: percentile(ms, 0.999)}
	l.CDF = make([]float64, cdfPoints+1)
	for i := range l.CDF {
		l.CDF[i] = percentile(ms, float64(i)/cdfPoints)
	}
	return l
}

func stat(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	slices.Sort(xs)
	sum := 0.0
	for _, v := range xs {
		sum += v
	}
	return Stat{Mean: sum / float64(len(xs)), P50: percentile(xs, 0.5), Max: xs[len(xs)-1]}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func div(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// meetsSLO reports whether a completed request met every set SLO.
func meetsSLO(r *result, s SLO) bool {
	if !r.ok() {
		return false
	}
	if s.TTFT > 0 && (r.outputTokens == 0 || r.ttft > s.TTFT) {
		return false
	}
	if tp, ok := r.tpot(); s.ITL > 0 && ok && tp > s.ITL {
		return false
	}
	return s.E2E <= 0 || r.end-r.start <= s.E2E
}

// buildReport turns the raw records of a run into its report.
func buildReport(cfg *Config, info *pb.ModelInfoResponse, started time.Time, wall time.Duration,
	results []result, sessions []sessionStat, dropped int64) *Report {
	rep := &Report{Config: *cfg, Started: started, WallSeconds: wall.Seconds(), Goodput: Goodput{SLO: cfg.SLO}}
	if info != nil {
		rep.Model = ModelSummary{Name: info.Name, VocabSize: int(info.VocabSize), Layers: int(info.Layers),
			AttentionLayers: len(info.AttentionLayers), Experts: int(info.Experts), ExpertsPerToken: int(info.ExpertsPerToken),
			MaxContext: int(info.MaxContext), RecurrentStateBytes: info.RecurrentStateBytes, KVBytesPerToken: info.KvBytesPerToken}
	}
	rep.Counts.Dropped = int(dropped)

	var ttft, itl, tpot, e2e []float64
	var first, last time.Duration = math.MaxInt64, 0
	errs := map[codes.Code]*ErrorCount{}
	turns := map[int][]*result{}
	for i := range results {
		r := &results[i]
		if r.warmup {
			rep.Counts.WarmupExcluded++
			if !r.ok() {
				rep.Counts.WarmupFailed++
			}
			continue
		}
		rep.Counts.Sent++
		first, last = min(first, r.start), max(last, r.end)
		if !r.ok() {
			rep.Counts.Failed++
			e := errs[r.code]
			if e == nil {
				e = &ErrorCount{Code: r.code.String(), Example: r.err}
				errs[r.code] = e
			}
			e.Count++
			continue
		}
		rep.Counts.Completed++
		if rep.FinishReasons == nil {
			rep.FinishReasons = map[string]int{}
		}
		rep.FinishReasons[strings.ToLower(strings.TrimPrefix(r.finish.String(), "FINISH_REASON_"))]++
		rep.Throughput.OutputTokens += r.outputTokens
		rep.Throughput.PromptTokens += r.promptTokens
		rep.Throughput.CachedTokens += r.cachedTokens
		rep.Throughput.PrefillTokens += r.promptTokens
		if r.stateless {
			rep.Throughput.PrefillTokens -= min(r.cachedTokens, r.promptTokens)
		}
		if r.outputTokens > 0 {
			ttft = append(ttft, ms(r.ttft))
		}
		for _, g := range r.itls {
			itl = append(itl, ms(g))
		}
		if tp, ok := r.tpot(); ok {
			tpot = append(tpot, ms(tp))
		}
		e2e = append(e2e, ms(r.end-r.start))
		if meetsSLO(r, cfg.SLO) {
			rep.Goodput.Met++
		}
		turns[r.turn] = append(turns[r.turn], r)
	}
	window := 0.0
	if rep.Counts.Sent > 0 {
		window = (last - first).Seconds()
	}
	rep.MeasuredSeconds = window
	rep.TTFT, rep.ITL, rep.TPOT, rep.E2E = summarize(ttft), summarize(itl), summarize(tpot), summarize(e2e)
	t := &rep.Throughput
	t.RequestsPerSec = div(float64(rep.Counts.Completed), window)
	t.OutputTokensPerSec = div(float64(t.OutputTokens), window)
	t.PromptTokensPerSec = div(float64(t.PromptTokens), window)
	rep.Goodput.PerSec = div(float64(rep.Goodput.Met), window)
	rep.Goodput.Fraction = div(float64(rep.Goodput.Met), float64(rep.Counts.Sent))

	for _, e := range errs {
		rep.Errors = append(rep.Errors, *e)
	}
	sort.Slice(rep.Errors, func(i, j int) bool {
		a, b := rep.Errors[i], rep.Errors[j]
		return a.Count > b.Count || a.Count == b.Count && a.Code < b.Code
	})
	for turn, rs := range turns {
		ts := TurnSummary{Turn: turn, Completed: len(rs)}
		var tt []float64
		for _, r := range rs {
			ts.MeanPromptTokens += float64(r.promptTokens)
			ts.MeanCachedTokens += float64(r.cachedTokens)
			if r.outputTokens > 0 {
				tt = append(tt, ms(r.ttft))
			}
		}
		ts.MeanPromptTokens /= float64(len(rs))
		ts.MeanCachedTokens /= float64(len(rs))
		slices.Sort(tt)
		ts.TTFTP50Ms, ts.TTFTP90Ms = percentile(tt, 0.5), percentile(tt, 0.9)
		rep.ByTurn = append(rep.ByTurn, ts)
	}
	sort.Slice(rep.ByTurn, func(i, j int) bool { return rep.ByTurn[i].Turn < rep.ByTurn[j].Turn })

	rep.Sessions = summarizeSessions(sessions)
	rep.Counts.Sessions = rep.Sessions.Count
	rep.Series = buildSeries(cfg, wall, results, sessions)
	return rep
}

func summarizeSessions(sessions []sessionStat) SessionSummary {
	var s SessionSummary
	var tok, state, rec, kv []float64
	turns := 0
	for _, ss := range sessions {
		if ss.warmup {
			continue
		}
		s.Count++
		turns += ss.turns
		if ss.server {
			s.ServerSide++
		}
		if ss.measured {
			s.Measured++
			tok = append(tok, float64(ss.tokens))
			state = append(state, float64(ss.state))
			rec = append(rec, float64(ss.recurrent))
			kv = append(kv, float64(ss.kv))
		}
	}
	s.MeanTurns = div(float64(turns), float64(s.Count))
	s.Tokens, s.StateBytes, s.RecurrentBytes, s.KVBytes = stat(tok), stat(state), stat(rec), stat(kv)
	return s
}

// seriesInterval is the bucket width: the configured one, or about 100
// buckets over the run, at least 100ms, rounded to 100ms.
func seriesInterval(cfg *Config, wall time.Duration) time.Duration {
	if cfg.SeriesInterval > 0 {
		return cfg.SeriesInterval
	}
	return max((wall / 100).Round(100*time.Millisecond), 100*time.Millisecond)
}

func buildSeries(cfg *Config, wall time.Duration, results []result, sessions []sessionStat) Series {
	w := seriesInterval(cfg, wall)
	n := int(wall/w) + 1
	s := Series{IntervalSeconds: w.Seconds(), WarmupEndSeconds: cfg.Warmup.Seconds(), Buckets: make([]Bucket, n)}
	b := s.Buckets
	for i := range b {
		b[i].T = (time.Duration(i) * w).Seconds()
	}
	bucket := func(t time.Duration) int { return min(max(int(t/w), 0), n-1) }
	// spread adds the time an interval [from, to) overlaps each bucket, as a
	// fraction of the bucket, to the field get returns.
	spread := func(from, to time.Duration, get func(*Bucket) *float64) {
		for i := bucket(from); i < n && time.Duration(i)*w < to; i++ {
			lo, hi := max(from, time.Duration(i)*w), min(to, time.Duration(i+1)*w)
			if hi > lo {
				*get(&b[i]) += float64(hi-lo) / float64(w)
			}
		}
	}
	secs := w.Seconds()
	firstMeasured := time.Duration(-1)
	for i := range results {
		r := &results[i]
		r.tokenTimes(func(at time.Duration) { b[bucket(at)].OutputTokensPerSec += 1 / secs })
		if r.ok() {
			b[bucket(r.end)].CompletedPerSec += 1 / secs
		} else {
			b[bucket(r.end)].FailedPerSec += 1 / secs
		}
		spread(r.start, r.end, func(b *Bucket) *float64 { return &b.InFlightRequests })
		if !r.warmup && (firstMeasured < 0 || r.start < firstMeasured) {
			firstMeasured = r.start
		}
	}
	if cfg.WarmupRequests > 0 && firstMeasured > cfg.Warmup {
		s.WarmupEndSeconds = firstMeasured.Seconds()
	}
	for _, ss := range sessions {
		spread(ss.start, ss.end, func(b *Bucket) *float64 { return &b.RunningSessions })
	}
	return s
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("loadtest: write json: %w", err)
	}
	return nil
}

// ReadJSON reads a report that WriteJSON wrote.
func ReadJSON(rd io.Reader) (*Report, error) {
	var r Report
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("loadtest: read json: %w", err)
	}
	return &r, nil
}

// describe is a one-line description of the workload.
func (c *Config) describe() string {
	var sb strings.Builder
	if c.Mode == OpenLoop {
		fmt.Fprintf(&sb, "open loop, %g sessions/s (Poisson)", c.Rate)
		if c.BurstEvery > 0 {
			fmt.Fprintf(&sb, " + bursts of %d every %s", c.BurstSize, c.BurstEvery)
		}
	} else {
		fmt.Fprintf(&sb, "closed loop, %d workers", c.Concurrency)
	}
	if c.Duration > 0 {
		fmt.Fprintf(&sb, ", %s", c.Duration)
	}
	if c.Requests > 0 {
		fmt.Fprintf(&sb, ", %d requests", c.Requests)
	}
	if c.Warmup > 0 || c.WarmupRequests > 0 {
		sb.WriteString(", warm-up")
		if c.Warmup > 0 {
			fmt.Fprintf(&sb, " %s", c.Warmup)
		}
		if c.WarmupRequests > 0 {
			fmt.Fprintf(&sb, " %d requests", c.WarmupRequests)
		}
	}
	if c.Conversations != "" {
		fmt.Fprintf(&sb, "; conversations from %s", c.Conversations)
	} else {
		fmt.Fprintf(&sb, "; prompts %s %s", c.PromptTokens, c.PromptKind)
		if c.SharedPrefix > 0 {
			fmt.Fprintf(&sb, " after a shared %d-token prefix", c.SharedPrefix)
		}
		if c.Turns > 1 {
			fmt.Fprintf(&sb, ", %d turns/session", c.Turns)
		}
	}
	fmt.Fprintf(&sb, ", outputs %s tokens", c.OutputTokens)
	return sb.String()
}

// WriteSummary writes the human-readable summary table.
func (r *Report) WriteSummary(w io.Writer) error {
	ew := &errWriter{w: w}
	c := &r.Config
	fmt.Fprintf(ew, "Switchyard load test against %s: %s\n", c.Addr, c.describe())
	m := r.Model
	fmt.Fprintf(ew, "model %s: vocab %d, %d layers (%d attention), %d experts top-%d, max context %d\n",
		m.Name, m.VocabSize, m.Layers, m.AttentionLayers, m.Experts, m.ExpertsPerToken, m.MaxContext)
	if r.Interrupted {
		fmt.Fprintln(ew, "INTERRUPTED: the figures cover the part of the run that was done")
	}
	k := r.Counts
	fmt.Fprintf(ew, "\nrequests    sent %d  completed %d  failed %d  warm-up excluded %d", k.Sent, k.Completed, k.Failed, k.WarmupExcluded)
	if k.Dropped > 0 {
		fmt.Fprintf(ew, "  dropped arrivals %d", k.Dropped)
	}
	fmt.Fprintf(ew, "  (sessions %d, %.1f turns each)\n", k.Sessions, r.Sessions.MeanTurns)
	t := r.Throughput
	fmt.Fprintf(ew, "window      %.2fs measured of %.2fs\n", r.MeasuredSeconds, r.WallSeconds)
	fmt.Fprintf(ew, "throughput  %.2f req/s  %.1f output tok/s  %.1f prompt tok/s  (%d output, %d prompt, %d cached, %d prefilled tokens)\n",
		t.RequestsPerSec, t.OutputTokensPerSec, t.PromptTokensPerSec, t.OutputTokens, t.PromptTokens, t.CachedTokens, t.PrefillTokens)
	if len(r.FinishReasons) > 0 {
		keys := make([]string, 0, len(r.FinishReasons))
		for k := range r.FinishReasons {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprint(ew, "finished   ")
		for _, k := range keys {
			fmt.Fprintf(ew, " %s %d", k, r.FinishReasons[k])
		}
		fmt.Fprintln(ew)
	}
	g := r.Goodput
	fmt.Fprintf(ew, "goodput     %.2f req/s, %.1f%% of requests met SLO %s\n\n", g.PerSec, 100*g.Fraction, g.SLO)

	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "latency (ms)\tn\tmean\tp50\tp90\tp99\tp99.9\tmax\t")
	for _, row := range []struct {
		name string
		l    Latency
	}{{"TTFT", r.TTFT}, {"ITL", r.ITL}, {"TPOT", r.TPOT}, {"E2E", r.E2E}} {
		l := row.l
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, l.Count, l.MeanMs, l.P50Ms, l.P90Ms, l.P99Ms, l.P999Ms, l.MaxMs)
	}
	tw.Flush()
	if len(r.ByTurn) > 1 {
		fmt.Fprintln(ew)
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "turn\tcompleted\tprompt tok\tcached tok\tTTFT p50 ms\tTTFT p90 ms\t")
		for _, ts := range r.ByTurn {
			fmt.Fprintf(tw, "%d\t%d\t%.1f\t%.1f\t%.2f\t%.2f\t\n", ts.Turn+1, ts.Completed, ts.MeanPromptTokens, ts.MeanCachedTokens, ts.TTFTP50Ms, ts.TTFTP90Ms)
		}
		tw.Flush()
	}
	if s := r.Sessions; s.Measured > 0 {
		fmt.Fprintf(ew, "\nsession state after the last turn (%d sessions): tokens mean %.0f max %.0f; state mean %s max %s (recurrent %s, KV mean %s)\n",
			s.Measured, s.Tokens.Mean, s.Tokens.Max, bytesStr(s.StateBytes.Mean), bytesStr(s.StateBytes.Max),
			bytesStr(s.RecurrentBytes.Mean), bytesStr(s.KVBytes.Mean))
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(ew, "\nerrors by gRPC code:")
		for _, e := range r.Errors {
			fmt.Fprintf(ew, "  %-20s %6d  e.g. %s\n", e.Code, e.Count, e.Example)
		}
	} else {
		fmt.Fprintln(ew, "\nerrors: none")
	}
	if r.Metrics != nil {
		r.Metrics.writeSummary(ew)
	}
	return ew.err
}

// bytesStr formats a byte count with a binary unit.
func bytesStr(b float64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%.0f B", b)
	}
	exp, v := 0, b/unit
	for v >= unit && exp < 4 {
		v /= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[exp])
}

// errWriter remembers the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
