package loadtest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// ErrConfig marks an invalid Config or distribution spec.
var ErrConfig = errors.New("loadtest: invalid config")

func configErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
}

// Mode is how requests are offered.
type Mode string

const (
	// ClosedLoop runs Concurrency workers; each starts its next session as soon
	// as its previous one ends, so the offered load follows the server's speed.
	ClosedLoop Mode = "closed"
	// OpenLoop starts sessions at Poisson arrival times (Rate per second, plus
	// bursts), whatever the server's speed.
	OpenLoop Mode = "open"
)

// PromptKind is how synthetic prompts are made.
type PromptKind string

const (
	// PromptTokens sends token_ids drawn uniformly from [0, vocab_size), never
	// the end-of-text id: prompt lengths are exact.
	PromptTokens PromptKind = "tokens"
	// PromptWords sends text of random English words whose token counts were
	// measured once with the Tokenize RPC: prompt lengths are close to exact.
	PromptWords PromptKind = "words"
)

// DistKind names a length distribution.
type DistKind string

const (
	DistFixed     DistKind = "fixed"     // always Value
	DistUniform   DistKind = "uniform"   // integers in [Min, Max]
	DistNormal    DistKind = "normal"    // Mean ± StdDev, rounded, clamped to >= 1
	DistLogNormal DistKind = "lognormal" // a log-normal with this Mean and StdDev (of the lengths themselves), clamped to >= 1
)

// Dist is a distribution of token counts. Draws are at least 1; Max > 0 also
// caps normal and log-normal draws.
type Dist struct {
	Kind   DistKind `json:"kind"`
	Value  int      `json:"value,omitempty"`  // fixed: tokens
	Min    int      `json:"min,omitempty"`    // uniform: lowest, tokens
	Max    int      `json:"max,omitempty"`    // uniform: highest; normal/lognormal: cap (0 = none), tokens
	Mean   float64  `json:"mean,omitempty"`   // normal/lognormal: mean, tokens
	StdDev float64  `json:"stddev,omitempty"` // normal/lognormal: standard deviation, tokens
}

// Fixed returns the distribution that is always n.
func Fixed(n int) Dist { return Dist{Kind: DistFixed, Value: n} }

// ParseDist parses "N", "fixed:N", "uniform:MIN:MAX", "normal:MEAN:STDDEV[:MAX]"
// or "lognormal:MEAN:STDDEV[:MAX]".
func ParseDist(s string) (Dist, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	num := func(i int) (float64, error) {
		v, err := strconv.ParseFloat(parts[i], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, configErr("distribution %q: %q is not a number", s, parts[i])
		}
		return v, nil
	}
	var d Dist
	switch kind := DistKind(strings.ToLower(parts[0])); {
	case len(parts) == 1:
		n, err := strconv.Atoi(parts[0])
		if err != nil {
			return d, configErr("distribution %q: want N, fixed:N, uniform:MIN:MAX, normal:MEAN:STDDEV or lognormal:MEAN:STDDEV", s)
		}
		d = Fixed(n)
	case kind == DistFixed && len(parts) == 2:
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			return d, configErr("distribution %q: %q is not an integer", s, parts[1])
		}
		d = Fixed(n)
	case kind == DistUniform && len(parts) == 3:
		lo, err1 := strconv.Atoi(parts[1])
		hi, err2 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil {
			return d, configErr("distribution %q: bounds must be integers", s)
		}
		d = Dist{Kind: DistUniform, Min: lo, Max: hi}
	case (kind == DistNormal || kind == DistLogNormal) && (len(parts) == 3 || len(parts) == 4):
		m, err := num(1)
		if err != nil {
			return d, err
		}
		sd, err := num(2)
		if err != nil {
			return d, err
		}
		d = Dist{Kind: kind, Mean: m, StdDev: sd}
		if len(parts) == 4 {
			if d.Max, err = strconv.Atoi(parts[3]); err != nil {
				return d, configErr("distribution %q: cap %q is not an integer", s, parts[3])
			}
		}
	default:
		return d, configErr("distribution %q: want N, fixed:N, uniform:MIN:MAX, normal:MEAN:STDDEV[:MAX] or lognormal:MEAN:STDDEV[:MAX]", s)
	}
	return d, d.Validate()
}

