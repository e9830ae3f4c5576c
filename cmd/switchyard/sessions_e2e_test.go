package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/testutil"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the switchyard binary once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "switchyard-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "switchyard")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func fixtureModel(t *testing.T) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny", "hf")
	if _, err := os.Stat(d); err != nil {
		t.Skipf("fixture missing: %v", err)
	}
	return d
}

// trunkProc is a trunk node running as its own process.
type trunkProc struct {
	id, addr string
	cmd      *exec.Cmd
	log      *strings.Builder
	cli      pb.SwitchyardClient
	conn     *grpc.ClientConn
}

func startTrunkProc(t *testing.T, id, addr, etcd string) *trunkProc {
	t.Helper()
	p := &trunkProc{id: id, addr: addr, log: &strings.Builder{}}
	p.cmd = exec.Command(binary(t), "trunk", "--node-id", id, "--listen", addr, "--model", fixtureModel(t), "--local-experts",
		"--etcd", etcd, "--lease-ttl", "2", "--drain-timeout", "5s", "--metrics-addr", "", "--log-level", "warn")
	p.cmd.Env = append(os.Environ(), "SWITCHYARD_SNAPSHOT_KEY=0123456789abcdef0123456789abcdef")
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.conn, p.cli = conn, pb.NewSwitchyardClient(conn)
	testutil.WaitFor(t, id+" to serve", func() bool {
		_, err := p.cli.ModelInfo(context.Background(), &pb.ModelInfoRequest{})
		return err == nil
	})
	return p
}

// turn plays one greedy turn; retryable is set when it failed with
// UNAVAILABLE (the only failure a trunk's death or hand-over may cause).
func turn(ctx context.Context, cli pb.SwitchyardClient, sid, text string) (ids []int, err error) {
	s, err := cli.Generate(ctx, &pb.GenerateRequest{SessionId: sid, Input: &pb.GenerateRequest_Text{Text: text}, MaxTokens: 6, IgnoreEos: true})
	if err != nil {
		return nil, err
	}
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return ids, nil
		}
		if err != nil {
			return nil, err
		}
		for _, id := range m.GetChunk().GetTokenIds() {
			ids = append(ids, int(id))
		}
	}
}

// TestTrunkKillLosesNoFinishedTurn runs three trunk processes, plays
// multi-turn conversations spread over all of them, then kill -9s one: every
// conversation continues on the others from its last finished turn,
// token-identically (compared with one trunk that was never killed); the
// only failures are UNAVAILABLE (retried) until the dead trunk's lease
// expires. Then a rolling restart (SIGTERM, start again) of every trunk
// loses no session either.
func TestTrunkKillLosesNoFinishedTurn(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real trunk processes")
	}
	etcd := testutil.StartEtcd(t)
	var procs []*trunkProc
	for i := range 3 {
		procs = append(procs, startTrunkProc(t, fmt.Sprintf("trunk-%d", i), freePort(t), etcd.Endpoint()))
	}
	// The reference: the same conversations on one in-process trunk.
	cfg := trunknode.DefaultConfig()
	cfg.ModelPath, cfg.LocalExperts, cfg.Logger = fixtureModel(t), true, slog.New(slog.DiscardHandler)
	ref, err := trunknode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan error, 1)
	go func() { rdone <- ref.Serve(rctx, lis) }()
	t.Cleanup(func() { rcancel(); <-rdone; ref.Close() })
	rconn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer rconn.Close()
	refCli := pb.NewSwitchyardClient(rconn)
	<-ref.Ready()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const N = 6
	var sids, refIDs []string
	for i := range N {
		s, err := procs[i%3].cli.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: fmt.Sprintf("conversation %d", i)}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := refCli.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: fmt.Sprintf("conversation %d", i)}})
		if err != nil {
			t.Fatal(err)
		}
		sids, refIDs = append(sids, s.SessionId), append(refIDs, r.SessionId)
	}
	unavailable := 0
	play := func(round int, alive []*trunkProc) {
		t.Helper()
		for i := range N {
			text := fmt.Sprintf("turn %d", round)
			want, err := turn(ctx, refCli, refIDs[i], text)
			if err != nil {
				t.Fatal(err)
			}
			for attempt := 0; ; attempt++ {
				got, err := turn(ctx, alive[(i+round)%len(alive)].cli, sids[i], text)
				if status.Code(err) == codes.Unavailable && attempt < 200 {
					unavailable++
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if err != nil {
					t.Fatalf("round %d session %d: %v", round, i, err)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("round %d session %d: %v, want %v", round, i, got, want)
				}
				break
			}
		}
	}
	play(0, procs)
	play(1, procs)
	// Let the last turns' copies reach the replica trunks, then kill -9.
	time.Sleep(500 * time.Millisecond)
	killed := time.Now()
	procs[1].cmd.Process.Signal(syscall.SIGKILL)
	procs[1].cmd.Wait()
	alive := []*trunkProc{procs[0], procs[2]}
	play(2, alive)
	t.Logf("kill -9 of a trunk: every session continued; %d UNAVAILABLE answers retried; first round after the kill done in %v",
		unavailable, time.Since(killed).Round(time.Millisecond))

	// Rolling restart of the survivors: SIGTERM hands sessions over.
	unavailable = 0
	for k, p := range alive {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("%s exited with %v:\n%s", p.id, err, p.log.String())
		}
		alive[k] = startTrunkProc(t, p.id, p.addr, etcd.Endpoint())
		play(3+k, alive)
	}
	t.Logf("rolling restart of 2 trunks: every session continued; %d UNAVAILABLE answers retried", unavailable)
}

