package rpc

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	channelzsvc "google.golang.org/grpc/channelz/service"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestPeerWindows: a connection made by Dialer to a server with
// PeerServerOptions runs with the peer flow-control windows both ways (as
// the server's socket reports them in channelz), not gRPC's 64 KiB.
func TestPeerWindows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := serve(t, ServerConfig{ExtraOptions: PeerServerOptions()}, func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, health.NewServer())
		channelzsvc.RegisterChannelzServiceToServer(s)
	})
	dial, err := Dialer(TLSFiles{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	cz := channelzpb.NewChannelzClient(conn)
	servers, err := cz.GetServers(ctx, &channelzpb.GetServersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var windows [][2]int64
	for _, s := range servers.GetServer() {
		socks, err := cz.GetServerSockets(ctx, &channelzpb.GetServerSocketsRequest{ServerId: s.GetRef().GetServerId()})
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range socks.GetSocketRef() {
			sock, err := cz.GetSocket(ctx, &channelzpb.GetSocketRequest{SocketId: ref.GetSocketId()})
			if err != nil {
				t.Fatal(err)
			}
			d := sock.GetSocket().GetData()
			windows = append(windows, [2]int64{d.GetLocalFlowControlWindow().GetValue(), d.GetRemoteFlowControlWindow().GetValue()})
		}
	}
	if len(windows) == 0 {
		t.Fatal("channelz lists no server socket")
	}
	// A little of each window is in use by the calls themselves.
	for _, w := range windows {
		if w[0] < PeerConnWindow/2 || w[1] < PeerConnWindow/2 {
			t.Fatalf("server socket windows (local, remote) = %v, want about %d both ways (every socket: %v)", w, PeerConnWindow, windows)
		}
	}
}
