package loadtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// result is one request (one turn) as the client saw it. Times are offsets
// from the run's start; latencies are durations.
type result struct {
	session, turn, seq int
	warmup             bool
	start, end         time.Duration
	ttft               time.Duration   // to the first chunk with tokens (0: no token)
	lastToken          time.Duration   // offset of the last token's arrival
	itls               []time.Duration // one per token after those of the first chunk
	outputTokens       int             // tokens received
	promptTokens       int             // usage.prompt_tokens
	cachedTokens       int             // usage.cached_tokens
	stateless          bool            // sent without a server-side session
	finish             pb.FinishReason
	code               codes.Code
	err                string
}

func (r *result) ok() bool { return r.code == codes.OK }

// tokenTimes calls f with the arrival offset of each output token: the
// first chunk's tokens at TTFT, each later one an ITL after its predecessor.
func (r *result) tokenTimes(f func(time.Duration)) {
	if r.outputTokens == 0 {
		return
	}
	at := r.start + r.ttft
	for range r.outputTokens - len(r.itls) {
		f(at)
	}
	for _, g := range r.itls {
		at += g
		f(at)
	}
}

// tpot is the request's mean time per output token after the first.
func (r *result) tpot() (time.Duration, bool) {
	if r.outputTokens < 2 {
		return 0, false
	}
	return (r.lastToken - r.start - r.ttft) / time.Duration(r.outputTokens-1), true
}

// sessionStat is one session as the client saw it.
type sessionStat struct {
	warmup     bool
	server     bool
	turns      int
	start, end time.Duration
	// From GetSession after the last turn (when SessionStats and server-side).
	measured                    bool
	tokens                      int
	state, recurrent, kv, freed int64
}

// runner holds one run's shared state. Counters are atomics read by the
// progress loop; mu guards results, sessions and held.
type runner struct {
	cfg   Config
	conns []*grpc.ClientConn
	clis  []pb.SwitchyardClient
	wl    *workload
	start time.Time

	stop     chan struct{} // closed when no new request may start
	stopOnce sync.Once

	seq, measured, sessSeq atomic.Int64
	inReq, inSess          atomic.Int64
	completed, failed      atomic.Int64
	tokens, dropped        atomic.Int64

	mu       sync.Mutex
	results  []result
	sessions []sessionStat
	held     []string
}