// rssBytes is a process's resident set size (Linux).
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestOffloadKeepsRSSWithinBudget: a trunk process with room for 8 sessions
// of 1 MiB serves 80 of them round-robin (twice each): every turn succeeds
// and its resident memory grows by far less than the 80 MiB the sessions
// would hold in memory.
func TestOffloadKeepsRSSWithinBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a trunk process")
	}
	addr := freePort(t)
	cmd := exec.Command(binary(t), "trunk", "--node-id", "trunk-rss", "--listen", addr, "--model", fixtureModel(t), "--local-experts",
		"--metrics-addr", "", "--log-level", "warn", "--offload-dir", t.TempDir(),
		"--recurrent-budget", fmt.Sprint(8*40<<10+1024), "--kv-budget", fmt.Sprint(8<<20), "--max-context", "4096")
	var log strings.Builder
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cli := pb.NewSwitchyardClient(conn)
	testutil.WaitFor(t, "the trunk to serve", func() bool {
		_, err := cli.ModelInfo(context.Background(), &pb.ModelInfoRequest{})
		return err == nil
	})
	ctx := context.Background()
	prompt := make([]int32, 2040)
	for i := range prompt {
		prompt[i] = int32(1 + i%400)
	}
	const N = 80
	var ids []string
	var base int64
	for i := range N {
		prompt[0] = int32(1 + i)
		s, err := cli.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_TokenIds{TokenIds: &pb.TokenIds{Ids: prompt}}})
		if err != nil {
			t.Fatalf("session %d: %v\n%s", i, err, log.String())
		}
		ids = append(ids, s.SessionId)
		if i == 8 {
			base = rssBytes(t, cmd.Process.Pid) // the budget is full from here on
		}
	}
	for round := range 2 {
		for i, id := range ids {
			if _, err := turn(ctx, cli, id, fmt.Sprintf("round %d", round)); err != nil {
				t.Fatalf("round %d session %d: %v", round, i, err)
			}
		}
	}
	grew := rssBytes(t, cmd.Process.Pid) - base
	t.Logf("80 sessions of ~1 MiB with room for 8: resident memory grew %.1f MiB after the budget was full", float64(grew)/(1<<20))
	if grew > 40<<20 {
		t.Errorf("resident memory grew %.1f MiB; 80 sessions in memory would be 80 MiB, the budget 8 MiB", float64(grew)/(1<<20))
	}
}
