// Package openai serves the OpenAI-compatible HTTP API of a trunk node:
// chat completions (with Granite tool calling and JSON-constrained output),
// completions, models, and the Responses API backed by Switchyard sessions,
// so a follow-up turn continues from the kept recurrent state and KV cache
// instead of re-reading the conversation.
//
// It is a shell around a Backend (the trunk node): it parses and validates
// requests, renders chats with the model's template (model/chat), compiles
// response formats into token masks (model/grammar), and writes replies and
// server-sent events. The Backend's errors are gRPC status errors (the trunk
// maps its errors once, for both APIs); this package maps their codes to
// HTTP statuses and OpenAI error bodies.
package openai

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/model/chat"
	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/grammar"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Backend is what the API needs of a trunk node. Errors are gRPC status
// errors.
type Backend interface {
	// Model describes the served model.
	Model() Model
	// Tokenizer is the model's tokenizer.
	Tokenizer() *tokenizer.Tokenizer
	// Template is the chat template (the model's, or the configured one).
	Template() (*chat.Template, error)
	// Vocab is the vocabulary as bytes for constrained decoding.
	Vocab() *grammar.Vocab
	// Generate runs a generation, handing its events to emit as they come.
	Generate(ctx context.Context, g Generation, emit func([]engine.Event) error) (Result, error)
	// CreateSession creates an empty session of the caller and returns its id.
	CreateSession(ctx context.Context) (string, error)
	// DeleteSession deletes a session of the caller.
	DeleteSession(ctx context.Context, id string) error
	// Draining reports whether the node is shutting down.
	Draining() bool
}

// Model describes the served model and the node's limits.
type Model struct {
	Name          string
	Created       time.Time
	MaxContext    int // tokens a session may hold
	MaxNewTokens  int // max_tokens upper bound
	MaxPromptText int // bytes of message content a request may carry
}

// Generation is one request to generate.
type Generation struct {
	SessionID   string // "" for a stateless request
	Prompt      []int
	Sampling    *pb.SamplingParams
	MaxTokens   int // 0: what the context leaves after the session and the prompt
	Stop        []string
	IgnoreEOS   bool
	LogProbs    bool
	TopLogProbs int
	Constraint  engine.Constraint
	API         string // metric label
}

// Result is a finished generation.
type Result struct {
	Reason           string // engine.Finish*
	PromptTokens     int
	CompletionTokens int
	CachedTokens     int
}

// Config configures the HTTP API.
type Config struct {
	// Auth holds the bearer tokens (AuthToken, Tokens) and the rate limit
	// (RatePerSec) of the gRPC API, applied here the same way.
	Auth rpc.ServerConfig
	// MaxBodyBytes bounds a request body (default 8 MiB).
	MaxBodyBytes int64
	// MaxStreamsPerClient caps one client's open streamed replies (0: none).
	MaxStreamsPerClient int
	// Responses bounds the Responses API's store.
	Responses ResponsesConfig
	Logger    *slog.Logger
}

// Server is the HTTP API.
type Server struct {
	cfg     Config
	b       Backend
	lim     *rate.Limiter
	streams *rpc.ClientStreams
	store   *responseStore
	mux     *http.ServeMux
	log     *slog.Logger
}

// New returns the API over b.
func New(cfg Config, b Backend) *Server {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 8 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, b: b, streams: rpc.NewClientStreams(), store: newResponseStore(cfg.Responses), log: cfg.Logger}
	if cfg.Auth.RatePerSec > 0 {
		s.lim = rate.NewLimiter(rate.Limit(cfg.Auth.RatePerSec), max(cfg.Auth.RateBurst, 1))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("GET /v1/models/{id...}", s.model)
	mux.HandleFunc("POST /v1/chat/completions", s.chatCompletions)
	mux.HandleFunc("POST /v1/completions", s.completions)
	mux.HandleFunc("POST /v1/responses", s.createResponse)
	mux.HandleFunc("GET /v1/responses/{id}", s.getResponse)
	mux.HandleFunc("DELETE /v1/responses/{id}", s.deleteResponse)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found_error", "unknown_url", fmt.Sprintf("no route %s %s; this server serves /v1/chat/completions, /v1/completions, /v1/models and /v1/responses", r.Method, clip(r.URL.Path, 100)))
	})
	s.mux = mux
	return s
}

