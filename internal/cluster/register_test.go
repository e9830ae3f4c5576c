package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/internal/testutil"
)

var fastRetry = RegisterOptions{AttemptTimeout: time.Second, RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond}

// A revoked lease (an operator's `etcdctl lease revoke`, or expiry) is replaced
// and the node key and every attached key are written again, every time.
func TestRegistrationSurvivesRevokedLeases(t *testing.T) {
	e := testutil.StartEtcd(t)
	cli := e.Direct
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
		waitFor(t, "keys written again", func() bool { return e.Has(NodesPrefix+"expert/a") && e.Has(ReadyPrefix+"a") })
	}
}

// The outage the hand-rolled keep-alive never recovered from: the lease expires
// while etcd is unreachable, the first attempts to register again fail, and the
// node must come back once etcd does. Close must not hang, with etcd up or down.
func TestRegistrationSurvivesEtcdOutage(t *testing.T) {
	e := testutil.StartEtcd(t)
	reg, err := Register(context.Background(), e.Client(t), NodeInfo{ID: "b", Role: RoleTrunk, Addr: "x"}, 1, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	key := NodesPrefix + "trunk/b"
	waitFor(t, "registered", func() bool { return e.Has(key) })
	e.Bridge.Cut()
	// Unreachable for several TTLs: the lease expires, attempts fail.
	waitFor(t, "lease expired", func() bool { return !e.Has(key) })
	time.Sleep(time.Second) // a few failed attempts at registering again
	if reg.Generation() != 1 {
		t.Fatalf("generation %d while etcd is unreachable", reg.Generation())
	}
	e.Bridge.Restore()
	waitFor(t, "re-registration after the outage", func() bool { return reg.Generation() >= 2 && e.Has(key) })
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
	waitFor(t, "key revoked", func() bool { return !e.Has(key) })
}

func TestRegistrationCloseWithEtcdDown(t *testing.T) {
	e := testutil.StartEtcd(t)
	reg, err := Register(context.Background(), e.Client(t), NodeInfo{ID: "c", Role: RoleExpert}, 1, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	e.Bridge.Cut()
	time.Sleep(1500 * time.Millisecond) // lease lost, attempts at registering again failing
	start := time.Now()
	reg.Close()
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("Close took %v with etcd down", d)
	}
}
