// Package expertnode serves the routed experts of a Granite 4.0-H model that the
// routing table places on this node: it is the expert half of Switchyard's
// disaggregated MoE. The folder is expert-node/; the Go package name is
// expertnode (Go package names cannot contain hyphens), imported as
//
//	expertnode "github.com/switchyard-serving/switchyard/expert-node"
//
// # What it owns
//
//   - A Node holds one loaded assignment at a time (a shard: the checkpoint
//     mapping with only the assigned experts' weights), swapped atomically by
//     SetAssignment and reference-counted so in-flight compute finishes on the
//     old set and the old mapping is closed once nothing uses it.
//   - The switchyard.v1.ExpertService gRPC service (Register): a bidi Dispatch
//     stream per trunk node and a unary Stats RPC, plus the standard gRPC health
//     service, SERVING only while the node is ready.
//   - One compute goroutine per node that coalesces the queued chunks of all
//     streams: per round it takes everything queued (up to Config.MaxBatchRows
//     rows), groups it by (layer, top_k), concatenates each group's rows into one
//     hybrid.ExpertRequest so every expert's weights are read once per round, and
//     splits the sums back to the requesting streams.
//
// # Dispatch stream protocol
//
// Each ExpertBatch chunk is answered by exactly one ExpertResult echoing
// step_id, layer and chunk; results of one stream may arrive out of order. A
// chunk that fails validation (shape, lengths, layer or expert out of range,
// expert not held here, node not ready) gets a result with error set and the
// stream goes on. A protocol violation ends the stream with
// codes.InvalidArgument: a chunk index not below chunks (chunks 0 means one
// chunk), or a (step_id, layer, chunk) key that is still outstanding on the same
// stream. Each stream may have Config.MaxInflightPerStream chunks outstanding;
// beyond that the node stops reading from the stream (flow control).
//
// # In a cluster
//
// Run makes the node a cluster member on the shared lifecycle (internal/agent):
// it serves ExpertService, registers in etcd (with its GPU slots), and keeps its
// assignment in step with the routing tables through rollout.Follower
// (make-before-break). The package reaches etcd only through agent, rollout and
// cluster; a Node used directly, as below, needs no control plane.
//
// # Example
//
//	n, err := expertnode.New(cfg)
//	if err != nil { ... }
//	defer n.Close()
//	srv := grpc.NewServer(n.ServerOptions()...)
//	n.Register(srv)
//	go srv.Serve(lis)
//	if err := n.SetAssignment(table); err != nil { ... } // health turns SERVING
package expertnode