// ServeHTTP authenticates, rate-limits and routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("openai: handler panicked", "path", r.URL.Path, "panic", p)
			writeError(w, http.StatusInternalServerError, "server_error", "internal_error", "internal error")
		}
	}()
	id, ok := s.cfg.Auth.Identify(r.Header.Values("Authorization"))
	if !ok {
		writeError(w, http.StatusUnauthorized, "authentication_error", "invalid_api_key", "missing or wrong API key: send \"Authorization: Bearer <token>\"")
		return
	}
	if s.lim != nil && !s.lim.Allow() {
		writeError(w, http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded", fmt.Sprintf("rate limit of %.0f requests/s exceeded; retry with backoff", s.cfg.Auth.RatePerSec))
		return
	}
	if s.b.Draining() && r.Method == http.MethodPost {
		writeError(w, http.StatusServiceUnavailable, "server_error", "draining", "this node is shutting down; retry on another")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	s.mux.ServeHTTP(w, r.WithContext(rpc.WithIdentity(r.Context(), id)))
}

// Serve serves the API on lis (TLS when tlsFiles are set) until ctx ends,
// then shuts down gracefully within grace.
func Serve(ctx context.Context, lis net.Listener, h http.Handler, tlsFiles rpc.TLSFiles, grace time.Duration) error {
	tc, err := rpc.ServerTLS(tlsFiles)
	if err != nil {
		lis.Close()
		return err
	}
	srv := &http.Server{Handler: h, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	done := make(chan error, 1)
	go func() {
		if tc != nil {
			done <- srv.ServeTLS(lis, "", "")
		} else {
			done <- srv.Serve(lis)
		}
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done
	return nil
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, modelList{Object: "list", Data: []modelObject{s.modelObject()}})
}

func (s *Server) model(w http.ResponseWriter, r *http.Request) {
	if err := s.checkModel(r.PathValue("id")); err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.modelObject())
}

func (s *Server) modelObject() modelObject {
	m := s.b.Model()
	return modelObject{ID: m.Name, Object: "model", Created: m.Created.Unix(), OwnedBy: "switchyard", MaxModelLen: m.MaxContext, ContextLength: m.MaxContext}
}

// checkModel accepts the served model's name (an empty name means it too).
func (s *Server) checkModel(name string) error {
	if name == "" || name == s.b.Model().Name {
		return nil
	}
	return status.Errorf(codes.NotFound, "model %q is not served here; this server serves %q (GET /v1/models)", clip(name, 100), s.b.Model().Name)
}

// decode reads a JSON body into v.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return status.Errorf(codes.InvalidArgument, "the request body exceeds %d bytes", mbe.Limit)
		}
		return status.Errorf(codes.InvalidArgument, "the request body is not valid JSON for this endpoint: %s", clip(err.Error(), 200))
	}
	return nil
}

// httpStatus maps a gRPC code to the HTTP status and OpenAI error type.
func httpStatus(c codes.Code) (int, string) {
	switch c {
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest, "invalid_request_error"
	case codes.FailedPrecondition, codes.Aborted, codes.AlreadyExists:
		return http.StatusConflict, "invalid_request_error"
	case codes.NotFound:
		return http.StatusNotFound, "invalid_request_error"
	case codes.Unauthenticated:
		return http.StatusUnauthorized, "authentication_error"
	case codes.PermissionDenied:
		return http.StatusForbidden, "permission_error"
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests, "rate_limit_error"
	case codes.Unavailable:
		return http.StatusServiceUnavailable, "server_error"
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout, "server_error"
	case codes.Canceled:
		return 499, "invalid_request_error"
	case codes.Unimplemented:
		return http.StatusNotImplemented, "invalid_request_error"
	}
	return http.StatusInternalServerError, "server_error"
}

// errorOf is the OpenAI error body of err (a gRPC status error, or any).
func errorOf(err error) (int, errorBody) {
	st, _ := status.FromError(err)
	code, typ := httpStatus(st.Code())
	c := strings.ToLower(st.Code().String())
	if st.Code() == codes.NotFound && strings.Contains(st.Message(), "model") {
		c = "model_not_found"
	}
	return code, errorBody{Error: errorObj{Message: st.Message(), Type: typ, Code: &c}}
}

func writeStatus(w http.ResponseWriter, err error) {
	code, body := errorOf(err)
	writeJSON(w, code, body)
}

func writeError(w http.ResponseWriter, httpCode int, typ, code, msg string) {
	writeJSON(w, httpCode, errorBody{Error: errorObj{Message: msg, Type: typ, Code: &code}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// invalid is a bad-request error.
func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}

// newID returns prefix and 24 random hex digits.
func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