// Run runs the load test described by cfg and returns its report. It writes a
// progress line to progress at most every 500ms (nil: no progress). When ctx
// ends early the run stops, in-flight requests are cancelled, and the report of
// what was done is returned with an error wrapping ctx.Err().
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var convs []conversation
	if cfg.Conversations != "" {
		var err error
		if convs, err = loadConversations(cfg.Conversations); err != nil {
			return nil, err
		}
	}
	r := &runner{cfg: cfg, stop: make(chan struct{})}
	defer r.closeConns()
	if err := r.dial(); err != nil {
		return nil, err
	}
	cctx, cancel := r.rpcCtx(ctx)
	info, err := r.clis[0].ModelInfo(cctx, &pb.ModelInfoRequest{})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("loadtest: model info from %s: %w", cfg.Addr, err)
	}
	if r.wl, err = newWorkload(&r.cfg, info, convs); err != nil {
		return nil, err
	}
	if convs == nil && cfg.PromptKind == PromptWords {
		if err := r.wl.measureWords(ctx, r.clis[0], r.rpcCtx); err != nil {
			return nil, err
		}
	}
	r.wl.preparePrefix()
	var before *scrape
	if cfg.MetricsURL != "" {
		before = scrapeMetrics(ctx, cfg.MetricsURL, cfg.RPCTimeout)
	}
	// The server's window starts where the report's does: at the end of a
	// time-based warm-up (a second scrape then replaces the first).
	var warmScrape chan *scrape
	if cfg.MetricsURL != "" && cfg.Warmup > 0 {
		warmScrape = make(chan *scrape, 1)
		wt := time.AfterFunc(cfg.Warmup, func() { warmScrape <- scrapeMetrics(ctx, cfg.MetricsURL, cfg.RPCTimeout) })
		defer wt.Stop()
	}

	r.start = time.Now()
	progDone := make(chan struct{})
	var progWG sync.WaitGroup
	if progress != nil {
		progWG.Go(func() { r.progressLoop(progress, progDone) })
	}
	reqCtx, cancelReqs := context.WithCancel(ctx)
	defer cancelReqs()
	var limit *time.Timer
	if cfg.Duration > 0 {
		limit = time.AfterFunc(cfg.Warmup+cfg.Duration, r.halt)
	}
	stopCtx := context.AfterFunc(ctx, r.halt)

	var wg sync.WaitGroup
	if cfg.Mode == OpenLoop {
		r.openLoop(reqCtx, &wg)
	} else {
		r.closedLoop(reqCtx, &wg)
	}
	// No new work starts now; give in-flight requests DrainTimeout to finish.
	<-r.stop
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	drain := time.NewTimer(cfg.DrainTimeout)
	select {
	case <-drained:
	case <-drain.C:
		cancelReqs()
		<-drained
	}
	drain.Stop()
	end := time.Now()
	if limit != nil {
		limit.Stop()
	}
	stopCtx()
	close(progDone)
	progWG.Wait()

	r.deleteHeld(ctx)
	var after *scrape
	if cfg.MetricsURL != "" {
		after = scrapeMetrics(context.WithoutCancel(ctx), cfg.MetricsURL, cfg.RPCTimeout)
	}
	rep := buildReport(&r.cfg, info, r.start, end.Sub(r.start), r.results, r.sessions, r.dropped.Load())
	if cfg.MetricsURL != "" {
		select {
		case s := <-warmScrape:
			if s.err == nil {
				before = s
			}
		default: // the run ended within the warm-up
		}
		rep.Metrics = diffMetrics(cfg.MetricsURL, before, after)
		rep.Metrics.Agreement = compareLatencies(rep, &r.cfg, rep.Metrics, runHistograms(before, after))
	}
	if err := ctx.Err(); err != nil {
		rep.Interrupted = true
		return rep, fmt.Errorf("loadtest: run interrupted: %w", err)
	}
	return rep, nil
}

func (r *runner) dial() error {
	creds := insecure.NewCredentials()
	if r.cfg.TLS || r.cfg.TLSCAFile != "" {
		tc := &tls.Config{ServerName: r.cfg.TLSServerName, MinVersion: tls.VersionTLS12}
		if r.cfg.TLSCAFile != "" {
			pem, err := os.ReadFile(r.cfg.TLSCAFile)
			if err != nil {
				return fmt.Errorf("loadtest: CA file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return fmt.Errorf("loadtest: CA file %s holds no PEM certificate", r.cfg.TLSCAFile)
			}
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if r.cfg.APIToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(rpc.BearerToken(r.cfg.APIToken)))
	}
	for range r.cfg.Conns {
		conn, err := grpc.NewClient(r.cfg.Addr, opts...)
		if err != nil {
			return fmt.Errorf("loadtest: dial %s: %w", r.cfg.Addr, err)
		}
		r.conns = append(r.conns, conn)
		r.clis = append(r.clis, pb.NewSwitchyardClient(conn))
	}
	return nil
}

func (r *runner) closeConns() {
	for _, c := range r.conns {
		c.Close()
	}
}

func (r *runner) rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.RPCTimeout)
}

// halt stops new requests from starting.
func (r *runner) halt() { r.stopOnce.Do(func() { close(r.stop) }) }

func (r *runner) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

func (r *runner) since() time.Duration { return time.Since(r.start) }

// ended reports whether ctx is done or past its deadline (its Err may lag the
// deadline while its timer waits to run, and requests sent meanwhile would
// fail at once).
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// admit takes a ticket for the next request: its sequence number and whether
// it is warm-up. ok is false once the run is over.
func (r *runner) admit() (seq int, warm, ok bool) {
	if r.stopped() {
		return 0, false, false
	}
	seq = int(r.seq.Add(1) - 1)
	warm = seq < r.cfg.WarmupRequests || r.since() < r.cfg.Warmup
	if !warm && r.cfg.Requests > 0 {
		m := r.measured.Add(1)
		if m >= int64(r.cfg.Requests) {
			r.halt()
		}
		if m > int64(r.cfg.Requests) {
			return seq, warm, false
		}
	}
	return seq, warm, true
}

