package localcluster

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// TestTwoTrunksShareExperts: two trunk nodes send their rows to the same two
// expert nodes at once (rows in f32 on the wire, so batch composition cannot
// move a near-tie); every golden prompt, on either trunk, still produces the
// golden greedy tokens; then a session moves from one trunk to the other
// (ExportSession -> ImportSession) and continues exactly as it would have.
func TestTwoTrunksShareExperts(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: 2, Trunks: 2,
		Trunk: func(tc *trunknode.Config) { tc.Dispatch.WireDType = pb.WireDType_WIRE_DTYPE_F32; tc.LeaseTTL = 1 }})
	if err != nil {
		t.Fatal(err)
	}
	var clis []pb.SwitchyardClient
	var conns []*grpc.ClientConn
	for _, ep := range c.Endpoints {
		conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		clis = append(clis, pb.NewSwitchyardClient(conn))
	}
	t.Cleanup(func() {
		for _, conn := range conns {
			conn.Close()
		}
		c.Close()
		waitFor(t, "goroutines to exit", 10*time.Second, func() bool { return runtime.NumGoroutine() <= before+2 })
	})
	if len(c.Trunks) != 2 || c.Endpoints[0] == c.Endpoints[1] {
		t.Fatalf("trunks %d at %v", len(c.Trunks), c.Endpoints)
	}

	prompts := goldenGreedy(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(prompts))
	for _, cli := range clis {
		for _, p := range prompts {
			wg.Go(func() {
				got, err := gen(ctx, cli, p.IDs, len(p.Greedy))
				if err == nil && !slices.Equal(got, p.Greedy) {
					err = errors.New(p.Name + ": tokens differ from golden")
				}
				if err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Both trunks stay registered in etcd well past their lease TTL (etcd grants
	// at least ~2 s here): the registration's keepalive lives as long as the node.
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		if ns, err := cluster.ListNodes(ctx, c.Client(), cluster.RoleTrunk); err != nil || len(ns) != 2 {
			t.Fatalf("registered trunks: %v (%v)", ns, err)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}

	// Move a session from trunk 0 to trunk 1.
	a, b := clis[0], clis[1]
	s, err := a.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_TokenIds{TokenIds: &pb.TokenIds{Ids: []int32{299, 304, 111, 260}}}})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := a.ExportSession(ctx, &pb.ExportSessionRequest{SessionId: s.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	imp, err := b.ImportSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := exp.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := imp.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := imp.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if moved.Node != "trunk-1" || moved.Tokens != s.Tokens {
		t.Fatalf("moved session %+v, original %+v", moved, s)
	}
	next := func(cli pb.SwitchyardClient, id string) []int {
		st, err := cli.Generate(ctx, &pb.GenerateRequest{SessionId: id, Input: &pb.GenerateRequest_TokenIds{TokenIds: &pb.TokenIds{Ids: []int32{280, 303}}},
			MaxTokens: 8, IgnoreEos: true})
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for {
			m, err := st.Recv()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range m.GetChunk().GetTokenIds() {
				out = append(out, int(id))
			}
		}
	}
	if ga, gb := next(a, s.SessionId), next(b, moved.SessionId); !slices.Equal(ga, gb) || len(ga) != 8 {
		t.Fatalf("on trunk-0 %v, moved to trunk-1 %v", ga, gb)
	}
}
