package loadtest

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func TestPercentile(t *testing.T) {
	one := []float64{7}
	ten := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	thousand := make([]float64, 1000)
	for i := range thousand {
		thousand[i] = float64(i + 1)
	}
	tests := []struct {
		name string
		xs   []float64
		q    float64
		want float64
	}{
		{"empty", nil, 0.5, 0},
		{"single p0", one, 0, 7},
		{"single p99.9", one, 0.999, 7},
		{"ten p0", ten, 0, 1},
		{"ten p10", ten, 0.10, 1},
		{"ten p11", ten, 0.11, 2},
		{"ten p50", ten, 0.50, 5},
		{"ten p90", ten, 0.90, 9},
		{"ten p99", ten, 0.99, 10},
		{"ten p100", ten, 1, 10},
		{"thousand p50", thousand, 0.50, 500},
		{"thousand p99", thousand, 0.99, 990},
		{"thousand p99.9", thousand, 0.999, 999},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.xs, tt.q); got != tt.want {
				t.Fatalf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	l := summarize([]float64{4, 1, 3, 2})
	want := Latency{Count: 4, MeanMs: 2.5, MinMs: 1, P50Ms: 2, P90Ms: 4, P99Ms: 4, P999Ms: 4, MaxMs: 4}
	cdf := l.CDF
	l.CDF = nil
	if !reflect.DeepEqual(l, want) {
		t.Fatalf("summarize = %+v, want %+v", l, want)
	}
	if len(cdf) != cdfPoints+1 || cdf[0] != 1 || cdf[cdfPoints] != 4 {
		t.Fatalf("CDF has %d points from %v to %v, want %d from 1 to 4", len(cdf), cdf[0], cdf[len(cdf)-1], cdfPoints+1)
	}
	for i := 1; i < len(cdf); i++ {
		if cdf[i] < cdf[i-1] {
			t.Fatalf("CDF decreases at %d: %v", i, cdf)
		}
	}
	if z := summarize(nil); z.Count != 0 || z.CDF != nil {
		t.Fatalf("summarize(nil) = %+v", z)
	}
}

// okResult is a completed request of n tokens: first token after ttft, then one every itl.
func okResult(session, turn int, start, ttft, itl time.Duration, n int) result {
	r := result{session: session, turn: turn, start: start, ttft: ttft, outputTokens: n, promptTokens: 10}
	at := start + ttft
	for range n - 1 {
		at += itl
		r.itls = append(r.itls, itl)
	}
	r.lastToken = at
	r.end = at + time.Millisecond
	return r
}

func TestBuildReport(t *testing.T) {
	ms := time.Millisecond
	cfg := validConfig()
	cfg.SLO = SLO{TTFT: 100 * ms, ITL: 20 * ms}
	cfg.SeriesInterval = time.Second
	results := []result{
		func() result { r := okResult(0, 0, 0, 50*ms, 10*ms, 5); r.warmup = true; return r }(),
		okResult(1, 0, 1000*ms, 50*ms, 10*ms, 11),  // meets SLOs; ends at 1151ms
		okResult(1, 1, 1200*ms, 200*ms, 10*ms, 11), // TTFT too slow
		okResult(2, 0, 1100*ms, 20*ms, 30*ms, 3),   // TPOT too slow
		{session: 3, start: 1500 * ms, end: 1600 * ms, code: codes.Unavailable, err: "down"},
		{session: 4, start: 1700 * ms, end: 2000 * ms, code: codes.Unavailable, err: "down again"},
		{session: 5, start: 1800 * ms, end: 1900 * ms, code: codes.DeadlineExceeded, err: "slow"},
	}
	results[2].cachedTokens = 21
	sessions := []sessionStat{
		{warmup: true, turns: 1, start: 0, end: 100 * ms},
		{server: true, turns: 2, start: 1000 * ms, end: 1500 * ms, measured: true, tokens: 42, state: 3000, recurrent: 1000, kv: 2000},
		{turns: 1, start: 1100 * ms, end: 1200 * ms},
	}
	info := &pb.ModelInfoResponse{Name: "m", VocabSize: 10, AttentionLayers: []int32{2, 5}}
	rep := buildReport(&cfg, info, time.Unix(0, 0), 2500*ms, results, sessions, 3)

	wantCounts := Counts{Sent: 6, Completed: 3, Failed: 3, WarmupExcluded: 1, Dropped: 3, Sessions: 2}
	if rep.Counts != wantCounts {
		t.Fatalf("counts %+v, want %+v", rep.Counts, wantCounts)
	}
	if got := rep.MeasuredSeconds; math.Abs(got-1.0) > 1e-9 { // 1000ms .. 2000ms
		t.Fatalf("measured window %vs, want 1s", got)
	}
	if rep.Goodput.Met != 1 || math.Abs(rep.Goodput.Fraction-1.0/6) > 1e-9 || math.Abs(rep.Goodput.PerSec-1) > 1e-9 {
		t.Fatalf("goodput %+v, want 1 met, 1/6, 1/s", rep.Goodput)
	}
	if rep.Throughput.OutputTokens != 25 || math.Abs(rep.Throughput.OutputTokensPerSec-25) > 1e-9 || rep.Throughput.CachedTokens != 21 {
		t.Fatalf("throughput %+v", rep.Throughput)
	}
	if rep.TTFT.Count != 3 || rep.TTFT.P50Ms != 50 || rep.TTFT.MaxMs != 200 {
		t.Fatalf("TTFT %+v", rep.TTFT)
	}
	if rep.ITL.Count != 22 || rep.TPOT.Count != 3 || rep.TPOT.MaxMs != 30 {
		t.Fatalf("ITL n=%d, TPOT %+v", rep.ITL.Count, rep.TPOT)
	}
	wantErrs := []ErrorCount{{"Unavailable", 2, "down"}, {"DeadlineExceeded", 1, "slow"}}
	if !reflect.DeepEqual(rep.Errors, wantErrs) {
		t.Fatalf("errors %+v, want %+v", rep.Errors, wantErrs)
	}
	if len(rep.ByTurn) != 2 || rep.ByTurn[0].Completed != 2 || rep.ByTurn[1].MeanCachedTokens != 21 {
		t.Fatalf("by turn %+v", rep.ByTurn)
	}
	if s := rep.Sessions; s.Count != 2 || s.ServerSide != 1 || s.Measured != 1 || s.StateBytes.Max != 3000 || s.MeanTurns != 1.5 {
		t.Fatalf("sessions %+v", s)
	}
	if rep.Model.AttentionLayers != 2 {
		t.Fatalf("model %+v", rep.Model)
	}
	// Series: 1s buckets over 2.5s; every token of every request is counted once.
	if n := len(rep.Series.Buckets); n != 3 {
		t.Fatalf("%d buckets, want 3", n)
	}
	var tokens, done, failed float64
	for _, b := range rep.Series.Buckets {
		tokens += b.OutputTokensPerSec
		done += b.CompletedPerSec
		failed += b.FailedPerSec
	}
	if tokens != 30 || done != 4 || failed != 3 {
		t.Fatalf("series sums: tokens %v completed %v failed %v, want 30, 4, 3", tokens, done, failed)
	}
	// Session 1 ran 1000..1500ms and session 2 1100..1200ms: 0.6 session-seconds in bucket 1.
	if got := rep.Series.Buckets[1].RunningSessions; math.Abs(got-0.6) > 1e-9 {
		t.Fatalf("running sessions in bucket 1 = %v, want 0.6", got)
	}
}

func TestBuildReportEmpty(t *testing.T) {
	cfg := validConfig()
	rep := buildReport(&cfg, nil, time.Unix(0, 0), 0, nil, nil, 0)
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteSummary(&buf); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "NaN") {
		t.Fatalf("empty report has NaN:\n%s", buf.String())
	}
}

