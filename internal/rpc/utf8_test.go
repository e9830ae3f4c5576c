package rpc

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec sends request bytes as they are (the Go client refuses to marshal
// invalid UTF-8, other clients do not) and decodes replies as proto.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return newServerCodec().Unmarshal(data, v)
}

// Invalid UTF-8 in a request field is INVALID_ARGUMENT naming the field, on
// unary and streaming calls (grpc-go's codec answered INTERNAL).
func TestInvalidUTF8IsInvalidArgument(t *testing.T) {
	conn := serveTest(t, ServerConfig{}, func(srv *grpc.Server) { healthpb.RegisterHealthServer(srv, health.NewServer()) })
	bad := []byte{0x0a, 0x03, 0xff, 'x', 0xfe} // field 1 (service): "\xffx\xfe"
	ctx := context.Background()
	var resp healthpb.HealthCheckResponse
	err := conn.Invoke(ctx, "/grpc.health.v1.Health/Check", bad, &resp, grpc.ForceCodecV2(rawCodec{}))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "service") {
		t.Fatalf("unary: %v", err)
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/grpc.health.v1.Health/Watch", grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendMsg(bad); err != nil {
		t.Fatal(err)
	}
	st.CloseSend()
	if err := st.RecvMsg(&resp); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("stream: %v", err)
	}
	// Valid UTF-8 still works.
	good := []byte{0x0a, 0x00}
	if err := conn.Invoke(ctx, "/grpc.health.v1.Health/Check", good, &resp, grpc.ForceCodecV2(rawCodec{})); err != nil {
		t.Fatalf("valid request: %v", err)
	}
}

// A stream that sends headers and nothing else is dropped after the first-
// message timeout, and one client cannot hold more streams than its cap.
func TestStreamLimits(t *testing.T) {
	// A test service (health and reflection are exempt from authentication):
	// Wait answers once, then holds the stream open.
	conn := serveTest(t, ServerConfig{FirstMessageTimeout: 100 * time.Millisecond, MaxStreamsPerClient: 1,
		Tokens: map[string]string{"token-of-client-a-0123": "a", "token-of-client-b-0123": "b"}}, func(srv *grpc.Server) {
		srv.RegisterService(&grpc.ServiceDesc{ServiceName: "test.Streams", HandlerType: (*any)(nil), Streams: []grpc.StreamDesc{{
			StreamName: "Wait", ServerStreams: true,
			Handler: func(_ any, st grpc.ServerStream) error {
				var req healthpb.HealthCheckRequest
				if err := st.RecvMsg(&req); err != nil {
					return err
				}
				if err := st.SendMsg(&healthpb.HealthCheckResponse{}); err != nil {
					return err
				}
				<-st.Context().Done()
				return nil
			}}}}, struct{}{})
	})
	as := func(tok string) context.Context {
		return metadata.NewOutgoingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	}
	desc := &grpc.StreamDesc{ServerStreams: true}
	// Headers only: no request message.
	silent, err := conn.NewStream(as("token-of-client-a-0123"), desc, "/test.Streams/Wait")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var resp healthpb.HealthCheckResponse
	if err := silent.RecvMsg(&resp); status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 3*time.Second {
		t.Fatalf("a silent stream: %v after %v", err, time.Since(start))
	}
	// Client a holds one open Watch; its second is refused, b's is not.
	open := func(tok string) (grpc.ClientStream, error) {
		st, err := conn.NewStream(as(tok), desc, "/test.Streams/Wait")
		if err != nil {
			return nil, err
		}
		if err := st.SendMsg(&healthpb.HealthCheckRequest{}); err != nil {
			return nil, err
		}
		st.CloseSend()
		return st, st.RecvMsg(&resp) // the first status update
	}
	if _, err := open("token-of-client-a-0123"); err != nil {
		t.Fatal(err)
	}
	if _, err := open("token-of-client-a-0123"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("client a's second stream: %v", err)
	}
	if _, err := open("token-of-client-b-0123"); err != nil {
		t.Fatalf("client b is refused because of a: %v", err)
	}
}

// serveTest serves a server built from c (with register's services) on
// loopback and returns a client connection; both end with the test.
func serveTest(t *testing.T, c ServerConfig, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	srv, err := NewServer(c)
	if err != nil {
		t.Fatal(err)
	}
	register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
