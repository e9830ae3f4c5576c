package expertnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// service is the ExpertService gRPC adapter over a Node. Errors become gRPC
// statuses here and nowhere else (toStatus).
type service struct {
	pb.UnimplementedExpertServiceServer
	node *Node
}

var _ pb.ExpertServiceServer = (*service)(nil)

// Stats reports the node's assignment state and activation counters.
func (s *service) Stats(_ context.Context, req *pb.StatsRequest) (*pb.StatsResponse, error) {
	n := s.node
	resp := &pb.StatsResponse{Node: n.cfg.NodeID}
	n.mu.Lock()
	if n.cur != nil && !n.closed {
		resp.Ready = true
		resp.TableVersion = n.version
		resp.ExpertsLoaded = uint32(n.cur.loaded)
	}
	n.mu.Unlock()
	resp.Counts, resp.Batches, resp.Rows = n.stats.snapshot(req.GetReset_())
	return resp, nil
}

// Dispatch serves one trunk node's stream: a recv loop and a single send loop
// (the only caller of stream.Send), joined by the stream's bounded result
// channel. After the client half-closes, the stream ends once every accepted
// chunk has been answered.
func (s *service) Dispatch(stream grpc.BidiStreamingServer[pb.ExpertBatch, pb.ExpertResult]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel() // ends the send loop and marks queued jobs of this stream cancelled
	ds := newDispatchStream(s.node, stream)

	eof := make(chan struct{})
	sendErr := make(chan error, 1)
	recvErr := make(chan error, 1)
	go func() { sendErr <- ds.sendLoop(ctx, eof) }()
	go func() { recvErr <- ds.recvLoop(ctx) }()
	for {
		select {
		case err := <-recvErr:
			if err != nil {
				return toStatus(err)
			}
			close(eof) // half-closed: the send loop finishes the outstanding results
			recvErr = nil
		case err := <-sendErr:
			return toStatus(err)
		}
	}
}

// dispatchStream is the state of one Dispatch stream.
//
// Flow control: the recv loop puts a token in slots before it produces each
// result (by submitting a job or answering an invalid chunk); the send loop
// takes one out after sending a result. Hence sendc (capacity cap(slots)) always
// has room for a result and the compute loop never blocks on a slow stream.
type dispatchStream struct {
	node   *Node
	stream grpc.BidiStreamingServer[pb.ExpertBatch, pb.ExpertResult]

	slots chan struct{}         // outstanding results (capacity MaxInflightPerStream)
	sendc chan *pb.ExpertResult // results for the send loop (same capacity)

	mu          sync.Mutex
	outstanding map[resultKey]struct{} // guarded by mu: keys of unanswered chunks
}

func newDispatchStream(n *Node, stream grpc.BidiStreamingServer[pb.ExpertBatch, pb.ExpertResult]) *dispatchStream {
	w := n.cfg.MaxInflightPerStream
	return &dispatchStream{
		node:        n,
		stream:      stream,
		slots:       make(chan struct{}, w),
		sendc:       make(chan *pb.ExpertResult, w),
		outstanding: map[resultKey]struct{}{},
	}
}

// recvLoop reads chunks until the client half-closes (nil) or the stream fails.
// ctx is the handler's context; jobs are dropped by the compute loop once it is done.
func (ds *dispatchStream) recvLoop(ctx context.Context) error {
	for {
		b, err := ds.stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("expertnode: dispatch recv: %w", err)
		}
		if err := checkProtocol(b); err != nil {
			return err
		}
		select {
		case ds.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ds.track(keyOf(b)) {
			return fmt.Errorf("%w: step %d layer %d chunk %d is already outstanding on this stream",
				ErrProtocol, b.GetStepId(), b.GetLayer(), b.GetChunk())
		}
		if err := checkShape(b); err != nil {
			ds.sendc <- errorResult(b, err) // room reserved above
			continue
		}
		ds.node.submit(&job{b: b, out: ds.sendc, done: ctx.Done()})
	}
}

// sendLoop sends results until the stream fails, the handler ends, or the
// client has half-closed (eof) and nothing is outstanding.
func (ds *dispatchStream) sendLoop(ctx context.Context, eof <-chan struct{}) error {
	closing := false
	for {
		select {
		case r := <-ds.sendc:
			if err := ds.stream.Send(r); err != nil {
				return fmt.Errorf("expertnode: dispatch send: %w", err)
			}
			ds.untrack(resultKey{step: r.GetStepId(), layer: r.GetLayer(), chunk: r.GetChunk()})
			<-ds.slots
			if closing && len(ds.slots) == 0 {
				return nil
			}
		case <-eof:
			// The recv loop has returned: slots only drains from here on.
			if len(ds.slots) == 0 {
				return nil
			}
			closing, eof = true, nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// track records k as outstanding; false if it already is.
func (ds *dispatchStream) track(k resultKey) bool {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if _, dup := ds.outstanding[k]; dup {
		return false
	}
	ds.outstanding[k] = struct{}{}
	return true
}

func (ds *dispatchStream) untrack(k resultKey) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	delete(ds.outstanding, k)
}

// statusCodes maps the package's stream-ending errors to gRPC codes.
var statusCodes = []struct {
	err  error
	code codes.Code
}{
	{ErrProtocol, codes.InvalidArgument},
	{ErrClosed, codes.Unavailable},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// toStatus turns an error ending an RPC into a gRPC status error, once, at the
// edge. Errors that already carry a status (from the transport) keep its code.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, m := range statusCodes {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	if st, ok := status.FromError(err); ok {
		return status.Error(st.Code(), err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
