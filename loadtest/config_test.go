package loadtest

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Addr = "127.0.0.1:1"
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		ok     bool
	}{
		{"default with addr", func(*Config) {}, true},
		{"no addr", func(c *Config) { c.Addr = "" }, false},
		{"no duration nor requests", func(c *Config) { c.Duration, c.Requests = 0, 0 }, false},
		{"requests only", func(c *Config) { c.Duration, c.Requests = 0, 10 }, true},
		{"closed loop without workers", func(c *Config) { c.Concurrency = 0 }, false},
		{"open loop", func(c *Config) { c.Mode, c.Rate = OpenLoop, 5 }, true},
		{"open loop without rate", func(c *Config) { c.Mode = OpenLoop }, false},
		{"open loop infinite rate", func(c *Config) { c.Mode, c.Rate = OpenLoop, math.Inf(1) }, false},
		{"bursts", func(c *Config) { c.Mode, c.Rate, c.BurstEvery, c.BurstSize = OpenLoop, 5, time.Second, 4 }, true},
		{"burst without size", func(c *Config) { c.Mode, c.Rate, c.BurstEvery = OpenLoop, 5, time.Second }, false},
		{"unknown mode", func(c *Config) { c.Mode = "sideways" }, false},
		{"zero turns", func(c *Config) { c.Turns = 0 }, false},
		{"bad prompt dist", func(c *Config) { c.PromptTokens = Dist{Kind: DistUniform, Min: 5, Max: 2} }, false},
		{"prompt dist ignored with conversations", func(c *Config) { c.PromptTokens, c.Conversations = Dist{}, "x.jsonl" }, true},
		{"bad output dist", func(c *Config) { c.OutputTokens = Fixed(0) }, false},
		{"negative SLO", func(c *Config) { c.SLO.TTFT = -1 }, false},
		{"bad top_p", func(c *Config) { c.Sampling.TopP = 2 }, false},
		{"bad prompt kind", func(c *Config) { c.PromptKind = "emoji" }, false},
		{"no connections", func(c *Config) { c.Conns = 0 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			err := c.Validate()
			if tt.ok && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrConfig) {
				t.Fatalf("Validate = %v, want an ErrConfig", err)
			}
		})
	}
}

func TestParseDist(t *testing.T) {
	tests := []struct {
		in   string
		want Dist
		bad  bool
	}{
		{in: "128", want: Fixed(128)},
		{in: "fixed:7", want: Fixed(7)},
		{in: "uniform:64:256", want: Dist{Kind: DistUniform, Min: 64, Max: 256}},
		{in: "normal:100:20", want: Dist{Kind: DistNormal, Mean: 100, StdDev: 20}},
		{in: "lognormal:100:50:400", want: Dist{Kind: DistLogNormal, Mean: 100, StdDev: 50, Max: 400}},
		{in: "0", bad: true},
		{in: "uniform:9:3", bad: true},
		{in: "uniform:1", bad: true},
		{in: "normal:abc:1", bad: true},
		{in: "normal:10:-1", bad: true},
		{in: "poisson:3", bad: true},
		{in: "", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDist(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("ParseDist(%q) = %+v, %v; want an ErrConfig", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDist(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			back, err := ParseDist(got.String())
			if err != nil || back != got {
				t.Fatalf("round trip of %q via %q = %+v, %v", tt.in, got.String(), back, err)
			}
		})
	}
}

func TestDistSample(t *testing.T) {
	tests := []struct {
		d         Dist
		mean, tol float64 // expected sample mean and relative tolerance
		lo, hi    int     // every draw lies in [lo, hi]
	}{
		{Fixed(9), 9, 0, 9, 9},
		{Dist{Kind: DistUniform, Min: 10, Max: 30}, 20, 0.03, 10, 30},
		{Dist{Kind: DistNormal, Mean: 200, StdDev: 20}, 200, 0.02, 1, math.MaxInt},
		{Dist{Kind: DistLogNormal, Mean: 100, StdDev: 60}, 100, 0.05, 1, math.MaxInt},
		{Dist{Kind: DistNormal, Mean: 5, StdDev: 50, Max: 40}, 0, -1, 1, 40},
	}
	for _, tt := range tests {
		t.Run(tt.d.String(), func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			const n = 20000
			sum := 0.0
			for range n {
				v := tt.d.Sample(r)
				if v < tt.lo || v > tt.hi {
					t.Fatalf("draw %d outside [%d, %d]", v, tt.lo, tt.hi)
				}
				sum += float64(v)
			}
			if tt.tol >= 0 {
				if got := sum / n; math.Abs(got-tt.mean) > tt.tol*tt.mean {
					t.Fatalf("mean %.2f, want %.2f ± %.0f%%", got, tt.mean, 100*tt.tol)
				}
			}
		})
	}
}
