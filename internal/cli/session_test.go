package cli

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// startTrunk serves a trunk node with in-process experts on loopback.
func startTrunk(t *testing.T) (string, pb.SwitchyardClient) {
	t.Helper()
	cfg := trunknode.DefaultConfig()
	cfg.ModelPath = filepath.Join(fixture(t), "hf")
	cfg.LocalExperts = true
	cfg.DrainTimeout = time.Second
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := trunknode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, lis) }()
	conn, err := dialPublic(lis.Addr().String(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		n.Close()
	})
	<-n.Ready()
	return lis.Addr().String(), pb.NewSwitchyardClient(conn)
}

// The session commands against two real trunk nodes: export to a file, import
// it, move between nodes (deleting the original), and the errors a user sees.
func TestSessionCommands(t *testing.T) {
	addrA, a := startTrunk(t)
	addrB, b := startTrunk(t)
	ctx := context.Background()
	s, err := a.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: "The keeper climbed the stairs"}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "s.snap")
	if code, _, stderr := run("session", "export", "--addr", addrA, "--id", s.SessionId, "--out", file); code != 0 {
		t.Fatalf("export: %s", stderr)
	}
	code, stdout, stderr := run("session", "import", "--addr", addrB, "--in", file)
	if code != 0 || !strings.HasPrefix(stdout, "s-") {
		t.Fatalf("import: exit %d %q %s", code, stdout, stderr)
	}
	imported := strings.Fields(stdout)[0]
	if got, err := b.GetSession(ctx, &pb.GetSessionRequest{SessionId: imported}); err != nil || got.Tokens != s.Tokens {
		t.Fatalf("imported session %v (%v), want %d tokens", got, err, s.Tokens)
	}
	code, stdout, stderr = run("session", "move", "--from", addrA, "--to", addrB, "--id", s.SessionId)
	if code != 0 || !strings.HasPrefix(stdout, "s-") {
		t.Fatalf("move: exit %d %q %s", code, stdout, stderr)
	}
	if _, err := a.GetSession(ctx, &pb.GetSessionRequest{SessionId: s.SessionId}); err == nil {
		t.Fatal("the moved session is still on the source node")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"session", "move", "--from", addrA, "--to", addrB, "--id", s.SessionId}, "NotFound"},
		{[]string{"session", "export", "--addr", addrA, "--id", "x"}, "--out are required"},
		{[]string{"session", "import", "--addr", addrB, "--in", filepath.Join(t.TempDir(), "missing")}, "no such file"},
		{[]string{"session", "rename"}, "unknown subcommand"},
	} {
		if code, _, stderr := run(tc.args...); code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, stderr, tc.want)
		}
	}
}