func (r *runner) closedLoop(ctx context.Context, wg *sync.WaitGroup) {
	for w := range r.cfg.Concurrency {
		rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(w)+1))
		wg.Go(func() {
			for !r.stopped() && !ended(ctx) {
				r.inSess.Add(1)
				failed := r.runSession(ctx, r.wl.session(rng))
				if failed == codes.Unavailable {
					// The server is unreachable: back off instead of spinning.
					select {
					case <-r.stop:
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		})
	}
}

func (r *runner) openLoop(ctx context.Context, wg *sync.WaitGroup) {
	arr := NewArrivals(r.cfg.Rate, r.cfg.BurstEvery, r.cfg.BurstSize, r.cfg.Seed)
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if d := time.Until(r.start.Add(arr.Next())); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-r.stop:
				return
			}
		}
		if r.stopped() {
			return
		}
		if r.cfg.MaxInFlight > 0 && r.inSess.Load() >= int64(r.cfg.MaxInFlight) {
			r.dropped.Add(1)
			continue
		}
		plan := r.wl.session(rng)
		r.inSess.Add(1)
		wg.Go(func() { r.runSession(ctx, plan) })
	}
}

// runSession sends the plan's turns one after the other and returns the code
// of a failure that ended it (OK when none). The caller has counted it in inSess.
func (r *runner) runSession(ctx context.Context, plan sessionPlan) codes.Code {
	defer r.inSess.Add(-1)
	id := int(r.sessSeq.Add(1) - 1)
	st := sessionStat{server: plan.server, start: r.since()}
	var sid string
	code := codes.OK
	for i, t := range plan.turns {
		if ended(ctx) {
			break // interrupted: start nothing more
		}
		seq, warm, ok := r.admit()
		if !ok {
			break
		}
		if i == 0 {
			st.warmup = warm
		}
		if plan.server && sid == "" {
			t0 := r.since()
			cctx, cancel := r.rpcCtx(ctx)
			s, err := r.client(seq).CreateSession(cctx, &pb.CreateSessionRequest{})
			cancel()
			if err != nil {
				res := result{session: id, turn: i, seq: seq, warmup: warm, start: t0, end: r.since()}
				res.setErr(ctx, fmt.Errorf("create session: %w", err))
				r.record(res)
				code = res.code
				break
			}
			sid = s.SessionId
		}
		res := r.turn(ctx, sid, t, seq, warm, id, i)
		r.record(res)
		st.turns++
		if !res.ok() {
			code = res.code
			break // the session's state no longer matches the plan
		}
	}
	if sid != "" {
		r.finishSession(ctx, sid, &st)
	}
	st.end = r.since()
	if st.turns > 0 {
		r.mu.Lock()
		r.sessions = append(r.sessions, st)
		r.mu.Unlock()
	}
	return code
}

// finishSession reads the session's size and deletes it (or keeps it for the
// end of the run when HoldSessions). It runs even when ctx has ended.
func (r *runner) finishSession(ctx context.Context, sid string, st *sessionStat) {
	ctx = context.WithoutCancel(ctx)
	cli := r.clis[0]
	if r.cfg.SessionStats {
		cctx, cancel := r.rpcCtx(ctx)
		if s, err := cli.GetSession(cctx, &pb.GetSessionRequest{SessionId: sid}); err == nil {
			st.measured = true
			st.tokens = int(s.Tokens)
			st.state, st.recurrent, st.kv = s.StateBytes, s.RecurrentBytes, s.KvBytes
		}
		cancel()
	}
	if r.cfg.HoldSessions {
		r.mu.Lock()
		r.held = append(r.held, sid)
		r.mu.Unlock()
		return
	}
	cctx, cancel := r.rpcCtx(ctx)
	if d, err := cli.DeleteSession(cctx, &pb.DeleteSessionRequest{SessionId: sid}); err == nil {
		st.freed = d.FreedBytes
	}
	cancel()
}

// deleteHeld deletes the sessions HoldSessions kept.
func (r *runner) deleteHeld(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	for _, sid := range r.held {
		cctx, cancel := r.rpcCtx(ctx)
		r.clis[0].DeleteSession(cctx, &pb.DeleteSessionRequest{SessionId: sid}) //nolint:errcheck // best effort; idle sessions also expire
		cancel()
	}
	r.held = nil
}

