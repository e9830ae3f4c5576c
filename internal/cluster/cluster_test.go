package cluster

import (
	"context"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/testutil"
)

func startEtcd(t *testing.T) *clientv3.Client { return testutil.StartEtcd(t).Direct }

var waitFor = testutil.WaitFor

func TestRegistryAndTable(t *testing.T) {
	cli := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var seen []NodeInfo
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchNodes(ctx, cli, RoleExpert, func(n []NodeInfo) { mu.Lock(); seen = n; mu.Unlock() })
	}()
	ra, err := Register(ctx, cli, NodeInfo{ID: "a", Role: RoleExpert, Addr: "127.0.0.1:1"}, 5)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := Register(ctx, cli, NodeInfo{ID: "b", Role: RoleExpert, Addr: "127.0.0.1:2"}, 5)
	if err != nil {
		t.Fatal(err)
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	waitFor(t, "two nodes", func() bool { return count() == 2 })
	if err := rb.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node b gone", func() bool { return count() == 1 })

	var tables []uint64
	go WatchTable(ctx, cli, func(tb *routing.Table) { mu.Lock(); tables = append(tables, tb.Version); mu.Unlock() })
	nodes := []routing.Node{{ID: "a", Addr: "127.0.0.1:1"}}
	t1, _ := routing.Static(1, 2, 4, nodes)
	if err := PublishTable(ctx, cli, t1); err != nil {
		t.Fatal(err)
	}
	if err := PublishTable(ctx, cli, t1); err == nil {
		t.Fatal("republishing the same version was accepted")
	}
	t2, _ := routing.Static(2, 2, 4, nodes)
	if err := PublishTable(ctx, cli, t2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "table v2", func() bool { mu.Lock(); defer mu.Unlock(); return len(tables) > 0 && tables[len(tables)-1] == 2 })
	got, err := LoadTable(ctx, cli)
	if err != nil || got.Version != 2 {
		t.Fatalf("LoadTable: %v %v", got, err)
	}
	if err := ReportReady(ctx, ra, "a", 2); err != nil {
		t.Fatal(err)
	}
	ra.Close()
	cancel()
	<-done
}
