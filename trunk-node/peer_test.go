package trunknode

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/testutil"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// lastEtcd is the etcd of the last trunks call (tests cut its bridge).
var lastEtcd *testutil.Etcd

// trunks runs n trunk nodes (local experts) that register in one etcd and
// share a snapshot key, as a cluster's trunks do.
func trunks(t *testing.T, n int, edit func(i int, cfg *Config)) ([]pb.SwitchyardClient, []*Node, []func()) {
	t.Helper()
	etcd := testutil.StartEtcd(t)
	lastEtcd = etcd
	var clis []pb.SwitchyardClient
	var nodes []*Node
	var stops []func()
	for i := range n {
		c, node, stop := serveNode(t, func(cfg *Config) {
			cfg.NodeID = "trunk-" + string(rune('0'+i))
			cfg.Etcd = []string{etcd.Endpoint()}
			cfg.LeaseTTL = 2
			cfg.SnapshotKey = []byte("0123456789abcdef0123456789abcdef")
			if edit != nil {
				edit(i, cfg)
			}
		})
		clis, nodes, stops = append(clis, c), append(nodes, node), append(stops, stop)
	}
	for _, node := range nodes {
		testutil.WaitFor(t, "every trunk to see the others", func() bool { return len(node.peerSet().list()) == n-1 })
	}
	return clis, nodes, stops
}

// TestSessionFollowsTheClient: a session created on one trunk continues,
// token-identically, through each of the others: the trunk a request
// reaches moves the session to itself.
func TestSessionFollowsTheClient(t *testing.T) {
	ref, _, _ := serveNode(t, nil)
	clis, nodes, _ := trunks(t, 3, nil)
	refID, id := createSessions(t, ref, 1)[0], createSessions(t, clis[0], 1)[0]
	for round, trunk := range []int{1, 2, 0, 2} {
		want, got := turns(t, ref, []string{refID}, round), turns(t, clis[trunk], []string{id}, round)
		if !slices.Equal(got[0], want[0]) {
			t.Fatalf("round %d on trunk %d: %v, want %v", round, trunk, got[0], want[0])
		}
		for i, n := range nodes {
			_, err := n.store.Get(id)
			if held := err == nil; held != (i == trunk) {
				t.Fatalf("round %d: trunk %d holds the session: %v (want only trunk %d)", round, i, held, trunk)
			}
		}
	}
	// Unknown sessions are still not found, after asking everyone.
	r := generate(t, clis[1], &pb.GenerateRequest{SessionId: "s-nope", Input: &pb.GenerateRequest_Text{Text: "x"}, MaxTokens: 2})
	if status.Code(r.status) != codes.NotFound {
		t.Errorf("unknown session: %v", r.status)
	}
}

// TestSessionOwnerAcrossTrunks: a session moved between trunks stays its
// client's: another identity asking another trunk is told it does not exist.
func TestSessionOwnerAcrossTrunks(t *testing.T) {
	tokens := map[string]string{"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob"}
	clis, _, _ := trunks(t, 2, func(_ int, cfg *Config) { cfg.APITokens = tokens })
	as := func(who string) context.Context {
		for tok, id := range tokens {
			if id == who {
				return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
			}
		}
		return nil
	}
	s, err := clis[0].CreateSession(as("alice"), &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: "secret"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clis[1].GetSession(as("bob"), &pb.GetSessionRequest{SessionId: s.SessionId}); status.Code(err) != codes.NotFound {
		t.Fatalf("bob on trunk 1: %v, want NOT_FOUND", err)
	}
	got, err := clis[1].GetSession(as("alice"), &pb.GetSessionRequest{SessionId: s.SessionId})
	if err != nil || got.Node != "trunk-1" {
		t.Fatalf("alice on trunk 1: %v %v", got, err)
	}
}

// TestDrainHandsSessionsOver: a trunk stopped gracefully (SIGTERM) hands its
// idle sessions to the remaining trunks; they continue token-identically.
func TestDrainHandsSessionsOver(t *testing.T) {
	ref, _, _ := serveNode(t, nil)
	clis, nodes, stops := trunks(t, 3, nil)
	refIDs, ids := createSessions(t, ref, 6), createSessions(t, clis[2], 6)
	turns(t, ref, refIDs, 0)
	turns(t, clis[2], ids, 0)
	stops[2]()
	held := 0
	for _, n := range nodes[:2] {
		h, _, _ := n.store.Usage()
		held += h
	}
	if held != 6 {
		t.Fatalf("the remaining trunks hold %d sessions, want 6", held)
	}
	want, got := turns(t, ref, refIDs, 1), turns(t, clis[0], ids, 1)
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("session %d after the drain: %v, want %v", i, got[i], want[i])
		}
	}
}

// TestPeerServiceNeedsTheCredential: the peer service refuses callers
// without the cluster's peer credential, whatever their API token.
func TestPeerServiceNeedsTheCredential(t *testing.T) {
	_, nodes, _ := trunks(t, 2, func(_ int, cfg *Config) { cfg.APIToken = "client-token-0123456789" })
	p := nodes[0].peerSet()
	addr := p.list()["trunk-1"]
	cli, err := p.client(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer client-token-0123456789", peerHeader, "forged")
	st, err := cli.Release(ctx, &pb.ReleaseRequest{SessionId: "s-x"})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a forged peer credential: %v, want PERMISSION_DENIED", err)
	}
}

