package trunknode

import (
	"sync"
	"time"
)

// metrics collects the trunk's serving figures. The observability issue exports
// them (Prometheus, OpenTelemetry); here they are plain counters and samples.
type metrics struct {
	mu        sync.Mutex
	steps     uint64
	stepRows  uint64
	stepTime  time.Duration
	ttft      []time.Duration
	finished  map[string]uint64
	completed uint64
}

func newMetrics() *metrics { return &metrics{finished: map[string]uint64{}} }

func (m *metrics) step(rows int, d time.Duration) {
	m.mu.Lock()
	m.steps++
	m.stepRows += uint64(rows)
	m.stepTime += d
	m.mu.Unlock()
}

func (m *metrics) jobStarted(*Job) {}

func (m *metrics) jobFinished(j *Job, f *Final) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished[f.Reason]++
	m.completed += uint64(f.CompletionTokens)
	if !j.firstToken.IsZero() && len(m.ttft) < 1<<16 {
		m.ttft = append(m.ttft, j.firstToken.Sub(j.enqueued))
	}
}

// StepStats returns the number of forward steps, rows and time spent in them.
func (n *Node) StepStats() (steps, rows uint64, busy time.Duration) {
	m := n.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.steps, m.stepRows, m.stepTime
}
