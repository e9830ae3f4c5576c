package expertnode_test

import (
	"log"
	"net"

	"google.golang.org/grpc"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/routing"
)

// Example starts an expert node, serves it over gRPC, and applies a routing
// table; the health service turns SERVING once the assignment is loaded.
func Example() {
	cfg := expertnode.DefaultConfig()
	cfg.NodeID = "a"
	cfg.ModelPath = "../../shared/fixtures/granite-hybrid-tiny/hf"
	n, err := expertnode.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(n.ServerOptions()...)
	n.Register(srv)
	go srv.Serve(lis)
	defer srv.Stop()

	table, err := routing.Static(1, 6, 8, []routing.Node{{ID: "a", Addr: lis.Addr().String()}})
	if err != nil {
		log.Fatal(err)
	}
	if err := n.SetAssignment(table); err != nil {
		log.Fatal(err)
	}
	log.Println("ready:", n.Ready())
}
