package cluster

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

// keyExists reports whether key is in etcd now (false when etcd is unreachable).
func keyExists(cli *clientv3.Client, key string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	return err == nil && len(resp.Kvs) == 1
}

var fastRetry = RegisterOptions{AttemptTimeout: time.Second, RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond}

// A revoked lease (an operator's `etcdctl lease revoke`, or expiry) is replaced
// and the node key and every attached key are written again, every time.
func TestRegistrationSurvivesRevokedLeases(t *testing.T) {
	cli := startEtcd(t)
	reg, err := Register(context.Background(), cli, NodeInfo{ID: "a", Role: RoleExpert, Addr: "x"}, 2, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if err := reg.Put(context.Background(), ReadyPrefix+"a", "7"); err != nil {
		t.Fatal(err)
	}
	for round := 2; round <= 4; round++ {
		reg.mu.Lock()
		lease := reg.sess.Lease()
		reg.mu.Unlock()
		if _, err := cli.Revoke(context.Background(), lease); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "re-registration", func() bool { return reg.Generation() >= uint64(round) })
		waitFor(t, "keys written again", func() bool {
			return keyExists(cli, NodesPrefix+"expert/a") && keyExists(cli, ReadyPrefix+"a")
		})
	}
}

// bridged starts an etcd with a fault-injecting bridge in front of it: clients
// dialing the bridge see an outage when it is cut. It returns a direct client.
func bridged(t *testing.T) (*clientv3.Client, *netfault.Bridge) {
	t.Helper()
	s, err := embedetcd.Start(context.Background(), embedetcd.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := netfault.New(strings.TrimPrefix(s.Endpoints[0], "http://"))
	if err != nil {
		t.Fatal(err)
	}
	direct, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close(); b.Close(); s.Close() })
	return direct, b
}

// The outage the hand-rolled keep-alive never recovered from: the lease expires
// while etcd is unreachable, the first attempts to register again fail, and the
// node must come back once etcd does. Close must not hang, with etcd up or down.
func TestRegistrationSurvivesEtcdOutage(t *testing.T) {
	direct, bridge := bridged(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + bridge.Addr()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, err := Register(context.Background(), cli, NodeInfo{ID: "b", Role: RoleTrunk, Addr: "x"}, 1, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	key := NodesPrefix + "trunk/b"
	waitFor(t, "registered", func() bool { return keyExists(direct, key) })
	bridge.Cut()
	// Unreachable for several TTLs: the lease expires, attempts fail.
	waitFor(t, "lease expired", func() bool { return !keyExists(direct, key) })
	time.Sleep(time.Second) // a few failed attempts at registering again
	if reg.Generation() != 1 {
		t.Fatalf("generation %d while etcd is unreachable", reg.Generation())
	}
	bridge.Restore()
	waitFor(t, "re-registration after the outage", func() bool { return reg.Generation() >= 2 && keyExists(direct, key) })
	done := make(chan error, 1)
	go func() { done <- reg.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
	waitFor(t, "key revoked", func() bool { return !keyExists(direct, key) })
}

func TestRegistrationCloseWithEtcdDown(t *testing.T) {
	_, bridge := bridged(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + bridge.Addr()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, err := Register(context.Background(), cli, NodeInfo{ID: "c", Role: RoleExpert}, 1, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	bridge.Cut()
	time.Sleep(1500 * time.Millisecond) // lease lost, attempts at registering again failing
	start := time.Now()
	reg.Close()
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("Close took %v with etcd down", d)
	}
}
