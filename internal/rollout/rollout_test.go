package rollout

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/internal/routing"
	"github.com/switchyard-serving/switchyard/internal/testutil"
)

// table builds a version of a 1-layer, 4-expert table: assign[node] lists the
// experts that node holds (share 1 each).
func table(v uint64, assign map[string][]int) *routing.Table {
	t := routing.NewTable(v, 1, 4)
	for _, id := range []string{"a", "b", "c"} {
		exps, ok := assign[id]
		if !ok {
			continue
		}
		t.Nodes = append(t.Nodes, routing.Node{ID: id, Addr: id + ":1"})
		for _, e := range exps {
			t.Replicas[0][e] = append(t.Replicas[0][e], routing.Replica{Node: id, Share: 1})
		}
	}
	return t
}

// fakeNode is a Target that records what it holds and can fail or stall loads.
type fakeNode struct {
	mu     sync.Mutex
	id     string
	holds  map[[2]int]bool
	loads  int
	fail   int           // fail this many loads
	block  chan struct{} // when set, loads wait on it
	events []string
}

func (n *fakeNode) SetAssignment(t *routing.Table) error {
	n.mu.Lock()
	block := n.block
	n.mu.Unlock()
	if block != nil {
		<-block
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loads++
	if n.fail > 0 {
		n.fail--
		n.events = append(n.events, "fail")
		return errors.New("out of memory")
	}
	n.holds = t.Assigned(n.id)
	n.events = append(n.events, "load "+keys(n.holds))
	return nil
}

func (n *fakeNode) held() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return keys(n.holds)
}

func (n *fakeNode) log(s string) {
	n.mu.Lock()
	n.events = append(n.events, s)
	n.mu.Unlock()
}

func (n *fakeNode) history() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.events, "; ")
}

func keys(m map[[2]int]bool) string {
	var b strings.Builder
	for e := range 4 {
		if m[[2]int{0, e}] {
			b.WriteByte(byte('0' + e))
		}
	}
	return b.String()
}

