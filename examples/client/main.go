// Command client is a minimal Go client of the Switchyard public API: it opens a
// session, streams a first turn, then continues the same session with a second
// turn (the server reuses the session's state instead of re-reading the history).
//
//	go run ./examples/client --addr 127.0.0.1:7070
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7070", "trunk node address")
	token := flag.String("api-token", os.Getenv("SWITCHYARD_API_TOKEN"), "bearer token (default $SWITCHYARD_API_TOKEN)")
	flag.Parse()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if *token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(*token)))
	}
	conn, err := grpc.NewClient(*addr, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	cli := pb.NewSwitchyardClient(conn)
	ctx := context.Background()
	sess, err := cli.CreateSession(ctx, &pb.CreateSessionRequest{})
	if err != nil {
		log.Fatal(err)
	}
	for _, turn := range []string{"Hello, who are you?", "Tell me more."} {
		stream, err := cli.Chat(ctx, &pb.ChatRequest{SessionId: sess.SessionId, MaxTokens: 32,
			Messages: []*pb.ChatMessage{{Role: "user", Content: turn}}, Sampling: &pb.SamplingParams{Temperature: 0.7, TopP: 0.9, Seed: 1}})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("> %s\n", turn)
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				log.Fatal(err)
			}
			if c := msg.GetChunk(); c != nil {
				fmt.Print(c.Text)
			}
			if f := msg.GetFinal(); f != nil {
				fmt.Printf("\n[%s, %d prompt + %d completion tokens, %d reused]\n", f.FinishReason, f.Usage.PromptTokens, f.Usage.CompletionTokens, f.Usage.CachedTokens)
			}
		}
	}
	info, err := cli.GetSession(ctx, &pb.GetSessionRequest{SessionId: sess.SessionId})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("session %s holds %d tokens in %d bytes on %s\n", info.SessionId, info.Tokens, info.StateBytes, info.Node)
	cli.DeleteSession(ctx, &pb.DeleteSessionRequest{SessionId: sess.SessionId})
}

// bearer sends the API token on every call (plaintext is fine on loopback;
// use TLS elsewhere).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
