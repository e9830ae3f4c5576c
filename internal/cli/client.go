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

// dialPublic connects to a trunk's public API: TLS when tlsCA is set, the bearer
// token on every call when apiToken is set.
func dialPublic(addr, apiToken, tlsCA string) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if tlsCA != "" {
		c, err := rpc.ClientCreds(rpc.TLSFiles{CA: tlsCA})
		if err != nil {
			return nil, err
		}
		creds = c
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if apiToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(rpc.BearerToken(apiToken)))
	}
	return grpc.NewClient(addr, opts...)
}

// generateRemote is `switchyard generate --addr`: the same flags against a cluster.
func generateRemote(ctx context.Context, addr string, g *genFlags, stdout io.Writer) error {
	conn, err := dialPublic(addr, g.apiToken, g.tlsCA)
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