// follow starts a follower of node id reporting into st.
func follow(t *testing.T, st *Memory, n *fakeNode, grace time.Duration) *Follower {
	t.Helper()
	f := NewFollower(FollowerConfig{Node: n.id, Target: n, Grace: grace, Retry: 20 * time.Millisecond,
		Report: func(ctx context.Context, v uint64) error {
			err := st.ReportReady(ctx, n.id, v)
			if err == nil {
				n.log("ready " + string(rune('0'+v)))
			}
			return err
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// wire delivers the store's pending and current tables to followers, as the
// etcd watches do.
func wire(st *Memory, fs ...*Follower) {
	st.OnPublish = func(t *routing.Table) {
		for _, f := range fs {
			f.SetCurrent(t)
		}
	}
}

type pendingStore struct {
	*Memory
	fs []*Follower
}

func (p pendingStore) SetPending(ctx context.Context, t *routing.Table) error {
	if err := p.Memory.SetPending(ctx, t); err != nil {
		return err
	}
	for _, f := range p.fs {
		f.SetPending(t)
	}
	return nil
}

func (p pendingStore) ClearPending(ctx context.Context, v uint64) error {
	if cur, _ := p.Memory.Pending(ctx); cur == nil || cur.Version != v {
		return nil
	}
	return p.SetPending(ctx, nil)
}

var waitFor = testutil.WaitFor

func TestNextVersion(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cur, pend *routing.Table
		want      uint64
	}{
		{"first table", nil, nil, 1},
		{"after current", table(4, nil), nil, 5},
		{"stale pending of a former leader", table(4, nil), table(6, nil), 7},
		{"pending older than current", table(4, nil), table(3, nil), 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NextVersion(tc.cur, tc.pend); got != tc.want {
				t.Fatalf("NextVersion = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestRollMakeBeforeBreak(t *testing.T) {
	st := NewMemory()
	a, b := &fakeNode{id: "a"}, &fakeNode{id: "b"}
	fa, fb := follow(t, st, a, 50*time.Millisecond), follow(t, st, b, 50*time.Millisecond)
	wire(st, fa, fb)
	ps := pendingStore{st, []*Follower{fa, fb}}
	cfg := Config{ReadyTimeout: 5 * time.Second, Poll: 5 * time.Millisecond}
	if err := Roll(context.Background(), ps, table(1, map[string][]int{"a": {0, 1}, "b": {2, 3}}), cfg); err != nil {
		t.Fatal(err)
	}
	// Move expert 1 from a to b.
	if err := Roll(context.Background(), ps, table(2, map[string][]int{"a": {0}, "b": {1, 2, 3}}), cfg); err != nil {
		t.Fatal(err)
	}
	cur, _ := st.Current(context.Background())
	pend, _ := st.Pending(context.Background())
	if cur.Version != 2 || pend != nil {
		t.Fatalf("current %d, pending %v", cur.Version, pend)
	}
	// b loaded expert 1 before reporting ready at 2; a dropped it only after grace.
	if h := b.history(); !strings.Contains(h, "load 123; ready 2") {
		t.Fatalf("b: %s", h)
	}
	waitFor(t, "a drops expert 1 after the grace period", func() bool { return a.held() == "0" })
	if h := a.history(); !strings.HasSuffix(h, "ready 2; load 0") {
		t.Fatalf("a must report table 2 while still holding expert 1, then drop it: %s", h)
	}
}

func TestFollowerKeepsReplicaReaddedDuringGrace(t *testing.T) {
	st := NewMemory()
	a := &fakeNode{id: "a"}
	f := follow(t, st, a, 200*time.Millisecond)
	f.SetCurrent(table(1, map[string][]int{"a": {0, 1}}))
	waitFor(t, "load", func() bool { return a.held() == "01" })
	f.SetCurrent(table(2, map[string][]int{"a": {0}}))
	waitFor(t, "ready 2", func() bool { r, _ := st.Ready(context.Background()); return r["a"] == 2 })
	f.SetCurrent(table(3, map[string][]int{"a": {0, 1}}))
	time.Sleep(300 * time.Millisecond) // past the grace of table 2
	if a.held() != "01" {
		t.Fatalf("holds %q: expert 1 was dropped though table 3 has it again (%s)", a.held(), a.history())
	}
}

func TestRollAbandonedWhenNodeLeaves(t *testing.T) {
	st := NewMemory()
	a := &fakeNode{id: "a"}
	fa := follow(t, st, a, time.Second)
	ps := pendingStore{st, []*Follower{fa}}
	var mu sync.Mutex
	gone := ""
	cfg := Config{ReadyTimeout: 5 * time.Second, Poll: 5 * time.Millisecond, Gone: func(*routing.Table) string { mu.Lock(); defer mu.Unlock(); return gone }}
	go func() { time.Sleep(50 * time.Millisecond); mu.Lock(); gone = "b"; mu.Unlock() }()
	err := Roll(context.Background(), ps, table(1, map[string][]int{"a": {0, 1}, "b": {2, 3}}), cfg) // b never loads
	if !errors.Is(err, ErrAbandoned) || !strings.Contains(err.Error(), "b left") {
		t.Fatalf("err = %v", err)
	}
	if p, _ := st.Pending(context.Background()); p != nil {
		t.Fatal("pending not cleared")
	}
	if c, _ := st.Current(context.Background()); c != nil {
		t.Fatal("abandoned table published")
	}
}

func TestRollAbandonedWhenLoadFails(t *testing.T) {
	st := NewMemory()
	a, b := &fakeNode{id: "a"}, &fakeNode{id: "b", fail: 1 << 30}
	fa, fb := follow(t, st, a, time.Second), follow(t, st, b, time.Second)
	ps := pendingStore{st, []*Follower{fa, fb}}
	err := Roll(context.Background(), ps, table(1, map[string][]int{"a": {0, 1}, "b": {2, 3}}), Config{ReadyTimeout: 300 * time.Millisecond, Poll: 5 * time.Millisecond})
	if !errors.Is(err, ErrAbandoned) || !strings.Contains(err.Error(), "[b]") {
		t.Fatalf("err = %v", err)
	}
	if r, _ := st.Ready(context.Background()); r["b"] != 0 {
		t.Fatalf("b reported ready %d although its load failed", r["b"])
	}
	if p, _ := st.Pending(context.Background()); p != nil {
		t.Fatal("pending not cleared")
	}
}

func TestFollowerRetriesFailedLoadAndReport(t *testing.T) {
	st := NewMemory()
	a := &fakeNode{id: "a", fail: 2}
	f := follow(t, st, a, time.Second)
	st.Fail(errors.New("etcd unavailable"))
	f.SetCurrent(table(1, map[string][]int{"a": {3}}))
	waitFor(t, "load after two failures", func() bool { return a.held() == "3" })
	time.Sleep(50 * time.Millisecond)
	st.Fail(nil)
	waitFor(t, "report after the store is back", func() bool { r, _ := st.Ready(context.Background()); return r["a"] == 1 })
}

func TestFollowerNeverBlocksWatchersDuringLoad(t *testing.T) {
	st := NewMemory()
	block := make(chan struct{})
	a := &fakeNode{id: "a", block: block}
	f := follow(t, st, a, time.Second)
	f.SetCurrent(table(1, map[string][]int{"a": {0}}))
	done := make(chan struct{})
	go func() {
		// A load is stuck reading a checkpoint; the watch callbacks must return.
		f.SetPending(table(2, map[string][]int{"a": {0, 1}}))
		f.SetCurrent(table(2, map[string][]int{"a": {0, 1}}))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("SetPending/SetCurrent blocked behind a load")
	}
	close(block)
	waitFor(t, "latest table loaded", func() bool { return a.held() == "01" })
}

func TestRollLeaderChangesMidRollout(t *testing.T) {
	st := NewMemory()
	a, b := &fakeNode{id: "a"}, &fakeNode{id: "b"}
	fa := follow(t, st, a, 50*time.Millisecond)
	wire(st, fa)
	cfg := Config{ReadyTimeout: 5 * time.Second, Poll: 5 * time.Millisecond}
	// Leader 1 rolls table 1 out to a and b, but b's follower is not running:
	// leader 1 loses leadership while waiting.
	ctx1, lose := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- Roll(ctx1, pendingStore{st, []*Follower{fa}}, table(1, map[string][]int{"a": {0, 1}, "b": {2, 3}}), cfg)
	}()
	waitFor(t, "a ready at 1", func() bool { r, _ := st.Ready(context.Background()); return r["a"] == 1 })
	lose()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader 1: %v", err)
	}
	// Leader 2 finds the stale pending table and plans a different one; it must
	// not reuse version 1 (a's ready report says it holds table 1, not this one).
	cur, _ := st.Current(context.Background())
	pend, _ := st.Pending(context.Background())
	if pend == nil || pend.Version != 1 {
		t.Fatalf("pending %v: leader 1's table should be left for leader 2", pend)
	}
	fb := follow(t, st, b, 50*time.Millisecond)
	wire(st, fa, fb)
	next := table(NextVersion(cur, pend), map[string][]int{"a": {0, 1, 2}, "b": {3}})
	if next.Version != 2 {
		t.Fatalf("next version %d", next.Version)
	}
	if err := Roll(context.Background(), pendingStore{st, []*Follower{fa, fb}}, next, cfg); err != nil {
		t.Fatal(err)
	}
	if a.held() != "012" || b.held() != "3" {
		t.Fatalf("a holds %q, b holds %q", a.held(), b.held())
	}
}

func TestRollRidesOutStoreOutage(t *testing.T) {
	st := NewMemory()
	a := &fakeNode{id: "a"}
	fa := follow(t, st, a, time.Second)
	ps := pendingStore{st, []*Follower{fa}}
	cfg := Config{ReadyTimeout: 5 * time.Second, Poll: 5 * time.Millisecond}
	st.Fail(errors.New("etcd unavailable"))
	errc := make(chan error, 1)
	go func() { errc <- Roll(context.Background(), ps, table(1, map[string][]int{"a": {0, 1, 2, 3}}), cfg) }()
	time.Sleep(100 * time.Millisecond)
	st.Fail(nil)
	if err := <-errc; err != nil {
		t.Fatalf("rollout through a short outage: %v", err)
	}
	// A long outage: abandoned once the timeout passes, with the cause named.
	st.Fail(errors.New("etcd unavailable"))
	err := Roll(context.Background(), ps, table(2, map[string][]int{"a": {0}}), Config{ReadyTimeout: 100 * time.Millisecond, Poll: 5 * time.Millisecond})
	if !errors.Is(err, ErrAbandoned) || !strings.Contains(err.Error(), "etcd unavailable") {
		t.Fatalf("err = %v", err)
	}
}

// A leader that gives its table up never removes a newer leader's pending one.
func TestAbandonLeavesNewerPending(t *testing.T) {
	st := NewMemory()
	var mu sync.Mutex
	gone := ""
	cfg := Config{ReadyTimeout: 5 * time.Second, Poll: 5 * time.Millisecond, Gone: func(*routing.Table) string { mu.Lock(); defer mu.Unlock(); return gone }}
	errc := make(chan error, 1)
	go func() { errc <- Roll(context.Background(), st, table(1, map[string][]int{"a": {0}}), cfg) }() // a never loads
	waitFor(t, "pending 1", func() bool { p, _ := st.Pending(context.Background()); return p != nil && p.Version == 1 })
	st.SetPending(context.Background(), table(2, map[string][]int{"a": {1}})) // a newer leader's rollout
	mu.Lock()
	gone = "a"
	mu.Unlock()
	if err := <-errc; !errors.Is(err, ErrAbandoned) {
		t.Fatalf("err = %v", err)
	}
	if p, _ := st.Pending(context.Background()); p == nil || p.Version != 2 {
		t.Fatalf("pending %v: the newer leader's table was removed", p)
	}
}

// A table another leader has overtaken is given up at once, not retried until
// the timeout.
func TestRollGivesUpOvertakenTable(t *testing.T) {
	st := NewMemory()
	st.Publish(context.Background(), table(5, map[string][]int{"a": {0}}))
	st.ReportReady(context.Background(), "a", 9)
	start := time.Now()
	err := Roll(context.Background(), st, table(3, map[string][]int{"a": {0}}), Config{ReadyTimeout: 5 * time.Second, Poll: 5 * time.Millisecond})
	if !errors.Is(err, ErrAbandoned) || time.Since(start) > time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
}

// The pending and current watches are independent: a cleared pending table may
// arrive long before the current table of its version. Its replicas must stay
// loaded meanwhile (trunks already route to them once it is current).
func TestFollowerKeepsRetiredPendingUntilCurrent(t *testing.T) {
	st := NewMemory()
	a := &fakeNode{id: "a"}
	f := follow(t, st, a, 20*time.Millisecond)
	f.SetCurrent(table(1, map[string][]int{"a": {0}}))
	f.SetPending(table(2, map[string][]int{"a": {1}}))
	waitFor(t, "union loaded", func() bool { return a.held() == "01" })
	f.SetPending(nil)                  // the rollout ended ...
	time.Sleep(100 * time.Millisecond) // ... and current 2 is late, well past the grace period
	if a.held() != "01" {
		t.Fatalf("holds %q before table 2 became current (%s)", a.held(), a.history())
	}
	f.SetCurrent(table(2, map[string][]int{"a": {1}}))
	waitFor(t, "expert 0 dropped after table 2", func() bool { return a.held() == "1" })
}