func (r *runner) client(seq int) pb.SwitchyardClient { return r.clis[seq%len(r.clis)] }

func (r *runner) sampling(seq int) *pb.SamplingParams {
	s := r.cfg.Sampling
	p := &pb.SamplingParams{Temperature: s.Temperature, TopK: s.TopK, TopP: s.TopP, MinP: s.MinP,
		RepetitionPenalty: s.RepetitionPenalty, Seed: s.Seed}
	if s.Temperature > 0 {
		p.Seed += uint64(seq)
	}
	return p
}

func (r *runner) record(res result) {
	if res.ok() {
		r.completed.Add(1)
	} else {
		r.failed.Add(1)
	}
	r.mu.Lock()
	r.results = append(r.results, res)
	r.mu.Unlock()
}

// turn sends one Generate or Chat request and records its stream's timing.
func (r *runner) turn(ctx context.Context, sid string, t turnPlan, seq int, warm bool, session, idx int) result {
	res := result{session: session, turn: idx, seq: seq, warmup: warm, stateless: sid == ""}
	if r.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.RequestTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx) // ends the stream on every return path
	defer cancel()
	r.inReq.Add(1)
	defer r.inReq.Add(-1)
	cli := r.client(seq)
	t0 := time.Now()
	res.start = t0.Sub(r.start)
	var stream interface {
		Recv() (*pb.GenerateResponse, error)
	}
	var err error
	if t.chat != "" {
		stream, err = cli.Chat(ctx, &pb.ChatRequest{Messages: []*pb.ChatMessage{{Role: "user", Content: t.chat}},
			SessionId: sid, Sampling: r.sampling(seq), MaxTokens: int32(t.maxTokens), Stop: r.cfg.Stop, IgnoreEos: r.cfg.IgnoreEOS})
	} else {
		req := &pb.GenerateRequest{SessionId: sid, Sampling: r.sampling(seq), MaxTokens: int32(t.maxTokens),
			Stop: r.cfg.Stop, IgnoreEos: r.cfg.IgnoreEOS}
		if t.ids != nil {
			req.Input = &pb.GenerateRequest_TokenIds{TokenIds: &pb.TokenIds{Ids: t.ids}}
		} else {
			req.Input = &pb.GenerateRequest_Text{Text: t.text}
		}
		stream, err = cli.Generate(ctx, req)
	}
	var last time.Time
	final := false
	for err == nil {
		var msg *pb.GenerateResponse
		msg, err = stream.Recv()
		now := time.Now()
		if errors.Is(err, io.EOF) {
			err = nil
			if !final {
				err = status.Error(codes.Internal, "stream ended without a final message")
			}
			break
		}
		if err != nil {
			break
		}
		switch ev := msg.Event.(type) {
		case *pb.GenerateResponse_Chunk:
			n := len(ev.Chunk.TokenIds)
			if n == 0 {
				continue
			}
			if res.outputTokens == 0 {
				res.ttft = now.Sub(t0)
			} else {
				// A chunk of n tokens spreads its gap evenly over them.
				gap := now.Sub(last) / time.Duration(n)
				for range n {
					res.itls = append(res.itls, gap)
				}
			}
			last = now
			res.outputTokens += n
			r.tokens.Add(int64(n))
		case *pb.GenerateResponse_Final:
			final = true
			f := ev.Final
			res.finish = f.FinishReason
			if u := f.Usage; u != nil {
				res.promptTokens, res.cachedTokens = int(u.PromptTokens), int(u.CachedTokens)
			}
		}
	}
	res.end = r.since()
	if !last.IsZero() {
		res.lastToken = last.Sub(r.start)
	}
	if err != nil {
		res.setErr(ctx, err)
	}
	return res
}

// setErr records err's gRPC code (context errors map to their codes).
func (res *result) setErr(ctx context.Context, err error) {
	res.code = status.Code(err)
	if res.code == codes.Unknown {
		if c := status.FromContextError(ctx.Err()).Code(); ctx.Err() != nil {
			res.code = c
		}
	}
	const maxErr = 300
	if res.err = err.Error(); len(res.err) > maxErr {
		res.err = res.err[:maxErr] + "…"
	}
}
