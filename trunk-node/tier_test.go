package trunknode

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tensor"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// serveNode runs a trunk with local experts until stop (a graceful stop, as
// on SIGTERM) and returns a client for it.
func serveNode(t testing.TB, edit func(*Config)) (c pb.SwitchyardClient, n *Node, stop func()) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ModelPath = fixtureHF(t)
	cfg.LocalExperts = true
	cfg.Limits.MaxContext = 512
	cfg.Limits.MaxNewTokens = 256
	cfg.DrainTimeout = time.Second
	cfg.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancel := func() { cancelCause(nil) }
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		n.Close()
	}
	t.Cleanup(stop)
	crashers[n] = func() { // as kill -9: no drain, no hand-off, no deregistration
		stopped = true
		conn.Close()
		cancelCause(agent.ErrCrash)
		<-done
		n.Close()
	}
	<-n.Ready()
	return pb.NewSwitchyardClient(conn), n, stop
}

// crashers stop a node of serveNode abruptly.
var crashers = map[*Node]func(){}

// turns plays a conversation of two greedy turns on each of sessions ids,
// round-robin, and returns every turn's tokens.
func turns(t *testing.T, c pb.SwitchyardClient, ids []string, round int) [][]int {
	t.Helper()
	var out [][]int
	for _, id := range ids {
		r := generate(t, c, &pb.GenerateRequest{SessionId: id, Input: &pb.GenerateRequest_Text{Text: "turn " + string(rune('a'+round))}, MaxTokens: 6, IgnoreEos: true})
		if r.status != nil {
			t.Fatalf("session %s round %d: %v", id, round, r.status)
		}
		out = append(out, r.ids)
	}
	return out
}

func createSessions(t *testing.T, c pb.SwitchyardClient, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		s, err := c.CreateSession(context.Background(), &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: "Hello number " + string(rune('0'+i))}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.SessionId)
	}
	return ids
}

// TestOffloadServesMoreSessionsThanMemory: with a memory budget of 2
// sessions, 10 sessions served round-robin all continue exactly as with
// room for all of them; at most 2 are resident at any time.
func TestOffloadServesMoreSessionsThanMemory(t *testing.T) {
	size := hybrid.SizeOf(mustCfg(t))
	ref, _, _ := serveNode(t, nil)
	c, n, _ := serveNode(t, func(cfg *Config) {
		cfg.Memory.RecurrentBytes = 2 * size.RecurrentBytes
		cfg.Tier = TierConfig{Dir: t.TempDir()}
	})
	const N = 10
	refIDs, ids := createSessions(t, ref, N), createSessions(t, c, N)
	for round := range 3 {
		want, got := turns(t, ref, refIDs, round), turns(t, c, ids, round)
		for i := range want {
			if !slices.Equal(got[i], want[i]) {
				t.Fatalf("round %d session %d: %v, want %v", round, i, got[i], want[i])
			}
		}
		if held, rec, _ := n.Store().Usage(); held > 2 || rec > 2*size.RecurrentBytes {
			t.Fatalf("%d sessions (%d recurrent bytes) resident, budget 2", held, rec)
		}
	}
	st := n.tier.snapshot()
	if st.Offloads < N || st.Restores < N || st.Corrupt != 0 {
		t.Errorf("tier stats %+v", st)
	}
	// A deleted offloaded session is gone, file and all.
	if _, err := c.DeleteSession(context.Background(), &pb.DeleteSessionRequest{SessionId: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSession(context.Background(), &pb.GetSessionRequest{SessionId: ids[0]}); status.Code(err) != codes.NotFound {
		t.Errorf("deleted session: %v", err)
	}
}

// TestOffloadSurvivesRestart: a trunk stopped gracefully writes its sessions
// out; one started on the same directory continues them token-identically,
// with each KV cache element type.
func TestOffloadSurvivesRestart(t *testing.T) {
	t.Run("bf16", func(t *testing.T) { testOffloadSurvivesRestart(t, func(*Config) {}) })
	t.Run("q8_0", func(t *testing.T) {
		model := hd32Model(t)
		testOffloadSurvivesRestart(t, func(c *Config) { c.ModelPath, c.KVDType = model, tensor.Q8_0 })
	})
}

func testOffloadSurvivesRestart(t *testing.T, kv func(*Config)) {
	dir := t.TempDir()
	ref, _, _ := serveNode(t, kv)
	c, _, stop := serveNode(t, func(cfg *Config) { kv(cfg); cfg.Tier = TierConfig{Dir: dir} })
	refIDs, ids := createSessions(t, ref, 3), createSessions(t, c, 3)
	turns(t, ref, refIDs, 0)
	turns(t, c, ids, 0)
	stop()
	files, _ := filepath.Glob(filepath.Join(dir, "*"+tierSuffix))
	if len(files) != 3 {
		t.Fatalf("%d session files after shutdown, want 3", len(files))
	}
	c2, n2, _ := serveNode(t, func(cfg *Config) { kv(cfg); cfg.Tier = TierConfig{Dir: dir} })
	want, got := turns(t, ref, refIDs, 1), turns(t, c2, ids, 1)
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("session %d after restart: %v, want %v", i, got[i], want[i])
		}
	}
	if st := n2.tier.snapshot(); st.Restores != 3 {
		t.Errorf("tier stats %+v", st)
	}
}

