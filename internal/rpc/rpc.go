// Package rpc builds Switchyard's gRPC servers and client connections the same way
// for every node: TLS (mutual between nodes) when certificate files are configured,
// plaintext otherwise; message-size limits; keepalive; a rate limit on new calls;
// panic recovery that turns a bug into codes.Internal instead of a dead process.
package rpc

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TLSFiles names PEM files; all empty means plaintext.
type TLSFiles struct {
	Cert string // this side's certificate
	Key  string // this side's key
	CA   string // CA that signs the peer (server: client CA, enabling mTLS; client: server CA)
}

// Enabled reports whether any file is set.
func (f TLSFiles) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

func (f TLSFiles) pool() (*x509.CertPool, error) {
	if f.CA == "" {
		return nil, nil
	}
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("rpc: CA file: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("rpc: CA file %s holds no PEM certificate", f.CA)
	}
	return p, nil
}

// ServerCreds returns TLS server credentials (client certificates required when a
// CA is given), or nil for plaintext.
func ServerCreds(f TLSFiles) (credentials.TransportCredentials, error) {
	cfg, err := ServerTLS(f)
	if cfg == nil || err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ServerTLS is the TLS configuration of a server (nil for plaintext): the
// certificate, and client-certificate verification when a CA is given. The
// HTTP API uses it as the gRPC server does.
func ServerTLS(f TLSFiles) (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("rpc: TLS needs both a certificate and a key file")
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("rpc: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	if pool != nil {
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientCreds returns client credentials: TLS with the CA (and a client certificate
// for mTLS when given), or insecure for plaintext.
func ClientCreds(f TLSFiles) (credentials.TransportCredentials, error) {
	if !f.Enabled() {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	cfg.RootCAs = pool
	if f.Cert != "" {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("rpc: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// ServerConfig are the knobs of a node's gRPC server.
type ServerConfig struct {
	TLS          TLSFiles
	MaxRecvBytes int     // largest accepted message
	MaxSendBytes int     // largest sent message
	RatePerSec   float64 // new calls per second admitted (0: unlimited)
	RateBurst    int
	MaxStreams   uint32 // concurrent streams per connection (0: gRPC default)
	// AuthToken, when set, is required as "authorization: Bearer <token>" on every
	// call except the health and reflection services; its client identity is
	// "default".
	AuthToken string
	// Tokens maps bearer tokens to client identities (one token per client);
	// with AuthToken, either is accepted. The identity of a call is in its
	// context (ClientIdentity).
	Tokens       map[string]string
	ExtraOptions []grpc.ServerOption
	// OnDone, if set, sees every call's method and final error (nil: OK) after
	// it ends, refused calls included (authentication, rate limit, panics):
	// metrics and logs at the edge. It must not block.
	OnDone func(ctx context.Context, method string, err error)
	// Logger receives recovered panics (default: slog.Default()).
	Logger *slog.Logger
	// FirstMessageTimeout bounds the wait for a stream's first message (0:
	// none): a client that opens a stream and sends nothing is dropped instead
	// of holding the handler for ever.
	FirstMessageTimeout time.Duration
	// MaxStreamsPerClient caps the streams one client identity has open at
	// once (0: none); more are RESOURCE_EXHAUSTED for that client only.
	MaxStreamsPerClient int
	// PeerMethods are method prefixes (e.g. "/switchyard.v1.TrunkPeer/")
	// exempt from the bearer token, for services that authenticate their
	// callers themselves (cluster peers with the cluster's credential).
	PeerMethods []string
}

// NewServer builds a gRPC server with the common interceptors and limits.
func NewServer(c ServerConfig) (*grpc.Server, error) {
	creds, err := ServerCreds(c.TLS)
	if err != nil {
		return nil, err
	}
	var lim *rate.Limiter
	if c.RatePerSec > 0 {
		lim = rate.NewLimiter(rate.Limit(c.RatePerSec), max(c.RateBurst, 1))
	}
	streams := &streamCounter{open: map[string]int{}}
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newServerCodec()),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
			if c.OnDone != nil {
				defer func() { c.OnDone(ctx, info.FullMethod, err) }()
			}
			id, err := authorize(ctx, c, info.FullMethod)
			if err != nil {
				return nil, err
			}
			ctx = context.WithValue(ctx, identityKey{}, id)
			if lim != nil && !lim.Allow() {
				return nil, status.Errorf(codes.ResourceExhausted, "rate limit of %.0f calls/s exceeded; retry with backoff", c.RatePerSec)
			}
			defer recoverTo(ctx, c.Logger, &err, info.FullMethod)
			if err := utf8Error(req); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
			if c.OnDone != nil {
				defer func() { c.OnDone(ss.Context(), info.FullMethod, err) }()
			}
			id, err := authorize(ss.Context(), c, info.FullMethod)
			if err != nil {
				return err
			}
			release, err := streams.admit(id, c.MaxStreamsPerClient)
			if err != nil {
				return err
			}
			defer release()
			ss = identityStream{ss, context.WithValue(ss.Context(), identityKey{}, id)}
			if c.FirstMessageTimeout > 0 {
				ss = &firstMessageStream{ServerStream: ss, timeout: c.FirstMessageTimeout}
			}
			if lim != nil && !lim.Allow() {
				return status.Errorf(codes.ResourceExhausted, "rate limit of %.0f calls/s exceeded; retry with backoff", c.RatePerSec)
			}
			defer recoverTo(ss.Context(), c.Logger, &err, info.FullMethod)
			return h(srv, utf8Stream{ss})
		}),
	}
	if c.MaxRecvBytes > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(c.MaxRecvBytes))
	}
	if c.MaxSendBytes > 0 {
		opts = append(opts, grpc.MaxSendMsgSize(c.MaxSendBytes))
	}
	if c.MaxStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(c.MaxStreams))
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	opts = append(opts, c.ExtraOptions...)
	return grpc.NewServer(opts...), nil
}

// authorize checks the bearer token (constant-time) unless none is configured or
// the method belongs to the health or reflection services, and returns the
// caller's client identity ("" when authentication is off).
func authorize(ctx context.Context, c ServerConfig, method string) (string, error) {
	if (c.AuthToken == "" && len(c.Tokens) == 0) || strings.HasPrefix(method, "/grpc.health.v1.") || strings.HasPrefix(method, "/grpc.reflection.") {
		return "", nil
	}
	for _, p := range c.PeerMethods {
		if strings.HasPrefix(method, p) {
			return "", nil
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if id, ok := c.Identify(md.Get("authorization")); ok {
		return id, nil
	}
	return "", status.Error(codes.Unauthenticated, "missing or wrong API token: send \"authorization: Bearer <token>\" metadata")
}

// AuthRequired reports whether calls must carry a bearer token.
func (c ServerConfig) AuthRequired() bool { return c.AuthToken != "" || len(c.Tokens) > 0 }

// Identify returns the client identity of the first "Bearer <token>" value
// that holds a known token (compared in constant time, every entry). With
// authentication off every caller is "" and ok.
func (c ServerConfig) Identify(authorization []string) (id string, ok bool) {
	if !c.AuthRequired() {
		return "", true
	}
	for _, v := range authorization {
		got, ok := strings.CutPrefix(v, "Bearer ")
		if !ok {
			continue
		}
		if c.AuthToken != "" && subtle.ConstantTimeCompare([]byte(got), []byte(c.AuthToken)) == 1 {
			return "default", true
		}
		id := ""
		for tok, who := range c.Tokens { // every entry compared: no early exit on a match
			if subtle.ConstantTimeCompare([]byte(got), []byte(tok)) == 1 {
				id = who
			}
		}
		if id != "" {
			return id, true
		}
	}
	return "", false
}

// WithIdentity returns ctx carrying a client identity (ClientIdentity), for
// APIs served outside gRPC (the HTTP API) that authenticate with Identify.
func WithIdentity(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

type identityKey struct{}

// ClientIdentity is the authenticated client of a call ("" when the server
// runs without authentication).
func ClientIdentity(ctx context.Context) string {
	id, _ := ctx.Value(identityKey{}).(string)
	return id
}

// identityStream carries the caller's identity in a stream's context.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identityStream) Context() context.Context { return s.ctx }

// BearerToken returns call credentials that send the API token.
type BearerToken string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t BearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials (false so
// the token also works on loopback plaintext; production uses TLS).
func (BearerToken) RequireTransportSecurity() bool { return false }

func recoverTo(ctx context.Context, log *slog.Logger, err *error, method string) {
	if r := recover(); r != nil {
		if log == nil {
			log = slog.Default()
		}
		log.ErrorContext(ctx, "panic in a call", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		*err = status.Errorf(codes.Internal, "internal error in %s; the server logged the details", method)
	}
}

// Flow-control windows of node-to-node connections (a trunk's dispatch
// streams to the expert nodes, a trunk's session transfers to another).
// Setting them turns off gRPC's bandwidth-delay-product estimation, which
// otherwise answers data frames with pings, and makes window updates rare:
// from 64 KiB, every few dispatch messages woke each side's writer
// goroutine for a ping, its ack or a window update, each a syscall and a
// goroutine that waits for a P while the matmuls hold them (an execution
// trace of a one-session bench-cluster run handled 3,138 window updates;
// 906 and 513 with these windows). The windows are credit, not buffers
// (memory grows only when a receiver stops reading), and the estimation
// could grow them to 16 MiB anyway.
const (
	PeerStreamWindow = 8 << 20
	PeerConnWindow   = 32 << 20
)

// PeerServerOptions are the grpc.Server options of a node that node-to-node
// connections dial (the flow-control windows above).
func PeerServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(PeerStreamWindow), grpc.InitialConnWindowSize(PeerConnWindow)}
}

// Dialer returns a dial function for node-to-node connections.
func Dialer(f TLSFiles, maxMsg int, extra ...grpc.DialOption) (func(ctx context.Context, addr string) (*grpc.ClientConn, error), error) {
	creds, err := ClientCreds(f)
	if err != nil {
		return nil, err
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(PeerStreamWindow),
		grpc.WithInitialConnWindowSize(PeerConnWindow),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(PeerCodec())),
	}, extra...)
	if maxMsg > 0 {
		opts = append(opts, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
	}
	return func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, opts...)
	}, nil
}

// streamCounter counts the open streams of each client identity.
type streamCounter struct {
	mu   sync.Mutex
	open map[string]int
}

func (s *streamCounter) admit(id string, limit int) (release func(), err error) {
	if limit <= 0 || id == "" {
		return func() {}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[id] >= limit {
		return nil, status.Errorf(codes.ResourceExhausted, "client %q has %d streams open, the limit is %d", id, s.open[id], limit)
	}
	s.open[id]++
	return func() {
		s.mu.Lock()
		if s.open[id]--; s.open[id] <= 0 {
			delete(s.open, id)
		}
		s.mu.Unlock()
	}, nil
}

// firstMessageStream fails a stream whose first message does not arrive in
// time; the blocked receive ends when the handler returns and the stream is
// torn down.
type firstMessageStream struct {
	grpc.ServerStream
	timeout time.Duration
	got     bool
}

func (s *firstMessageStream) RecvMsg(m any) error {
	if s.got {
		return s.ServerStream.RecvMsg(m)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case err := <-done:
		s.got = err == nil
		return err
	case <-t.C:
		return status.Errorf(codes.DeadlineExceeded, "no request message within %v of opening the stream", s.timeout)
	case <-s.Context().Done():
		return status.FromContextError(s.Context().Err()).Err()
	}
}

// ClientStreams caps the streams each client identity has open at once, for
// streaming APIs served outside gRPC (the HTTP API's server-sent events).
type ClientStreams struct{ c streamCounter }

// NewClientStreams returns an empty counter.
func NewClientStreams() *ClientStreams { return &ClientStreams{streamCounter{open: map[string]int{}}} }

// Admit counts a stream of client id against limit (0: none); the error is
// RESOURCE_EXHAUSTED. Call release when the stream ends.
func (s *ClientStreams) Admit(id string, limit int) (release func(), err error) {
	return s.c.admit(id, limit)
}
