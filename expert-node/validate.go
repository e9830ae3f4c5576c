package expertnode

import (
	"errors"
	"fmt"
	"math"

	"github.com/switchyard-serving/switchyard/internal/wire"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

var (
	// ErrProtocol reports a Dispatch stream protocol violation; it ends the stream
	// with codes.InvalidArgument.
	ErrProtocol = errors.New("expertnode: dispatch protocol violation")
	// ErrBadBatch reports a chunk that cannot be computed as sent; it is answered
	// with an error result and the stream goes on.
	ErrBadBatch = errors.New("expertnode: bad batch")
	// ErrNotHeld reports a chunk naming an expert this node does not hold (it
	// also matches ErrBadBatch).
	ErrNotHeld = errors.New("expertnode: expert not held here")
)

// resultKey identifies a chunk among a stream's outstanding chunks.
type resultKey struct {
	step  uint64
	layer uint32
	chunk uint32
}

func keyOf(b *pb.ExpertBatch) resultKey {
	return resultKey{step: b.GetStepId(), layer: b.GetLayer(), chunk: b.GetChunk()}
}

// checkProtocol checks what a stream cannot go on after: the chunk index must be
// below chunks (chunks 0 means a single chunk).
func checkProtocol(b *pb.ExpertBatch) error {
	if chunks := max(b.GetChunks(), 1); b.GetChunk() >= chunks {
		return fmt.Errorf("%w: step %d layer %d: chunk index %d is not below chunks %d",
			ErrProtocol, b.GetStepId(), b.GetLayer(), b.GetChunk(), b.GetChunks())
	}
	return nil
}

// checkShape checks a chunk's internal consistency, without the model.
func checkShape(b *pb.ExpertBatch) error {
	rows, hidden, topK := uint64(b.GetRows()), uint64(b.GetHidden()), uint64(b.GetTopK())
	switch {
	case rows == 0:
		return fmt.Errorf("%w: rows is 0", ErrBadBatch)
	case hidden == 0:
		return fmt.Errorf("%w: hidden is 0", ErrBadBatch)
	case topK == 0:
		return fmt.Errorf("%w: top_k is 0", ErrBadBatch)
	}
	// rows*hidden < 2^64 (both < 2^32); compare against len/2 so nothing overflows.
	if err := wire.Check(b.GetDtype(), b.GetActivations(), int(rows*hidden)); err != nil {
		return fmt.Errorf("%w: activations for %d rows x %d hidden: %v", ErrBadBatch, rows, hidden, err)
	}
	if n := uint64(len(b.GetExpertIds())); n != rows*topK {
		return fmt.Errorf("%w: %d expert_ids, want rows x top_k = %d x %d", ErrBadBatch, n, rows, topK)
	}
	if n := uint64(len(b.GetWeights())); n != rows*topK {
		return fmt.Errorf("%w: %d weights, want rows x top_k = %d x %d", ErrBadBatch, n, rows, topK)
	}
	for i, w := range b.GetWeights() {
		if math.IsNaN(float64(w)) || math.IsInf(float64(w), 0) {
			return fmt.Errorf("%w: weight %d is %v", ErrBadBatch, i, w)
		}
	}
	return nil
}

// check checks a shape-checked chunk against the model and the experts held.
func (s *shard) check(b *pb.ExpertBatch, node string, version uint64) error {
	c := s.model.Cfg
	if int(b.GetHidden()) != c.Hidden {
		return fmt.Errorf("%w: hidden is %d, model hidden size is %d", ErrBadBatch, b.GetHidden(), c.Hidden)
	}
	layer := int(b.GetLayer())
	if layer >= len(s.model.W.Layers) {
		return fmt.Errorf("%w: layer %d out of range (model has %d layers)", ErrBadBatch, layer, len(s.model.W.Layers))
	}
	experts := s.model.W.Layers[layer].Experts
	if len(experts) == 0 {
		return fmt.Errorf("%w: layer %d has no routed experts", ErrBadBatch, layer)
	}
	// A trunk sends at most the model's experts per token for a row (fewer
	// when the row's others are on other nodes); more would only inflate the
	// node's buffers (per-pair answers stage rows x top_k x hidden values).
	if k := int(b.GetTopK()); k > c.ExpertsPerTok {
		return fmt.Errorf("%w: top_k is %d, the model routes each token to %d experts", ErrBadBatch, k, c.ExpertsPerTok)
	}
	for _, id := range b.GetExpertIds() {
		if int(id) >= len(experts) {
			return fmt.Errorf("%w: expert id %d out of range (layer %d has %d experts)", ErrBadBatch, id, layer, len(experts))
		}
		if experts[id].Gate.Data == nil {
			return fmt.Errorf("%w: %w: layer %d expert %d is not assigned to node %q (table version %d)",
				ErrBadBatch, ErrNotHeld, layer, id, node, version)
		}
	}
	return nil
}

// errorResult answers b with err.
func errorResult(b *pb.ExpertBatch, err error) *pb.ExpertResult {
	return &pb.ExpertResult{
		StepId: b.GetStepId(),
		Layer:  b.GetLayer(),
		Chunk:  b.GetChunk(),
		Error:  err.Error(),
	}
}