// String is the spec ParseDist reads back.
func (d Dist) String() string {
	switch d.Kind {
	case DistFixed:
		return strconv.Itoa(d.Value)
	case DistUniform:
		return fmt.Sprintf("uniform:%d:%d", d.Min, d.Max)
	case DistNormal, DistLogNormal:
		s := fmt.Sprintf("%s:%g:%g", d.Kind, d.Mean, d.StdDev)
		if d.Max > 0 {
			s += ":" + strconv.Itoa(d.Max)
		}
		return s
	}
	return string(d.Kind)
}

// Validate checks the distribution's parameters.
func (d Dist) Validate() error {
	switch d.Kind {
	case DistFixed:
		if d.Value < 1 {
			return configErr("fixed length must be >= 1, got %d", d.Value)
		}
	case DistUniform:
		if d.Min < 1 || d.Max < d.Min {
			return configErr("uniform bounds must satisfy 1 <= min <= max, got %d:%d", d.Min, d.Max)
		}
	case DistNormal, DistLogNormal:
		if d.Mean < 1 || d.StdDev < 0 {
			return configErr("%s needs mean >= 1 and stddev >= 0, got %g:%g", d.Kind, d.Mean, d.StdDev)
		}
		if d.Max < 0 {
			return configErr("%s cap must be >= 0, got %d", d.Kind, d.Max)
		}
	default:
		return configErr("unknown distribution kind %q", d.Kind)
	}
	return nil
}

// Sample draws one length (>= 1).
func (d Dist) Sample(r *rand.Rand) int {
	var v float64
	switch d.Kind {
	case DistFixed:
		return d.Value
	case DistUniform:
		return d.Min + r.IntN(d.Max-d.Min+1)
	case DistNormal:
		v = d.Mean + d.StdDev*r.NormFloat64()
	case DistLogNormal:
		// Choose mu, sigma so the log-normal's own mean and stddev are Mean and StdDev.
		s2 := math.Log1p(d.StdDev * d.StdDev / (d.Mean * d.Mean))
		mu := math.Log(d.Mean) - s2/2
		v = math.Exp(mu + math.Sqrt(s2)*r.NormFloat64())
	}
	n := int(math.Round(v))
	if d.Max > 0 && n > d.Max {
		n = d.Max
	}
	return max(n, 1)
}

// maxValue is the largest length the distribution can draw (0 = unbounded).
func (d Dist) maxValue() int {
	if d.Kind == DistFixed {
		return d.Value
	}
	return d.Max
}

// SLO holds the per-request latency objectives that define goodput. A zero
// threshold is not checked.
type SLO struct {
	TTFT time.Duration `json:"ttft"` // time to the first token
	ITL  time.Duration `json:"itl"`  // the request's mean inter-token latency (TPOT)
	E2E  time.Duration `json:"e2e"`  // whole request
}

func (s SLO) set() bool { return s.TTFT > 0 || s.ITL > 0 || s.E2E > 0 }

