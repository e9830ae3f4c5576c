// Package embedetcd starts an etcd server inside the process, for `switchyard up`
// and the test harness. Production uses an external etcd cluster instead; nothing
// else in Switchyard knows the difference (they all talk through clientv3).
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd.
type Server struct {
	e         *embed.Etcd
	Endpoints []string
	PeerAddr  string // host:port of the peer listener (reuse it to restart)
}

// Config of the embedded server.
type Config struct {
	Dir        string // data directory (required)
	ClientAddr string // host:port for clients; "127.0.0.1:0" picks a free port
	PeerAddr   string // host:port for the (single-member) peer URL; default a free loopback port
}

// pickAddr is freeAddr (tests replace it).
var pickAddr = freeAddr

// isAuto reports whether addr asks for a free port.
func isAuto(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return addr == "" || (err == nil && port == "0")
}

func freeAddr(addr string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start launches the server and waits until it serves.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.Dir == "" {
		return nil, fmt.Errorf("embedetcd: data directory required")
	}
	// A port picked free can be taken by someone else before etcd binds it
	// (other tests, other processes): then pick again, a few times.
	var (
		e      *embed.Etcd
		cu, pu *url.URL
		pa     string
	)
	for attempt := 0; ; attempt++ {
		ca, err := pickAddr(c.ClientAddr)
		if err != nil {
			return nil, fmt.Errorf("embedetcd: client address: %w", err)
		}
		pa, err = pickAddr(c.PeerAddr)
		if err != nil {
			return nil, fmt.Errorf("embedetcd: peer address: %w", err)
		}
		cfg := embed.NewConfig()
		cfg.Dir = c.Dir
		cu, _ = url.Parse("http://" + ca)
		pu, _ = url.Parse("http://" + pa)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.LogLevel = "fatal"
		e, err = embed.StartEtcd(cfg)
		if err == nil {
			break
		}
		auto := isAuto(c.ClientAddr) || isAuto(c.PeerAddr)
		if !auto || attempt == 4 || !(errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")) {
			return nil, fmt.Errorf("embedetcd: %w", err)
		}
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedetcd: server not ready after 30s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{e: e, Endpoints: []string{cu.String()}, PeerAddr: pa}, nil
}

// Client returns a client for the server.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: s.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// Close stops the server.
func (s *Server) Close() {
	s.e.Close()
	<-s.e.Server.StopNotify()
}
