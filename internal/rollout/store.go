package rollout

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/routing"
)

// Store is what the leader side reads and writes of the control plane.
type Store interface {
	// Current returns the current table (nil, nil when there is none yet).
	Current(ctx context.Context) (*routing.Table, error)
	// Pending returns the table being rolled out (nil, nil when none).
	Pending(ctx context.Context) (*routing.Table, error)
	// SetPending stores t as the table being rolled out.
	SetPending(ctx context.Context, t *routing.Table) error
	// ClearPending ends the rollout of table version v: it removes the pending
	// table only while it is that version (never a newer leader's).
	ClearPending(ctx context.Context, v uint64) error
	// Ready returns every expert node's reported ready version.
	Ready(ctx context.Context) (map[string]uint64, error)
	// Publish makes t current; it refuses a version that is not newer with an
	// error wrapping cluster.ErrNotNewer.
	Publish(ctx context.Context, t *routing.Table) error
}

// EtcdStore is the Store over etcd (key schema: package cluster).
type EtcdStore struct{ Client *clientv3.Client }

var _ Store = EtcdStore{}

// Current implements Store.
func (s EtcdStore) Current(ctx context.Context) (*routing.Table, error) {
	t, err := cluster.LoadTable(ctx, s.Client)
	if errors.Is(err, cluster.ErrNotFound) {
		return nil, nil
	}
	return t, err
}

// Pending implements Store.
func (s EtcdStore) Pending(ctx context.Context) (*routing.Table, error) {
	t, err := cluster.LoadPending(ctx, s.Client)
	if errors.Is(err, cluster.ErrNotFound) {
		return nil, nil
	}
	return t, err
}

// SetPending implements Store.
func (s EtcdStore) SetPending(ctx context.Context, t *routing.Table) error {
	return cluster.PublishPending(ctx, s.Client, t)
}

// ClearPending implements Store.
func (s EtcdStore) ClearPending(ctx context.Context, v uint64) error {
	return cluster.ClearPendingVersion(ctx, s.Client, v)
}

// Ready implements Store.
func (s EtcdStore) Ready(ctx context.Context) (map[string]uint64, error) {
	return cluster.ReadyVersions(ctx, s.Client)
}

// Publish implements Store.
func (s EtcdStore) Publish(ctx context.Context, t *routing.Table) error {
	return cluster.PublishTable(ctx, s.Client, t)
}

// Memory is an in-memory Store for tests, with fault injection: while Fail is
// set every call returns it (etcd unavailable).
type Memory struct {
	mu      sync.Mutex
	current *routing.Table
	pending *routing.Table
	ready   map[string]uint64
	fail    error
	// OnPublish, if set, sees every table made current (under no lock).
	OnPublish func(*routing.Table)
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty store.
func NewMemory() *Memory { return &Memory{ready: map[string]uint64{}} }

// Fail makes every call return err until Fail(nil).
func (m *Memory) Fail(err error) {
	m.mu.Lock()
	m.fail = err
	m.mu.Unlock()
}

// ReportReady records a node's ready version (what a follower's report writes).
func (m *Memory) ReportReady(_ context.Context, node string, v uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.ready[node] = v
	return nil
}

// Forget removes a node's ready key (its lease expired).
func (m *Memory) Forget(node string) {
	m.mu.Lock()
	delete(m.ready, node)
	m.mu.Unlock()
}

func (m *Memory) get(p **routing.Table) (*routing.Table, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	return *p, nil
}

// Current implements Store.
func (m *Memory) Current(context.Context) (*routing.Table, error) { return m.get(&m.current) }

// Pending implements Store.
func (m *Memory) Pending(context.Context) (*routing.Table, error) { return m.get(&m.pending) }

// SetPending implements Store.
func (m *Memory) SetPending(_ context.Context, t *routing.Table) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.pending = t
	return nil
}

// ClearPending implements Store.
func (m *Memory) ClearPending(_ context.Context, v uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if m.pending != nil && m.pending.Version == v {
		m.pending = nil
	}
	return nil
}

// Ready implements Store.
func (m *Memory) Ready(context.Context) (map[string]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	out := make(map[string]uint64, len(m.ready))
	for k, v := range m.ready {
		out[k] = v
	}
	return out, nil
}

// Publish implements Store.
func (m *Memory) Publish(_ context.Context, t *routing.Table) error {
	m.mu.Lock()
	if m.fail != nil {
		m.mu.Unlock()
		return m.fail
	}
	if m.current != nil && t.Version <= m.current.Version {
		m.mu.Unlock()
		return fmt.Errorf("%w: %d, current %d", cluster.ErrNotNewer, t.Version, m.current.Version)
	}
	m.current = t
	hook := m.OnPublish
	m.mu.Unlock()
	if hook != nil {
		hook(t)
	}
	return nil
}
