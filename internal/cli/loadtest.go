package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/switchyard-serving/switchyard/loadtest"
)

func init() {
	register("loadtest", "drive a cluster's public API and report TTFT, ITL, throughput and goodput", runLoadtest)
}

// distFlag is a flag.Value holding a loadtest.Dist.
type distFlag struct{ d *loadtest.Dist }

func (f distFlag) String() string {
	if f.d == nil || f.d.Kind == "" {
		return ""
	}
	return f.d.String()
}

func (f distFlag) Set(s string) error {
	d, err := loadtest.ParseDist(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("loadtest", stderr)
	cfg := loadtest.DefaultConfig()
	fs.StringVar(&cfg.Addr, "addr", "", "public API address HOST:PORT (required)")
	fs.BoolVar(&cfg.TLS, "tls", false, "dial with TLS (system roots)")
	fs.StringVar(&cfg.TLSCAFile, "tls-ca", "", "PEM CA that signs the server (implies --tls)")
	fs.StringVar(&cfg.TLSServerName, "tls-server-name", "", "server name to verify in its certificate")
	fs.StringVar(&cfg.APIToken, "api-token", os.Getenv("SWITCHYARD_API_TOKEN"), "bearer token for the public API (default $SWITCHYARD_API_TOKEN)")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "gRPC connections to spread requests over")

	fs.IntVar(&cfg.SharedPrefix, "shared-prefix", cfg.SharedPrefix, "tokens of a common prefix (a system prompt) before every session's first prompt")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "closed loop: concurrent sessions (workers)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: Poisson session arrivals per second (excludes --concurrency)")
	fs.DurationVar(&cfg.BurstEvery, "burst-every", 0, "open loop: add a burst of --burst-size arrivals this often")
	fs.IntVar(&cfg.BurstSize, "burst-size", 0, "open loop: arrivals per burst")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", 0, "open loop: drop (and count) arrivals beyond this many sessions in flight (0 = no cap)")

	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to start requests after the warm-up (0 = until --requests)")
	fs.IntVar(&cfg.Requests, "requests", 0, "measured requests (turns) to send (0 = until --duration)")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "warm-up period excluded from the stats")
	fs.IntVar(&cfg.WarmupRequests, "warmup-requests", 0, "first requests excluded from the stats")

	promptTokens := fs.Int("prompt-tokens", 128, "synthetic prompt length per turn, tokens")
	fs.Var(distFlag{&cfg.PromptTokens}, "prompt-dist", "prompt length distribution: N, uniform:MIN:MAX, normal:MEAN:SD[:MAX], lognormal:MEAN:SD[:MAX]")
	outputTokens := fs.Int("output-tokens", 64, "max_tokens per turn")
	fs.Var(distFlag{&cfg.OutputTokens}, "output-dist", "output length distribution (as --prompt-dist)")
	promptKind := fs.String("prompt-kind", string(cfg.PromptKind), "synthetic prompts: tokens (random ids, exact lengths) or words (random words, via Tokenize)")
	fs.StringVar(&cfg.Conversations, "conversations", "", `JSONL file, one session per line: {"turns": ["...", ...]} or {"prompt": "...", "max_tokens": N}`)
	fs.IntVar(&cfg.Turns, "turns", cfg.Turns, "turns per synthetic session (> 1 continues a server-side session)")
	fs.BoolVar(&cfg.HoldSessions, "hold-sessions", false, "keep every session until the end of the run (memory experiments)")
	fs.BoolVar(&cfg.SessionStats, "session-stats", cfg.SessionStats, "read each server-side session's size after its last turn")

	fs.DurationVar(&cfg.SLO.TTFT, "slo-ttft", 0, "goodput SLO: time to first token (0 = not checked)")
	fs.DurationVar(&cfg.SLO.ITL, "slo-itl", 0, "goodput SLO: mean inter-token latency per request (0 = not checked)")
	fs.DurationVar(&cfg.SLO.E2E, "slo-e2e", 0, "goodput SLO: end-to-end latency (0 = not checked)")

	temp := fs.Float64("temperature", 0, "sampling temperature (0 = greedy)")
	topK := fs.Int("top-k", 0, "sample among the k most likely tokens (0 = off)")
	topP := fs.Float64("top-p", 0, "nucleus sampling threshold (0 = off)")
	seed := fs.Uint64("seed", cfg.Seed, "workload and sampling seed")
	fs.BoolVar(&cfg.IgnoreEOS, "ignore-eos", cfg.IgnoreEOS, "generate to max_tokens even past end-of-text")
	fs.DurationVar(&cfg.RequestTimeout, "timeout", cfg.RequestTimeout, "per-request timeout (0 = none)")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long in-flight requests may finish once the run ends")
	fs.DurationVar(&cfg.SeriesInterval, "series-interval", 0, "time-series bucket width (0 = automatic)")

	jsonOut := fs.String("json", "", "write the JSON report to this file")
	htmlOut := fs.String("html", "", "write the HTML report (with plots) to this file")
	fs.StringVar(&cfg.MetricsURL, "metrics", "", "Prometheus /metrics URL to read before and after the run")
	quiet := fs.Bool("quiet", false, "no live progress line")
	if err := parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case set["prompt-tokens"] && set["prompt-dist"]:
		return fmt.Errorf("--prompt-tokens and --prompt-dist are mutually exclusive")
	case set["output-tokens"] && set["output-dist"]:
		return fmt.Errorf("--output-tokens and --output-dist are mutually exclusive")
	case set["rate"] && set["concurrency"]:
		return fmt.Errorf("--rate (open loop) and --concurrency (closed loop) are mutually exclusive")
	case (set["burst-every"] || set["burst-size"]) && !set["rate"]:
		return fmt.Errorf("--burst-every and --burst-size need --rate")
	case set["conversations"] && (set["prompt-tokens"] || set["prompt-dist"] || set["prompt-kind"]):
		return fmt.Errorf("--conversations replaces the synthetic prompt flags")
	case set["requests"] && !set["duration"]:
		cfg.Duration = 0 // the request count alone ends the run
	}
	if !set["prompt-dist"] {
		cfg.PromptTokens = loadtest.Fixed(*promptTokens)
	}
	if !set["output-dist"] {
		cfg.OutputTokens = loadtest.Fixed(*outputTokens)
	}
	if set["rate"] {
		cfg.Mode = loadtest.OpenLoop
	}
	cfg.PromptKind = loadtest.PromptKind(strings.ToLower(*promptKind))
	cfg.Seed = *seed
	cfg.Sampling = loadtest.Sampling{Temperature: float32(*temp), TopK: int32(*topK), TopP: float32(*topP), Seed: *seed}
	if err := cfg.Validate(); err != nil {
		return err
	}
	var progress io.Writer
	if !*quiet {
		progress = stderr
	}
	rep, runErr := loadtest.Run(ctx, cfg, progress)
	if rep == nil {
		return runErr
	}
	if err := rep.WriteSummary(stdout); err != nil {
		return err
	}
	var errs []error
	if runErr != nil {
		errs = append(errs, runErr)
	}
	if *jsonOut != "" {
		errs = append(errs, writeFile(*jsonOut, rep.WriteJSON))
	}
	if *htmlOut != "" {
		errs = append(errs, writeFile(*htmlOut, rep.WriteHTML))
	}
	return errors.Join(errs...)
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
