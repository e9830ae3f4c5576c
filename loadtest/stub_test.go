package loadtest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// stubServer is a hand-written Switchyard server: it streams max_tokens
// single-token chunks tokenGap apart, keeps session token counts, and fails
// every failEvery-th generation with ResourceExhausted.
type stubServer struct {
	pb.UnimplementedSwitchyardServer
	failEvery int64
	tokenGap  time.Duration
	token     string // required bearer token (none when empty)

	calls atomic.Int64
	mu    sync.Mutex
	live  map[string]int // session id -> tokens
	peak  int            // most sessions alive at once
	ids   int
}

var _ pb.SwitchyardServer = (*stubServer)(nil)

// startStub serves s on loopback until the test ends and returns its address.
func startStub(t *testing.T, s *stubServer) string {
	t.Helper()
	s.live = map[string]int{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := rpc.NewServer(rpc.ServerConfig{AuthToken: s.token})
	if err != nil {
		t.Fatal(err)
	}
	pb.RegisterSwitchyardServer(srv, s)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

func (s *stubServer) ModelInfo(context.Context, *pb.ModelInfoRequest) (*pb.ModelInfoResponse, error) {
	return &pb.ModelInfoResponse{Name: "stub", VocabSize: 100, EosTokenId: 0, MaxContext: 10000, RecurrentStateBytes: 1000, KvBytesPerToken: 10}, nil
}

func (s *stubServer) Tokenize(_ context.Context, req *pb.TokenizeRequest) (*pb.TokenizeResponse, error) {
	return &pb.TokenizeResponse{TokenIds: make([]int32, (len(req.Text)+3)/4)}, nil
}

func (s *stubServer) CreateSession(context.Context, *pb.CreateSessionRequest) (*pb.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids++
	id := fmt.Sprint("s", s.ids)
	s.live[id] = 0
	s.peak = max(s.peak, len(s.live))
	return &pb.Session{SessionId: id}, nil
}

func (s *stubServer) GetSession(_ context.Context, req *pb.GetSessionRequest) (*pb.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.live[req.SessionId]
	if !ok {
		return nil, status.Error(codes.NotFound, "no session")
	}
	return &pb.Session{SessionId: req.SessionId, Tokens: int32(n), StateBytes: 1000 + 10*int64(n), RecurrentBytes: 1000, KvBytes: 10 * int64(n)}, nil
}

func (s *stubServer) DeleteSession(_ context.Context, req *pb.DeleteSessionRequest) (*pb.DeleteSessionResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.live[req.SessionId]; !ok {
		return nil, status.Error(codes.NotFound, "no session")
	}
	delete(s.live, req.SessionId)
	return &pb.DeleteSessionResponse{FreedBytes: 1000}, nil
}

func (s *stubServer) Generate(req *pb.GenerateRequest, stream pb.Switchyard_GenerateServer) error {
	if s.failEvery > 0 && s.calls.Add(1)%s.failEvery == 0 {
		return status.Error(codes.ResourceExhausted, "stub: queue full")
	}
	prompt := len(req.GetTokenIds().GetIds())
	cached := 0
	if req.SessionId != "" {
		s.mu.Lock()
		n, ok := s.live[req.SessionId]
		s.mu.Unlock()
		if !ok {
			return status.Error(codes.NotFound, "no session")
		}
		cached = n
	}
	for i := range req.MaxTokens {
		if err := stream.Send(&pb.GenerateResponse{Event: &pb.GenerateResponse_Chunk{Chunk: &pb.TokenChunk{TokenIds: []int32{i + 1}}}}); err != nil {
			return err
		}
		select {
		case <-time.After(s.tokenGap):
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
	if req.SessionId != "" {
		s.mu.Lock()
		s.live[req.SessionId] += prompt + int(req.MaxTokens)
		s.mu.Unlock()
	}
	return stream.Send(&pb.GenerateResponse{Event: &pb.GenerateResponse_Final{Final: &pb.GenerateFinal{
		FinishReason: pb.FinishReason_FINISH_REASON_LENGTH, SessionId: req.SessionId,
		Usage: &pb.Usage{PromptTokens: int32(prompt), CompletionTokens: req.MaxTokens, CachedTokens: int32(cached)}}}})
}

func (s *stubServer) liveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

func TestRunStub(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		check  func(t *testing.T, rep *Report, s *stubServer)
	}{
		{
			name: "errors by code",
			modify: func(c *Config) {
				c.Turns, c.Requests = 1, 40
			},
			check: func(t *testing.T, rep *Report, _ *stubServer) {
				k := rep.Counts
				if k.Sent != 40 || k.Failed != 10 || k.Completed != 30 {
					t.Fatalf("counts %+v, want 40 sent, every 4th failed", k)
				}
				if len(rep.Errors) != 1 || rep.Errors[0].Code != "ResourceExhausted" || rep.Errors[0].Count != 10 {
					t.Fatalf("errors %+v", rep.Errors)
				}
				if f := rep.Goodput.Fraction; f != 0.75 {
					t.Fatalf("goodput fraction %v, want 0.75 (no SLO: every completed request)", f)
				}
			},
		},
		{
			name: "sessions are deleted",
			modify: func(c *Config) {
				c.Turns, c.Requests = 3, 30
			},
			check: func(t *testing.T, rep *Report, s *stubServer) {
				if n := s.liveSessions(); n != 0 {
					t.Fatalf("%d sessions left on the server", n)
				}
				if s.peak > 4 {
					t.Fatalf("%d sessions alive at once with 4 workers", s.peak)
				}
				if rep.Sessions.Measured == 0 || rep.Sessions.KVBytes.Max <= 0 {
					t.Fatalf("sessions %+v", rep.Sessions)
				}
			},
		},
		{
			name: "held sessions",
			modify: func(c *Config) {
				c.Turns, c.Requests, c.HoldSessions = 1, 12, true
			},
			check: func(t *testing.T, rep *Report, s *stubServer) {
				if n := s.liveSessions(); n != 0 {
					t.Fatalf("%d held sessions left on the server", n)
				}
				if s.peak < 9 { // 12 minus the up to 3 that failed
					t.Fatalf("at most %d sessions alive at once, want every completed one held", s.peak)
				}
				if rep.Sessions.ServerSide != rep.Sessions.Count {
					t.Fatalf("sessions %+v: single-turn sessions not server-side", rep.Sessions)
				}
			},
		},
		{
			name: "api token",
			modify: func(c *Config) {
				c.Requests, c.APIToken = 8, "sekret"
			},
			check: func(t *testing.T, rep *Report, _ *stubServer) {
				if k := rep.Counts; k.Completed != 6 || k.Failed != 2 {
					t.Fatalf("counts %+v: the token was not accepted", k)
				}
			},
		},
		{
			name: "open loop",
			modify: func(c *Config) {
				c.Mode, c.Rate, c.Requests, c.Duration = OpenLoop, 200, 0, 300*time.Millisecond
			},
			check: func(t *testing.T, rep *Report, _ *stubServer) {
				if k := rep.Counts; k.Sent < 30 || k.Sent > 100 {
					t.Fatalf("counts %+v, want about 60 arrivals", k)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &stubServer{failEvery: 4, tokenGap: time.Millisecond}
			if tt.name == "api token" {
				s.token = "sekret"
			}
			addr := startStub(t, s)
			checkLeaks(t)
			cfg := DefaultConfig()
			cfg.Addr, cfg.Concurrency, cfg.Duration = addr, 4, 0
			cfg.PromptTokens, cfg.OutputTokens = Fixed(16), Fixed(5)
			tt.modify(&cfg)
			rep, err := Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if k := rep.Counts; k.Completed+k.Failed != k.Sent {
				t.Fatalf("counts do not add up: %+v", k)
			}
			// Means, not the ITL median: on a loaded machine the client can
			// read several queued tokens at once (gaps near 0, then one
			// long one), which moves the median but not the mean (CI saw an
			// ITL p50 of 0.003 ms with a TPOT mean of 1.4 ms).
			if rep.TPOT.Count > 0 && (rep.TPOT.MeanMs < 0.5 || rep.ITL.MeanMs < 0.5) {
				t.Fatalf("TPOT mean %vms, ITL mean %vms: the stub sends tokens >= 1ms apart", rep.TPOT.MeanMs, rep.ITL.MeanMs)
			}
			tt.check(t, rep, s)
		})
	}
}

// TestRunWrongAPIToken: a refused token fails the run at once, naming the cause.
func TestRunWrongAPIToken(t *testing.T) {
	addr := startStub(t, &stubServer{token: "sekret"})
	cfg := DefaultConfig()
	cfg.Addr, cfg.Requests, cfg.Duration, cfg.APIToken = addr, 4, 0, "guess"
	_, err := Run(context.Background(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), codes.Unauthenticated.String()) {
		t.Fatalf("Run = %v, want an Unauthenticated error", err)
	}
}
