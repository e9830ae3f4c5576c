package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// TestUpEndToEnd builds the real binary, runs `switchyard up` with the built-in
// model (synthesized into a temporary cache), waits for its "ready" line, then
// generates through the public API with a real gRPC client, and finally checks
// the CLI client form and a graceful SIGTERM shutdown.
func TestUpEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "switchyard")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "up", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "SWITCHYARD_CACHE="+filepath.Join(dir, "cache"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	addrRe := regexp.MustCompile(`ready: public API on (\S+)`)
	tokenRe := regexp.MustCompile(`^api token: (\S+)`)
	httpRe := regexp.MustCompile(`^trunk-0: OpenAI-compatible API on (\S+)`)
	var addr, token, httpBase string
	timeout := time.After(120 * time.Second)
	for addr == "" || token == "" || httpBase == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("up exited before ready; stderr:\n%s", stderr.String())
			}
			if m := addrRe.FindStringSubmatch(l); m != nil {
				addr = m[1]
			}
			if m := tokenRe.FindStringSubmatch(l); m != nil {
				token = m[1]
			}
			if m := httpRe.FindStringSubmatch(l); m != nil {
				httpBase = m[1]
			}
		case <-timeout:
			t.Fatalf("no ready line; stderr:\n%s", stderr.String())
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cli := pb.NewSwitchyardClient(conn)
	// Secure by default: up generated a token, and a call without it is refused.
	if _, err := cli.ModelInfo(context.Background(), &pb.ModelInfoRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a call without the printed token: %v", err)
	}
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token)), 30*time.Second)
	defer cancel()
	info, err := cli.ModelInfo(ctx, &pb.ModelInfoRequest{})
	if err != nil || info.Experts == 0 {
		t.Fatalf("model info: %v %v", info, err)
	}
	s, err := cli.Generate(ctx, &pb.GenerateRequest{Input: &pb.GenerateRequest_Text{Text: "Hello"}, MaxTokens: 8, IgnoreEos: true})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var final *pb.GenerateFinal
	for {
		m, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n += len(m.GetChunk().GetTokenIds())
		if f := m.GetFinal(); f != nil {
			final = f
		}
	}
	if n != 8 || final == nil || final.Usage.CompletionTokens != 8 {
		t.Fatalf("got %d tokens, final %v", n, final)
	}
	// The CLI's client form against the same cluster.
	out, err := exec.Command(bin, "generate", "--addr", addr, "--api-token", token, "--prompt", "Hello", "--greedy", "--max-tokens", "5", "--print-ids", "--ignore-eos").Output()
	if err != nil {
		t.Fatalf("generate --addr: %v", err)
	}
	if f := strings.Fields(string(out)); len(f) != 5 {
		t.Fatalf("generate --addr printed %q", out)
	}
	// The OpenAI-compatible HTTP API of the same cluster, with the same token.
	body := `{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, httpBase+"/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct {
		Choices []struct {
			Message struct{ Role string } `json:"message"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	err = json.NewDecoder(resp.Body).Decode(&reply)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(reply.Choices) != 1 || reply.Choices[0].Message.Role != "assistant" || reply.Usage.CompletionTokens == 0 {
		t.Fatalf("chat completion over HTTP: %d %+v %v", resp.StatusCode, reply, err)
	}
	// Graceful shutdown on SIGTERM.
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up exited with %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("up did not stop after SIGTERM")
	}
}
