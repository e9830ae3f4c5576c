package trunknode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/model/chat"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/sample"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// errInvalid marks request validation errors (InvalidArgument at the edge).
var errInvalid = errors.New("invalid request")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errInvalid, fmt.Sprintf(format, a...))
}

// toStatus maps core errors to gRPC status, once, at the edge.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !errors.Is(err, errInvalid) {
		if s, _ := status.FromError(err); s.Code() != codes.Unknown {
			return err
		}
	}
	table := []struct {
		target error
		code   codes.Code
	}{
		{errInvalid, codes.InvalidArgument},
		{sample.ErrParams, codes.InvalidArgument},
		{engine.ErrRequest, codes.InvalidArgument},
		{ErrSessionNotFound, codes.NotFound},
		{ErrSessionBusy, codes.FailedPrecondition},
		{ErrClientLimit, codes.ResourceExhausted},
		{ErrClientBusy, codes.ResourceExhausted},
		{ErrSessionDeleted, codes.Aborted},
		{ErrSessionReset, codes.DataLoss},
		{ErrSessionCorrupt, codes.DataLoss},
		{hybrid.ErrStateModel, codes.FailedPrecondition},
		{errSnapshotUnsupported, codes.FailedPrecondition},
		{errSnapshot, codes.InvalidArgument},
		{errSnapshotUnsigned, codes.PermissionDenied},
		{ErrBusyImports, codes.ResourceExhausted},
		{ErrMemoryFull, codes.ResourceExhausted},
		{ErrQueueFull, codes.ResourceExhausted},
		{ErrDraining, codes.Unavailable},
		{ErrNoReplica, codes.Unavailable},
		{ErrNoPeer, codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
	}
	for _, t := range table {
		if errors.Is(err, t.target) {
			return status.Error(t.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// Limits are per-request bounds checked at the edge.
type Limits struct {
	MaxContext    int // tokens a session may hold
	MaxNewTokens  int // max_tokens upper bound
	MaxPromptText int // bytes of prompt text
	MaxStops      int // stop strings / stop ids
}

// api implements the public Switchyard service.
type api struct {
	pb.UnimplementedSwitchyardServer
	n *Node
}

var _ pb.SwitchyardServer = (*api)(nil)

func (a *api) cfg() *config.Config { return a.n.model.Cfg }

func (a *api) tokensOf(text *string, ids *pb.TokenIds, field string) ([]int, error) {
	switch {
	case text != nil:
		if len(*text) > a.n.limits.MaxPromptText {
			return nil, invalid("%s is %d bytes, the limit is %d", field, len(*text), a.n.limits.MaxPromptText)
		}
		if !utf8.ValidString(*text) {
			return nil, invalid("%s is not valid UTF-8", field)
		}
		return a.n.tok.Encode(*text, true), nil
	case ids != nil:
		out := make([]int, len(ids.Ids))
		for i, id := range ids.Ids {
			if id < 0 || int(id) >= a.cfg().VocabSize {
				return nil, invalid("%s token id %d at index %d is outside the vocabulary [0, %d)", field, id, i, a.cfg().VocabSize)
			}
			out[i] = int(id)
		}
		return out, nil
	}
	return nil, nil
}

func samplingOf(p *pb.SamplingParams) (sample.Params, error) {
	if p == nil {
		return sample.Params{}, nil
	}
	sp := sample.Params{Temperature: p.Temperature, TopK: int(p.TopK), TopP: p.TopP, MinP: p.MinP,
		RepetitionPenalty: p.RepetitionPenalty, RepeatLastN: int(p.RepeatLastN), Seed: p.Seed}
	if math.IsNaN(float64(p.TopP)) || p.TopP < 0 || p.TopP > 1 {
		return sp, invalid("sampling.top_p must be in (0, 1] (0 means off), got %v", p.TopP)
	}
	return sp, sp.Validate()
}

// genArgs is the common part of Generate and Chat.
type genArgs struct {
	sessionID string
	prompt    []int
	sampling  *pb.SamplingParams
	maxTokens int32
	stop      []string
	stopIDs   []int32
	ignoreEOS bool
	logprobs  bool
	api       string
	client    string // the caller's identity (rpc.ClientIdentity)
	// constraint comes from the HTTP API (response_format); topLogprobs from
	// either API (top_logprobs).
	constraint  engine.Constraint
	topLogprobs int
	ctx         context.Context // the request's (a session held by another trunk is fetched under it)
	// defaultMax: no max_tokens was given; reserve takes what the context
	// leaves after the session's tokens and the prompt (up to the server's
	// limit).
	defaultMax bool
}

func (a *api) Generate(req *pb.GenerateRequest, stream pb.Switchyard_GenerateServer) error {
	var text *string
	if t, ok := req.Input.(*pb.GenerateRequest_Text); ok {
		text = &t.Text
	}
	prompt, err := a.tokensOf(text, req.GetTokenIds(), "prompt")
	if err != nil {
		return toStatus(err)
	}
	if req.TopLogprobs < 0 || req.TopLogprobs > 20 {
		return toStatus(invalid("top_logprobs must be in [0, 20], got %d", req.TopLogprobs))
	}
	return toStatus(a.generate(stream.Context(), genArgs{req.SessionId, prompt, req.Sampling, req.MaxTokens, req.Stop,
		req.StopTokenIds, req.IgnoreEos, req.Logprobs, "generate", "", nil, int(req.TopLogprobs), nil, false}, stream))
}

func (a *api) Chat(req *pb.ChatRequest, stream pb.Switchyard_ChatServer) error {
	if len(req.Messages) == 0 {
		return toStatus(invalid("messages is empty; send at least one message"))
	}
	msgs := make([]chat.Message, len(req.Messages))
	size := 0
	for i, m := range req.Messages {
		msgs[i] = chat.Message{Role: m.Role, Content: m.Content}
		size += len(m.Content) + len(m.Role)
		if !utf8.ValidString(m.Content) || !utf8.ValidString(m.Role) {
			return toStatus(invalid("messages[%d] is not valid UTF-8", i))
		}
	}
	if size > a.n.limits.MaxPromptText {
		return toStatus(invalid("messages total %d bytes, the limit is %d", size, a.n.limits.MaxPromptText))
	}
	// The model's chat template renders the messages; content is user text:
	// only the template's markup becomes control tokens (special-token text
	// in content cannot forge a turn). Messages sent to a session that already
	// holds a conversation are rendered as its continuation.
	tmpl, err := a.n.chatTemplate()
	if err != nil {
		return toStatus(invalid("%v", err))
	}
	encode := tmpl.Encode
	if req.SessionId != "" {
		if sess, err := a.n.session(stream.Context(), rpc.ClientIdentity(stream.Context()), req.SessionId); err == nil && sess.Tokens()+len(sess.Unfed) > 0 {
			encode = tmpl.EncodeTurn
		}
	}
	prompt, err := encode(chat.Request{Messages: msgs, AddGenerationPrompt: true})
	if err != nil {
		return toStatus(invalid("%v", err))
	}
	return toStatus(a.generate(stream.Context(), genArgs{req.SessionId, prompt, req.Sampling, req.MaxTokens, req.Stop,
		req.StopTokenIds, req.IgnoreEos, req.Logprobs, "chat", "", nil, 0, nil, false}, stream))
}

type sender interface {
	Send(*pb.GenerateResponse) error
}

func (a *api) generate(ctx context.Context, g genArgs, out sender) error {
	g.client = rpc.ClientIdentity(ctx)
	sess, job, release, err := a.start(ctx, g)
	if err != nil {
		return err
	}
	defer release()
	return a.stream(ctx, g, sess, job, out)
}

// start validates a generation, takes the client's slot, reserves its
// session and submits it; release frees the client slot once the caller has
// streamed the job to its end.
func (a *api) start(ctx context.Context, g genArgs) (sess *Session, job *Job, release func(), err error) {
	g.ctx = ctx
	if g.defaultMax {
		g.maxTokens = 1 // checked for now; reserve sets it
	}
	params, err := a.checkGen(g)
	if err != nil {
		return nil, nil, nil, err
	}
	if g.constraint != nil && g.ignoreEOS {
		return nil, nil, nil, invalid("ignore_eos cannot be combined with a response format: the constraint ends at the end of the document")
	}
	if release, err = a.n.clientSlot(g.client); err != nil {
		return nil, nil, nil, err
	}
	if sess, err = a.reserve(&g); err != nil {
		release()
		return nil, nil, nil, err
	}
	stopIDs := make([]int, len(g.stopIDs))
	for i, v := range g.stopIDs {
		stopIDs[i] = int(v)
	}
	a.traceRequest(ctx, g, params, sess)
	job, err = a.n.sched.Submit(ctx, JobSpec{Session: sess, Prompt: g.prompt, Params: params, MaxTokens: int(g.maxTokens),
		StopIDs: stopIDs, StopStrings: g.stop, IgnoreEOS: g.ignoreEOS, LogProbs: g.logprobs, API: g.api,
		Constraint: g.constraint, TopLogProbs: g.topLogprobs})
	if err != nil {
		a.n.store.Release(sess)
		release()
		return nil, nil, nil, err
	}
	return sess, job, release, nil
}

// traceRequest puts the OpenTelemetry GenAI request attributes on the
// request's span (the RPC server span).
func (a *api) traceRequest(ctx context.Context, g genArgs, p sample.Params, sess *Session) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	op := "text_completion"
	if g.api == "chat" {
		op = "chat"
	}
	attrs := []attribute.KeyValue{attribute.String("gen_ai.operation.name", op), attribute.String("gen_ai.provider.name", "switchyard"),
		attribute.String("gen_ai.request.model", config.ModelName(a.n.cfg.ModelPath)), attribute.Int("gen_ai.request.max_tokens", int(g.maxTokens)),
		attribute.Float64("gen_ai.request.temperature", float64(p.Temperature)), attribute.Int64("gen_ai.request.seed", int64(p.Seed))}
	if p.TopP > 0 {
		attrs = append(attrs, attribute.Float64("gen_ai.request.top_p", float64(p.TopP)))
	}
	if p.TopK > 0 {
		attrs = append(attrs, attribute.Int("gen_ai.request.top_k", p.TopK))
	}
	if len(g.stop) > 0 {
		attrs = append(attrs, attribute.StringSlice("gen_ai.request.stop_sequences", g.stop))
	}
	if !sess.ephemeral {
		attrs = append(attrs, attribute.String("gen_ai.conversation.id", sess.ID))
	}
	span.SetAttributes(attrs...)
}

// checkGen validates a generation's limits and sampling parameters.
func (a *api) checkGen(g genArgs) (sample.Params, error) {
	lim := a.n.limits
	switch {
	case g.maxTokens <= 0:
		return sample.Params{}, invalid("max_tokens must be > 0, got %d", g.maxTokens)
	case int(g.maxTokens) > lim.MaxNewTokens:
		return sample.Params{}, invalid("max_tokens %d exceeds the server limit %d", g.maxTokens, lim.MaxNewTokens)
	case len(g.stop)+len(g.stopIDs) > lim.MaxStops:
		return sample.Params{}, invalid("%d stop strings/ids exceed the limit %d", len(g.stop)+len(g.stopIDs), lim.MaxStops)
	}
	for _, id := range g.stopIDs {
		if id < 0 || int(id) >= a.cfg().VocabSize {
			return sample.Params{}, invalid("stop_token_ids contains %d, outside the vocabulary [0, %d)", id, a.cfg().VocabSize)
		}
	}
	for _, s := range g.stop {
		if s == "" {
			return sample.Params{}, invalid("stop strings must not be empty")
		}
	}
	return samplingOf(g.sampling)
}

// reserve finds the generation's session (or creates an ephemeral one),
// checks the context limit and acquires the session with KV for the prompt
// and max_tokens. On error nothing stays acquired.
func (a *api) reserve(g *genArgs) (*Session, error) {
	lim := a.n.limits
	var sess *Session
	var err error
	if g.sessionID != "" {
		if sess, err = a.n.session(g.ctx, g.client, g.sessionID); err != nil {
			return nil, err
		}
	} else {
		if len(g.prompt) == 0 {
			return nil, invalid("the prompt is empty (set text or token_ids, or continue a session with session_id)")
		}
		if sess, err = a.n.withRoom(func() (*Session, error) { return a.n.store.CreateFor(g.client, true) }); err != nil {
			return nil, err
		}
	}
	drop := func(err error) (*Session, error) {
		if sess.ephemeral {
			a.n.store.Release(sess)
		}
		return nil, err
	}
	if len(g.prompt) == 0 && len(sess.Unfed) == 0 {
		return drop(invalid("the prompt is empty and session %s has nothing to continue from", clip(g.sessionID)))
	}
	if g.defaultMax {
		left := lim.MaxContext - (sess.State.Pos + len(sess.Unfed) + len(g.prompt))
		if left <= 0 {
			return drop(invalid("session tokens (%d) + prompt (%d) leave no room under the context limit %d",
				sess.State.Pos+len(sess.Unfed), len(g.prompt), lim.MaxContext))
		}
		g.maxTokens = int32(min(left, lim.MaxNewTokens))
	}
	total := sess.State.Pos + len(sess.Unfed) + len(g.prompt) + int(g.maxTokens)
	if total > lim.MaxContext {
		return drop(invalid("session tokens (%d) + prompt (%d) + max_tokens (%d) = %d exceeds the context limit %d",
			sess.State.Pos, len(g.prompt), g.maxTokens, total, lim.MaxContext))
	}
	// A stateless prompt that starts with a cached prefix resumes from the
	// deepest checkpoint: its state then holds skip prompt tokens already, and
	// only the rest is reserved and prefilled.
	skip := 0
	if sess.ephemeral {
		skip = a.n.store.ResumePrefix(sess, g.prompt)
	}
	if _, err := a.n.withRoom(func() (*Session, error) {
		return sess, a.n.store.Acquire(sess, len(sess.Unfed)+len(g.prompt)-skip+int(g.maxTokens))
	}, sess); err != nil {
		return drop(err)
	}
	return sess, nil
}

// stream forwards a job's tokens to the client as they come, then its final
// message. A client that goes away cancels ctx; the scheduler ends the job at
// its next step.
func (a *api) stream(ctx context.Context, g genArgs, sess *Session, job *Job, out sender) error {
	fin, err := a.pump(ctx, job, func(evs []Event) error {
		return out.Send(&pb.GenerateResponse{Event: &pb.GenerateResponse_Chunk{Chunk: tokenChunk(evs, g.logprobs, g.topLogprobs > 0)}})
	})
	if err != nil {
		return err
	}
	sid := ""
	if !sess.ephemeral {
		sid = sess.ID
	}
	return out.Send(&pb.GenerateResponse{Event: &pb.GenerateResponse_Final{Final: &pb.GenerateFinal{
		FinishReason: finishReasons[fin.Reason], SessionId: sid,
		Usage: &pb.Usage{PromptTokens: int32(fin.PromptTokens), CompletionTokens: int32(fin.CompletionTokens), CachedTokens: int32(fin.CachedTokens)},
	}}})
}

// pump hands a job's events to emit as they come and returns its final
// state; a failed generation (not one the client cancelled) is an error. A
// client that goes away cancels ctx; the scheduler ends the job at its next
// step, and pump waits for that end so nothing outlives the request.
func (a *api) pump(ctx context.Context, job *Job, emit func([]Event) error) (*Final, error) {
	for {
		select {
		case <-job.Notify():
		case <-ctx.Done():
			<-job.Notify()
		}
		evs, fin := job.Drain()
		if len(evs) > 0 {
			if err := emit(evs); err != nil {
				// The client cannot take more: end the job and wait for its
				// end, so its session is free when this returns.
				job.stop(err)
				for fin == nil {
					<-job.Notify()
					_, fin = job.Drain()
				}
				a.n.metrics.jobFinished(job, fin)
				return nil, err
			}
		}
		if fin == nil {
			continue
		}
		a.n.metrics.jobFinished(job, fin)
		trace.SpanFromContext(ctx).SetAttributes(attribute.Int("gen_ai.usage.input_tokens", fin.PromptTokens),
			attribute.Int("gen_ai.usage.output_tokens", fin.CompletionTokens), attribute.Int("switchyard.usage.cached_tokens", fin.CachedTokens),
			attribute.StringSlice("gen_ai.response.finish_reasons", []string{fin.Reason}))
		if fin.Err != nil && (fin.Reason != engine.FinishCancel || ctx.Err() == nil) {
			return nil, fin.Err
		}
		if !job.sess.ephemeral {
			a.n.replicas.later(job.sess.ID) // its copies follow the finished turn
		}
		return fin, nil
	}
}

var finishReasons = map[string]pb.FinishReason{engine.FinishStop: pb.FinishReason_FINISH_REASON_STOP,
	engine.FinishLength: pb.FinishReason_FINISH_REASON_LENGTH, engine.FinishCancel: pb.FinishReason_FINISH_REASON_CANCELLED}

// tokenChunk packs a batch of events into one streamed chunk.
func tokenChunk(evs []Event, logprobs, top bool) *pb.TokenChunk {
	chunk := &pb.TokenChunk{}
	var sb strings.Builder
	for _, ev := range evs {
		if ev.Token >= 0 {
			chunk.TokenIds = append(chunk.TokenIds, int32(ev.Token))
			if logprobs {
				chunk.Logprobs = append(chunk.Logprobs, ev.LogProb)
			}
			if top {
				t := &pb.TopLogprobs{}
				for _, tl := range ev.Top {
					t.TokenIds = append(t.TokenIds, int32(tl.Token))
					t.Logprobs = append(t.Logprobs, tl.LogProb)
				}
				chunk.TopLogprobs = append(chunk.TopLogprobs, t)
			}
		}
		sb.WriteString(ev.Text)
	}
	chunk.Text = sb.String()
	return chunk
}

func (a *api) sessionMsg(s *Session) *pb.Session {
	return &pb.Session{SessionId: s.ID, Tokens: int32(s.State.Pos), StateBytes: s.State.Bytes(),
		RecurrentBytes: s.State.RecurrentBytes(), KvBytes: s.State.KVBytes(), Node: a.n.cfg.NodeID}
}

func (a *api) CreateSession(ctx context.Context, req *pb.CreateSessionRequest) (*pb.Session, error) {
	var text *string
	if t, ok := req.Prompt.(*pb.CreateSessionRequest_Text); ok {
		text = &t.Text
	}
	prompt, err := a.tokensOf(text, req.GetTokenIds(), "prompt")
	if err != nil {
		return nil, toStatus(err)
	}
	if len(prompt) > a.n.limits.MaxContext {
		return nil, toStatus(invalid("prompt of %d tokens exceeds the context limit %d", len(prompt), a.n.limits.MaxContext))
	}
	sess, err := a.n.withRoom(func() (*Session, error) { return a.n.store.CreateFor(rpc.ClientIdentity(ctx), false) })
	if err != nil {
		return nil, toStatus(err)
	}
	if len(prompt) > 0 {
		// Prefill through the scheduler: a generation of zero new tokens is not
		// expressible, so feed all but the last prompt token and keep that one
		// unfed; the next turn feeds it first.
		if len(prompt) > 1 {
			if err := a.n.prefillOnly(ctx, sess, prompt[:len(prompt)-1]); err != nil {
				a.n.store.Delete(sess.ID)
				return nil, toStatus(err)
			}
		}
		sess.Unfed = []int{prompt[len(prompt)-1]}
		a.n.replicas.later(sess.ID)
	}
	return a.sessionMsg(sess), nil
}

func (a *api) GetSession(ctx context.Context, req *pb.GetSessionRequest) (*pb.Session, error) {
	if req.SessionId == "" {
		return nil, toStatus(invalid("session_id is required"))
	}
	s, err := a.n.session(ctx, rpc.ClientIdentity(ctx), req.SessionId)
	if err != nil {
		return nil, toStatus(err)
	}
	return a.sessionMsg(s), nil
}

func (a *api) ForkSession(ctx context.Context, req *pb.ForkSessionRequest) (*pb.Session, error) {
	if req.SessionId == "" {
		return nil, toStatus(invalid("session_id is required"))
	}
	s, err := a.n.session(ctx, rpc.ClientIdentity(ctx), req.SessionId)
	if err != nil {
		return nil, toStatus(err)
	}
	// Hold the session while copying so no step mutates it meanwhile.
	if err := a.n.store.Acquire(s, 0); err != nil {
		return nil, toStatus(err)
	}
	st, unfed := s.State.Clone(), append([]int(nil), s.Unfed...)
	a.n.store.Release(s)
	f, err := a.n.store.AdoptFor(rpc.ClientIdentity(ctx), st, unfed)
	if err != nil {
		return nil, toStatus(err)
	}
	return a.sessionMsg(f), nil
}

func (a *api) ExportSession(req *pb.ExportSessionRequest, stream pb.Switchyard_ExportSessionServer) (err error) {
	var sent int64
	defer func() { a.n.metrics.transfer("export", err, sent) }()
	if req.SessionId == "" {
		return toStatus(invalid("session_id is required"))
	}
	s, err := a.n.session(stream.Context(), rpc.ClientIdentity(stream.Context()), req.SessionId)
	if err != nil {
		return toStatus(err)
	}
	// Hold the session while it is read so no step changes it meanwhile.
	if err := a.n.store.Acquire(s, 0); err != nil {
		return toStatus(err)
	}
	defer a.n.store.Release(s)
	w := &chunkWriter{send: stream.Send, buf: make([]byte, 0, snapChunk),
		first: &pb.SessionSnapshotChunk{TotalBytes: snapshotLen(s, a.n.snap), Tokens: int32(s.State.Pos)}}
	if err := writeSnapshot(w, s, a.n.snap); err != nil {
		return toStatus(fmt.Errorf("export %s: %w", s.ID, err))
	}
	if err := w.flush(); err != nil {
		return toStatus(err)
	}
	sent = snapshotLen(s, a.n.snap)
	return nil
}

func (a *api) ImportSession(stream pb.Switchyard_ImportSessionServer) (err error) {
	var taken int64
	defer func() { a.n.metrics.transfer("import", err, taken) }()
	if a.n.sched.Draining() { // a node going away takes no sessions (it still exports them)
		return toStatus(ErrDraining)
	}
	select { // each import buffers its snapshot: bound how many run at once
	case a.n.imports <- struct{}{}:
		defer func() { <-a.n.imports }()
	default:
		return toStatus(fmt.Errorf("%w: %d session imports are in progress; retry shortly", ErrBusyImports, cap(a.n.imports)))
	}
	chunks := recvChunks(stream)
	first, err := nextChunk(stream.Context(), chunks)
	if err == io.EOF {
		return toStatus(invalid("empty stream: send the chunks of an ExportSession snapshot"))
	}
	if err != nil {
		return toStatus(err)
	}
	// Refuse what this node can never take before receiving the rest.
	if err := checkSnapshotHead(first.Data, a.n.snap); err != nil {
		return toStatus(err)
	}
	total, limit := first.TotalBytes, a.n.maxSnapshotBytes()
	switch {
	case total <= 0:
		return toStatus(invalid("the first chunk must carry total_bytes (as ExportSession sends it)"))
	case total > limit:
		return toStatus(fmt.Errorf("%w: a snapshot of %d bytes is larger than a session at this node's context limit (%d tokens, %d bytes)",
			errSnapshotUnsupported, total, a.n.limits.MaxContext, limit))
	}
	if err := a.n.store.CheckRoom(total - a.n.size.EmptyEncoded); err != nil {
		return toStatus(err)
	}
	// The buffer grows as bytes arrive, not from the size the client claims.
	buf := make([]byte, 0, min(total, snapChunk))
	start := time.Now()
	for msg := first; ; {
		if len(msg.Data) > snapChunk {
			return toStatus(invalid("a chunk of %d bytes: at most %d per chunk", len(msg.Data), snapChunk))
		}
		if int64(len(buf)+len(msg.Data)) > total {
			return toStatus(invalid("snapshot data exceeds its total_bytes (%d)", total))
		}
		buf = append(buf, msg.Data...)
		if err := importProgress(start, int64(len(buf))); err != nil {
			return toStatus(err)
		}
		if msg, err = nextChunk(stream.Context(), chunks); err == io.EOF {
			break
		} else if err != nil {
			return toStatus(err)
		}
	}
	if int64(len(buf)) != total {
		return toStatus(invalid("snapshot truncated: received %d of %d bytes", len(buf), total))
	}
	st, unfed, err := readSnapshot(buf, a.n.snap)
	buf = nil
	switch {
	case err != nil:
		return toStatus(err)
	case st.Pos+len(unfed) > a.n.limits.MaxContext:
		st.Free() // decoded here, seen by nobody
		return toStatus(fmt.Errorf("%w: the session holds %d tokens, more than this node's context limit %d",
			errSnapshotUnsupported, st.Pos+len(unfed), a.n.limits.MaxContext))
	}
	sess, err := a.n.store.AdoptFor(rpc.ClientIdentity(stream.Context()), st, unfed)
	if err != nil {
		return toStatus(err)
	}
	taken = total
	return stream.SendAndClose(a.sessionMsg(sess))
}

func (a *api) DeleteSession(ctx context.Context, req *pb.DeleteSessionRequest) (*pb.DeleteSessionResponse, error) {
	if req.SessionId == "" {
		return nil, toStatus(invalid("session_id is required"))
	}
	owner := rpc.ClientIdentity(ctx)
	freed, err := a.n.store.DeleteFor(owner, req.SessionId)
	// Whatever was here, every copy elsewhere goes too (disk, other trunks,
	// replicas): none may bring the session back.
	found, derr := a.n.dropEverywhere(ctx, owner, req.SessionId)
	switch {
	case err == nil:
	case found:
		freed, err = 0, nil
	case derr != nil:
		err = derr
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DeleteSessionResponse{FreedBytes: freed}, nil
}

func (a *api) Tokenize(ctx context.Context, req *pb.TokenizeRequest) (*pb.TokenizeResponse, error) {
	if len(req.Text) > a.n.limits.MaxPromptText {
		return nil, toStatus(invalid("text is %d bytes, the limit is %d", len(req.Text), a.n.limits.MaxPromptText))
	}
	ids := a.n.tok.Encode(req.Text, !req.PlainSpecial)
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return &pb.TokenizeResponse{TokenIds: out}, nil
}

func (a *api) Detokenize(ctx context.Context, req *pb.DetokenizeRequest) (*pb.DetokenizeResponse, error) {
	ids := make([]int, len(req.TokenIds))
	for i, id := range req.TokenIds {
		if id < 0 || int(id) >= a.cfg().VocabSize {
			return nil, toStatus(invalid("token id %d at index %d is outside the vocabulary [0, %d)", id, i, a.cfg().VocabSize))
		}
		ids[i] = int(id)
	}
	// Ids the model generated may end inside a multi-byte character: answer
	// with what a user can use, never an error.
	raw := a.n.tok.Decode(ids)
	return &pb.DetokenizeResponse{Text: strings.ToValidUTF8(raw, "\uFFFD"), RawBytes: []byte(raw), Complete: utf8.ValidString(raw)}, nil
}

func (a *api) ModelInfo(ctx context.Context, _ *pb.ModelInfoRequest) (*pb.ModelInfoResponse, error) {
	c := a.cfg()
	var att []int32
	for i, t := range c.LayerTypes {
		if t == config.Attention {
			att = append(att, int32(i))
		}
	}
	// The model's name, never its path on the server.
	return &pb.ModelInfoResponse{Name: config.ModelName(a.n.cfg.ModelPath), VocabSize: int32(c.VocabSize), Layers: int32(c.Layers), AttentionLayers: att,
		Experts: int32(c.Experts), ExpertsPerToken: int32(c.ExpertsPerTok), MaxContext: int32(a.n.limits.MaxContext),
		RecurrentStateBytes: a.n.size.RecurrentBytes, KvBytesPerToken: a.n.kvPerToken, EosTokenId: int32(c.EOS)}, nil
}
