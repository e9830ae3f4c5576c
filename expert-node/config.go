package expertnode

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"fmt"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"math"
	"time"
)

// ErrConfig reports an invalid Config; the message names the field.
var ErrConfig = errors.New("expertnode: invalid config")

// Config configures a Node. Build one from DefaultConfig and set NodeID and
// ModelPath.
type Config struct {
	// NodeID is this node's id in the routing table. Required.
	NodeID string
	// ModelPath is the checkpoint: a Hugging Face folder (config.json +
	// safetensors) or a .gguf file. Required.
	ModelPath string
	// MaxRecvMsgBytes is the largest ExpertBatch message accepted, in bytes
	// (applied through ServerOptions). Default 64 MiB.
	MaxRecvMsgBytes int
	// CoalesceWindow is how long the compute loop waits, once something is
	// queued, for more chunks to coalesce with; it stops waiting early when
	// MaxBatchRows rows are queued. 0 (the default) adds no wait: a round takes
	// whatever is queued when the compute loop becomes free.
	CoalesceWindow time.Duration
	// MaxBatchRows caps the rows one compute round takes from the queue, in token
	// rows (a single larger chunk is still computed, alone). Default 4096.
	MaxBatchRows int
	// MaxInflightPerStream is the number of chunks one Dispatch stream may have
	// outstanding (queued, computing or being sent) before the node stops reading
	// from it. Default 16.
	MaxInflightPerStream int
	// Tracing provides the node's tracer (nil: no spans).
	Tracing *telemetry.Tracing
	// Registry receives the node's metrics (nil: a private registry).
	Registry *prometheus.Registry
}

// DefaultConfig returns the defaults; NodeID and ModelPath are left empty.
func DefaultConfig() Config {
	return Config{
		MaxRecvMsgBytes:      64 << 20,
		CoalesceWindow:       0,
		MaxBatchRows:         4096,
		MaxInflightPerStream: 16,
	}
}

// Validate checks every field.
func (c Config) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, fmt.Errorf("%w: NodeID is empty", ErrConfig))
	}
	if c.ModelPath == "" {
		errs = append(errs, fmt.Errorf("%w: ModelPath is empty", ErrConfig))
	}
	if c.MaxRecvMsgBytes <= 0 || c.MaxRecvMsgBytes > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("%w: MaxRecvMsgBytes is %d, want 1..%d", ErrConfig, c.MaxRecvMsgBytes, math.MaxInt32))
	}
	if c.CoalesceWindow < 0 {
		errs = append(errs, fmt.Errorf("%w: CoalesceWindow is %v, want >= 0", ErrConfig, c.CoalesceWindow))
	}
	if c.MaxBatchRows <= 0 {
		errs = append(errs, fmt.Errorf("%w: MaxBatchRows is %d, want > 0", ErrConfig, c.MaxBatchRows))
	}
	if c.MaxInflightPerStream <= 0 {
		errs = append(errs, fmt.Errorf("%w: MaxInflightPerStream is %d, want > 0", ErrConfig, c.MaxInflightPerStream))
	}
	return errors.Join(errs...)
}