// sampleReport is a report with every section filled.
func sampleReport() *Report {
	ms := time.Millisecond
	cfg := validConfig()
	cfg.Addr = `<host>&"x"`
	cfg.SLO.E2E = time.Second
	cfg.Turns = 2
	var results []result
	var sessions []sessionStat
	for i := range 50 {
		start := time.Duration(i) * 20 * ms
		results = append(results, okResult(i, i%2, start, time.Duration(10+i)*ms, 2*ms, 8))
		sessions = append(sessions, sessionStat{server: true, turns: 2, start: start, end: start + 50*ms, measured: true, tokens: 80, state: 9000, recurrent: 4000, kv: 5000})
	}
	results = append(results, result{start: 5 * ms, end: 9 * ms, code: codes.ResourceExhausted, err: "queue full <b>"})
	before, _ := parseMetrics(strings.NewReader(metricsBefore), metricPrefix)
	after, _ := parseMetrics(strings.NewReader(metricsAfter), metricPrefix)
	info := &pb.ModelInfoResponse{Name: "tiny", VocabSize: 464, Layers: 6, AttentionLayers: []int32{2, 5}, Experts: 8,
		ExpertsPerToken: 2, MaxContext: 4096, RecurrentStateBytes: 40448, KvBytesPerToken: 512}
	rep := buildReport(&cfg, info, time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), 1200*ms, results, sessions, 0)
	rep.Metrics = diffMetrics("http://127.0.0.1:9/metrics", before, after)
	return rep
}

