package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// generateRemote is `switchyard generate --addr`: the same flags against a cluster.
func generateRemote(ctx context.Context, addr string, g *genFlags, stdout io.Writer) error {
	creds := insecure.NewCredentials()
	if g.tlsCA != "" {
		c, err := rpc.ClientCreds(rpc.TLSFiles{CA: g.tlsCA})
		if err != nil {
			return err
		}
		creds = c
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if g.apiToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(rpc.BearerToken(g.apiToken)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	cli := pb.NewSwitchyardClient(conn)
	p := g.params()
	sp := &pb.SamplingParams{Temperature: p.Temperature, TopK: int32(p.TopK), TopP: p.TopP, MinP: p.MinP,
		RepetitionPenalty: p.RepetitionPenalty, Seed: p.Seed}
	var stream interface {
		Recv() (*pb.GenerateResponse, error)
	}
	if g.chat {
		stream, err = cli.Chat(ctx, &pb.ChatRequest{Messages: []*pb.ChatMessage{{Role: "user", Content: g.prompt}}, Sampling: sp,
			MaxTokens: int32(g.maxTokens), Stop: g.stops(), IgnoreEos: g.noEOS})
	} else {
		stream, err = cli.Generate(ctx, &pb.GenerateRequest{Input: &pb.GenerateRequest_Text{Text: g.prompt}, Sampling: sp,
			MaxTokens: int32(g.maxTokens), Stop: g.stops(), IgnoreEos: g.noEOS})
	}
	if err != nil {
		return err
	}
	var ids []string
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if c := msg.GetChunk(); c != nil {
			if g.printIDs {
				for _, id := range c.TokenIds {
					ids = append(ids, fmt.Sprint(id))
				}
			} else {
				io.WriteString(stdout, c.Text)
			}
		}
	}
	if g.printIDs {
		io.WriteString(stdout, strings.Join(ids, " "))
	}
	fmt.Fprintln(stdout)
	return nil
}