// TestReplicaSurvivesTrunkDeath: sessions whose trunk dies abruptly (no
// drain, no hand-off) continue on another trunk from their last finished
// turn, token-identically, from the copies replication left on the others.
func TestReplicaSurvivesTrunkDeath(t *testing.T) {
	ref, _, _ := serveNode(t, nil)
	clis, nodes, _ := trunks(t, 3, nil)
	const N = 4
	refIDs, ids := createSessions(t, ref, N), createSessions(t, clis[2], N)
	for round := range 3 {
		turns(t, ref, refIDs, round)
		turns(t, clis[2], ids, round)
		testutil.WaitFor(t, "every session's last turn to be replicated", func() bool {
			r := nodes[2].replicas
			r.mu.Lock()
			defer r.mu.Unlock()
			return len(r.queue) == 0 && !r.sending && r.stats.Sent >= uint64((round+1)*N)
		})
	}
	if st := nodes[2].replicas.snapshot(); st.Deltas == 0 {
		t.Errorf("no copy went as a delta: %+v", st)
	}
	crashers[nodes[2]]()
	// Until the dead trunk's lease expires a request is UNAVAILABLE (that
	// trunk might still hold the live session); then the copy is taken.
	testutil.WaitFor(t, "the dead trunk to leave the list", func() bool { _, ok := nodes[0].peerSet().list()["trunk-2"]; return !ok })
	want, got := turns(t, ref, refIDs, 3), turns(t, clis[0], ids, 3)
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("session %d after its trunk died: %v, want %v", i, got[i], want[i])
		}
	}
	if f := nodes[0].replicas.snapshot().Failovers; f != N {
		t.Errorf("%d failovers counted, want %d", f, N)
	}
}

// TestSessionsWithEtcdDown: with etcd unreachable, sessions keep working on
// their trunk, and another trunk still reaches them (it asks the trunks it
// last knew, directly).
func TestSessionsWithEtcdDown(t *testing.T) {
	ref, _, _ := serveNode(t, nil)
	clis, _, _ := trunks(t, 2, nil)
	refID, id := createSessions(t, ref, 1)[0], createSessions(t, clis[0], 1)[0]
	turns(t, ref, []string{refID}, 0)
	turns(t, clis[0], []string{id}, 0)
	lastEtcd.Bridge.Cut()
	defer lastEtcd.Bridge.Restore()
	for round, trunk := range []int{0, 1} {
		want, got := turns(t, ref, []string{refID}, round+1), turns(t, clis[trunk], []string{id}, round+1)
		if !slices.Equal(got[0], want[0]) {
			t.Fatalf("etcd down, round %d on trunk %d: %v, want %v", round+1, trunk, got[0], want[0])
		}
	}
}

// TestReplicaTrunkDies: a replica trunk dying costs the serving trunk
// nothing (its copies fail and are counted; turns go on); the copies then
// go to the trunks left, and the sessions survive their own trunk's death
// after that.
func TestReplicaTrunkDies(t *testing.T) {
	ref, _, _ := serveNode(t, nil)
	clis, nodes, _ := trunks(t, 3, func(i int, cfg *Config) { cfg.Replication.Replicas = 2 })
	const N = 3
	refIDs, ids := createSessions(t, ref, N), createSessions(t, clis[0], N)
	crashers[nodes[1]]()
	for round := range 2 {
		want, got := turns(t, ref, refIDs, round), turns(t, clis[0], ids, round)
		for i := range want {
			if !slices.Equal(got[i], want[i]) {
				t.Fatalf("round %d session %d with a replica trunk dead: %v, want %v", round, i, got[i], want[i])
			}
		}
	}
	testutil.WaitFor(t, "the copies of the last turns on trunk 2", func() bool {
		for _, id := range ids {
			s, _ := nodes[0].store.Get(id)
			if s == nil || nodes[2].replicas.tokensOf(id) != s.Tokens() {
				return false
			}
		}
		return true
	})
	if nodes[0].replicas.snapshot().Failed == 0 {
		t.Error("no failed copy counted while a replica trunk was dead")
	}
	crashers[nodes[0]]()
	testutil.WaitFor(t, "the dead trunks to leave the list", func() bool { return len(nodes[2].peerSet().list()) == 0 })
	want, got := turns(t, ref, refIDs, 2), turns(t, clis[2], ids, 2)
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("session %d after both trunks died: %v, want %v", i, got[i], want[i])
		}
	}
}

// TestDeleteIsEverywhere: a deleted session does not come back from a
// replica copy or another trunk, whichever trunk the delete reached.
func TestDeleteIsEverywhere(t *testing.T) {
	clis, nodes, _ := trunks(t, 3, nil)
	ids := createSessions(t, clis[0], 2)
	turns(t, clis[0], ids, 0)
	testutil.WaitFor(t, "the copies", func() bool {
		return nodes[1].replicas.get("", ids[0]) != nil || nodes[2].replicas.get("", ids[0]) != nil
	})
	for i, via := range []int{0, 2} { // the holding trunk, then another one
		if _, err := clis[via].DeleteSession(context.Background(), &pb.DeleteSessionRequest{SessionId: ids[i]}); err != nil {
			t.Fatalf("delete via trunk %d: %v", via, err)
		}
		for j, c := range clis {
			if _, err := c.GetSession(context.Background(), &pb.GetSessionRequest{SessionId: ids[i]}); status.Code(err) != codes.NotFound {
				t.Errorf("session %d deleted via trunk %d: trunk %d says %v, want NOT_FOUND", i, via, j, err)
			}
		}
	}
}