func TestReportJSONRoundTrip(t *testing.T) {
	rep := sampleReport()
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep, back) {
		t.Fatalf("round trip differs:\nwrote %+v\nread  %+v", rep, back)
	}
}

func TestWriteSummary(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteSummary(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"sent 51", "completed 50", "failed 1", "TTFT", "ITL", "TPOT", "E2E", "p99.9",
		"ResourceExhausted", "goodput", "e2e<=1s", "switchyard_sessions", "switchyard_dispatch_seconds"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteHTML(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if n := strings.Count(out, "<svg "); n != 6 {
		t.Fatalf("%d SVG plots, want 6 (3 CDFs, 3 time series)", n)
	}
	if n := strings.Count(out, "</svg>"); n != 6 {
		t.Fatalf("%d closed SVG plots, want 6", n)
	}
	for _, want := range []string{"TTFT CDF", "ITL and TPOT CDF", "E2E latency CDF", "Output throughput", "In flight",
		"running sessions", "<polyline", "switchyard_dispatch_seconds", "ResourceExhausted"} {
		if !strings.Contains(out, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	for _, bad := range []string{"<host>", "full <b>", "NaN"} {
		if strings.Contains(out, bad) {
			t.Errorf("HTML contains unescaped or invalid %q", bad)
		}
	}
}

func TestNiceTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		want   []float64
	}{
		{0, 1, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{0, 4, []float64{0, 1, 2, 3, 4}},
		{0, 3.9, []float64{0, 1, 2, 3, 4}},
		{12, 47, []float64{10, 20, 30, 40, 50}},
	}
	for _, tt := range tests {
		got := niceTicks(tt.lo, tt.hi, 5)
		if len(got) != len(tt.want) {
			t.Fatalf("niceTicks(%v, %v) = %v, want %v", tt.lo, tt.hi, got, tt.want)
		}
		for i := range got {
			if math.Abs(got[i]-tt.want[i]) > 1e-9 {
				t.Fatalf("niceTicks(%v, %v) = %v, want %v", tt.lo, tt.hi, got, tt.want)
			}
		}
	}
}

// Prefilled tokens are the prompt tokens less what a prefix-cache checkpoint
// held for stateless requests; a session's cached tokens are its history,
// outside its prompt tokens.
func TestPrefillTokens(t *testing.T) {
	ms := time.Millisecond
	cfg := validConfig()
	for _, tc := range []struct {
		name                    string
		stateless               bool
		prompt, cached, prefill int
	}{
		{"stateless, resumed from a checkpoint", true, 100, 64, 36},
		{"stateless, no checkpoint", true, 100, 0, 100},
		{"session turn over its history", false, 10, 21, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := okResult(1, 0, 0, 5*ms, ms, 2)
			r.stateless, r.promptTokens, r.cachedTokens = tc.stateless, tc.prompt, tc.cached
			rep := buildReport(&cfg, &pb.ModelInfoResponse{}, time.Unix(0, 0), time.Second, []result{r}, nil, 0)
			if tp := rep.Throughput; tp.PrefillTokens != tc.prefill || tp.PromptTokens != tc.prompt || tp.CachedTokens != tc.cached {
				t.Fatalf("throughput %+v, want %d prefilled", tp, tc.prefill)
			}
		})
	}
}
