// Package loadtest drives a Switchyard cluster's public gRPC API with a
// configurable workload and reports what a user of the cluster sees: time to
// first token (TTFT), inter-token latency (ITL) and time per output token
// (TPOT), end-to-end latency, throughput, goodput under SLOs and errors by gRPC
// code, plus the server's own switchyard_* Prometheus series when a /metrics
// URL is given.
//
// Workloads run closed loop (N workers, each starting its next session when
// the previous one ends) or open loop (sessions arrive as a Poisson process at
// a rate, optionally with bursts). A session is one or more turns; sessions of
// more than one turn continue on a server-side session (CreateSession, then
// Generate or Chat with session_id per turn, then DeleteSession), so later
// turns reuse the state of earlier ones instead of re-reading their history.
// SharedPrefix puts the same tokens (a system prompt) before every session's
// first prompt, to measure a server's prefix cache: the report's
// PrefillTokens is what the server computed after reusing cached prefixes.
//
// The package imports only the public proto client, gRPC and the standard
// library; it never links the node packages.
//
//	cfg := loadtest.DefaultConfig()
//	cfg.Addr = "127.0.0.1:7070"
//	cfg.Concurrency = 8
//	cfg.Duration = 10 * time.Second
//	rep, err := loadtest.Run(ctx, cfg, os.Stderr)
//	if err != nil { ... }
//	rep.WriteSummary(os.Stdout)
//	rep.WriteHTML(f) // latency CDFs, throughput and running sessions over time
package loadtest