// TestOffloadCorruptRefused: a damaged session file is refused with
// DATA_LOSS, counted, and never served.
func TestOffloadCorruptRefused(t *testing.T) {
	dir := t.TempDir()
	c, n, _ := serveNode(t, func(cfg *Config) { cfg.Tier = TierConfig{Dir: dir} })
	ids := createSessions(t, c, 2)
	turns(t, c, ids, 0)
	n.offloadIdle(time.Now(), true)
	for i, id := range ids {
		p := filepath.Join(dir, fileName(id))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			b[len(b)/2] ^= 0x40 // a flipped bit in the state
		} else {
			b = b[:len(b)-7] // a torn write
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		r := generate(t, c, &pb.GenerateRequest{SessionId: id, Input: &pb.GenerateRequest_Text{Text: "x"}, MaxTokens: 2})
		if err := r.status; status.Code(err) != codes.DataLoss {
			t.Errorf("session %d: %v, want DATA_LOSS", i, err)
		}
		if _, err := c.GetSession(context.Background(), &pb.GetSessionRequest{SessionId: id}); status.Code(err) != codes.NotFound {
			t.Errorf("session %d after refusal: %v, want NOT_FOUND", i, err)
		}
	}
	if st := n.tier.snapshot(); st.Corrupt != 2 {
		t.Errorf("corrupt count %d, want 2", st.Corrupt)
	}
}

// TestOffloadDiskBudget: beyond --offload-disk-bytes the longest-idle
// sessions are dropped (counted), the newest kept.
func TestOffloadDiskBudget(t *testing.T) {
	dir := t.TempDir()
	c, n, _ := serveNode(t, func(cfg *Config) { cfg.Tier = TierConfig{Dir: dir, DiskBytes: 1 << 40} })
	ids := createSessions(t, c, 3)
	s, _ := n.store.Get(ids[0])
	b, err := encodeTier(s, n.snap)
	if err != nil {
		t.Fatal(err)
	}
	n.tier.cfg.DiskBytes = int64(len(b)) * 3 / 2 // one file fits, two do not
	for _, id := range ids {
		turns(t, c, []string{id}, 0)
		time.Sleep(2 * time.Millisecond) // distinct last-use times
	}
	n.offloadIdle(time.Now(), true)
	st := n.tier.snapshot()
	if st.Files != 1 || st.Dropped != 2 {
		t.Fatalf("tier stats %+v, want 1 file kept and 2 dropped", st)
	}
	if _, ok := n.tier.has("", ids[2], true); !ok {
		t.Error("the most recently used session was dropped")
	}
}
