// Package testutil holds helpers shared by the tests of several packages:
// polling for a condition (never sleep-and-hope) and an embedded etcd behind a
// fault-injecting bridge. Only _test.go files import it.
package testutil

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-serving/switchyard/internal/embedetcd"
	"github.com/switchyard-serving/switchyard/internal/netfault"
)

// WaitFor polls cond every 5ms until it holds, failing the test after 10s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Etcd is an embedded etcd for a test, reachable directly and through a bridge
// that the test can cut (an outage as clients see it, without stopping etcd,
// which takes seconds).
type Etcd struct {
	Server *embedetcd.Server
	Bridge *netfault.Bridge
	Direct *clientv3.Client // bypasses the bridge: for assertions
}

// StartEtcd starts an embedded etcd and its bridge, stopped at cleanup.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	s, err := embedetcd.Start(context.Background(), embedetcd.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := netfault.New(strings.TrimPrefix(s.Endpoints[0], "http://"))
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	cli, err := s.Client()
	if err != nil {
		b.Close()
		s.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); b.Close(); s.Close() })
	return &Etcd{Server: s, Bridge: b, Direct: cli}
}

// Endpoint is the bridged endpoint nodes under test should use.
func (e *Etcd) Endpoint() string { return "http://" + e.Bridge.Addr() }

// Client returns a client through the bridge, closed at cleanup.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Has reports whether key exists now (read directly, not through the bridge).
func (e *Etcd) Has(key string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := e.Direct.Get(ctx, key)
	return err == nil && len(r.Kvs) == 1
}