func (s SLO) String() string {
	var parts []string
	for _, p := range []struct {
		n string
		d time.Duration
	}{{"ttft", s.TTFT}, {"itl", s.ITL}, {"e2e", s.E2E}} {
		if p.d > 0 {
			parts = append(parts, p.n+"<="+p.d.String())
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// Sampling mirrors the API's SamplingParams. The zero value is greedy. With
// Temperature > 0 each request uses seed Seed + its sequence number.
type Sampling struct {
	Temperature       float32 `json:"temperature"`
	TopK              int32   `json:"top_k"`
	TopP              float32 `json:"top_p"`
	MinP              float32 `json:"min_p"`
	RepetitionPenalty float32 `json:"repetition_penalty"`
	Seed              uint64  `json:"seed"`
}

// Config describes a load test. Durations are wall time; lengths are tokens.
type Config struct {
	// Addr is the public API address, HOST:PORT. Required.
	Addr string `json:"addr"`
	// TLS dials with TLS (system roots, or TLSCAFile).
	TLS bool `json:"tls"`
	// TLSCAFile is a PEM CA bundle that signs the server (implies TLS).
	TLSCAFile string `json:"tls_ca_file,omitempty"`
	// TLSServerName overrides the name checked in the server certificate.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// APIToken is sent as a bearer token on every call (the trunk's --api-token).
	// It is never written to a report.
	APIToken string `json:"-"`
	// Conns is the number of gRPC connections requests are spread over.
	Conns int `json:"conns"`

	// Mode is ClosedLoop or OpenLoop.
	Mode Mode `json:"mode"`
	// Concurrency is the number of closed-loop workers (sessions in flight).
	Concurrency int `json:"concurrency,omitempty"`
	// Rate is the open-loop session arrival rate, per second.
	Rate float64 `json:"rate,omitempty"`
	// BurstEvery adds BurstSize extra simultaneous arrivals every BurstEvery
	// (open loop; 0 = no bursts).
	BurstEvery time.Duration `json:"burst_every,omitempty"`
	// BurstSize is the number of arrivals in each burst.
	BurstSize int `json:"burst_size,omitempty"`
	// MaxInFlight caps open-loop sessions in flight; arrivals beyond it are
	// dropped and counted (0 = no cap).
	MaxInFlight int `json:"max_in_flight,omitempty"`

	// Duration is how long requests are started after the Warmup period
	// (0 = until Requests are done).
	Duration time.Duration `json:"duration"`
	// Requests is the number of measured requests (turns) to send (0 = until
	// Duration ends). When both are set the first limit reached ends the run.
	Requests int `json:"requests,omitempty"`
	// Warmup is a period at the start whose requests are excluded from stats.
	Warmup time.Duration `json:"warmup,omitempty"`
	// WarmupRequests is a number of first requests excluded from stats.
	WarmupRequests int `json:"warmup_requests,omitempty"`

	// PromptTokens and OutputTokens are the per-turn lengths of synthetic
	// prompts and of generations (max_tokens).
	PromptTokens Dist `json:"prompt_tokens"`
	OutputTokens Dist `json:"output_tokens"`
	// PromptKind makes synthetic prompts from token ids or words.
	PromptKind PromptKind `json:"prompt_kind"`
	// SharedPrefix puts the same SharedPrefix tokens (a common system prompt,
	// drawn once from Seed) before the first prompt of every synthetic
	// session, so that a server's prefix cache can reuse them: each first
	// turn is SharedPrefix + PromptTokens tokens (0 = none).
	SharedPrefix int `json:"shared_prefix,omitempty"`
	// Turns is the number of turns of each synthetic session; more than one
	// turn continues a server-side session.
	Turns int `json:"turns"`
	// Conversations is a JSONL file used instead of synthetic prompts, one
	// session per line: {"turns": ["user text", ...], "max_tokens": N} (sent
	// with Chat) or {"prompt": "text", "max_tokens": N} (sent with Generate).
	// max_tokens is optional (default: drawn from OutputTokens). Lines are used
	// in order, round robin.
	Conversations string `json:"conversations,omitempty"`
	// HoldSessions keeps every server-side session until the run ends (and
	// makes single-turn sessions server-side too), to measure the memory of
	// many resident sessions.
	HoldSessions bool `json:"hold_sessions,omitempty"`
	// SessionStats reads each server-side session's size (GetSession) after
	// its last turn.
	SessionStats bool `json:"session_stats"`

	// Sampling, IgnoreEOS and Stop shape each generation. IgnoreEOS keeps
	// generating to max_tokens so output lengths are as configured.
	Sampling  Sampling `json:"sampling"`
	IgnoreEOS bool     `json:"ignore_eos"`
	Stop      []string `json:"stop,omitempty"`

	// SLO defines goodput.
	SLO SLO `json:"slo"`

	// RequestTimeout bounds each Generate/Chat call (0 = none).
	RequestTimeout time.Duration `json:"request_timeout"`
	// RPCTimeout bounds each unary call (ModelInfo, Tokenize, session admin).
	RPCTimeout time.Duration `json:"rpc_timeout"`
	// DrainTimeout bounds the wait for in-flight requests once the run ends;
	// those still running then are cancelled.
	DrainTimeout time.Duration `json:"drain_timeout"`

	// Seed makes the workload reproducible (lengths, prompts, arrivals).
	Seed uint64 `json:"seed"`
	// SeriesInterval is the width of the report's time-series buckets
	// (0 = about 100 buckets over the run, at least 100ms).
	SeriesInterval time.Duration `json:"series_interval,omitempty"`
	// MetricsURL is a Prometheus text endpoint scraped before and after the run
	// ("" = none). Its switchyard_* series are reported.
	MetricsURL string `json:"metrics_url,omitempty"`
}

// DefaultConfig returns a 30-second closed-loop test with 8 workers, 128-token
// prompts and 64-token outputs, greedy sampling and no SLOs.
func DefaultConfig() Config {
	return Config{
		Conns:          1,
		Mode:           ClosedLoop,
		Concurrency:    8,
		Duration:       30 * time.Second,
		PromptTokens:   Fixed(128),
		OutputTokens:   Fixed(64),
		PromptKind:     PromptTokens,
		Turns:          1,
		SessionStats:   true,
		IgnoreEOS:      true,
		RequestTimeout: 5 * time.Minute,
		RPCTimeout:     30 * time.Second,
		DrainTimeout:   time.Minute,
		Seed:           1,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case c.Addr == "":
		return configErr("addr is required")
	case c.Conns < 1:
		return configErr("conns must be >= 1, got %d", c.Conns)
	case c.Duration < 0 || c.Requests < 0 || c.Warmup < 0 || c.WarmupRequests < 0:
		return configErr("duration, requests and warm-up must not be negative")
	case c.Duration == 0 && c.Requests == 0:
		return configErr("set a duration or a request count")
	case c.Turns < 1:
		return configErr("turns must be >= 1, got %d", c.Turns)
	case c.RequestTimeout < 0 || c.RPCTimeout <= 0 || c.DrainTimeout <= 0:
		return configErr("request timeout must be >= 0, rpc and drain timeouts > 0")
	case c.SLO.TTFT < 0 || c.SLO.ITL < 0 || c.SLO.E2E < 0:
		return configErr("SLO thresholds must not be negative")
	case c.SeriesInterval != 0 && c.SeriesInterval < 10*time.Millisecond:
		return configErr("series interval must be 0 (automatic) or >= 10ms, got %s", c.SeriesInterval)
	case c.Sampling.Temperature < 0 || c.Sampling.TopK < 0 || c.Sampling.TopP < 0 || c.Sampling.TopP > 1 ||
		c.Sampling.MinP < 0 || c.Sampling.MinP >= 1:
		return configErr("sampling: temperature, top_k >= 0, top_p in [0,1], min_p in [0,1)")
	case c.PromptKind != PromptTokens && c.PromptKind != PromptWords:
		return configErr("prompt kind must be %q or %q, got %q", PromptTokens, PromptWords, c.PromptKind)
	case c.SharedPrefix < 0:
		return configErr("shared prefix must be >= 0, got %d", c.SharedPrefix)
	case c.SharedPrefix > 0 && c.Conversations != "":
		return configErr("a shared prefix applies to synthetic prompts, not to a conversations file")
	}
	switch c.Mode {
	case ClosedLoop:
		if c.Concurrency < 1 {
			return configErr("closed loop needs concurrency >= 1, got %d", c.Concurrency)
		}
	case OpenLoop:
		if !(c.Rate > 0) || math.IsInf(c.Rate, 0) {
			return configErr("open loop needs a rate > 0, got %v", c.Rate)
		}
		if c.BurstEvery < 0 || c.BurstSize < 0 || (c.BurstEvery > 0) != (c.BurstSize > 0) {
			return configErr("bursts need both burst-every > 0 and burst-size > 0")
		}
		if c.MaxInFlight < 0 {
			return configErr("max in flight must be >= 0")
		}
	default:
		return configErr("mode must be %q or %q, got %q", ClosedLoop, OpenLoop, c.Mode)
	}
	if err := c.OutputTokens.Validate(); err != nil {
		return fmt.Errorf("output tokens: %w", err)
	}
	if c.Conversations == "" {
		if err := c.PromptTokens.Validate(); err != nil {
			return fmt.Errorf("prompt tokens: %w", err)
		}
	}
	return nil
}
