package rollout

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/switchyard-serving/switchyard/internal/routing"
)

// Target is the node a Follower keeps loaded (an expert node).
type Target interface {
	// SetAssignment loads the experts t assigns to the node and drops the others;
	// t.Version is the follower's own monotonic counter, not the table's.
	SetAssignment(t *routing.Table) error
}

// FollowerConfig configures a Follower.
type FollowerConfig struct {
	Node   string // the node's id in routing tables
	Target Target
	// Report records that the node holds the assignment of a table version (the
	// ready key in etcd). Errors are retried.
	Report func(ctx context.Context, version uint64) error
	// Grace is how long replicas that left the tables stay loaded (default 3s).
	Grace time.Duration
	// Retry is the pause before a failed load or report is tried again (default 1s).
	Retry  time.Duration
	Logger *slog.Logger
}

// Follower is the expert node's side of the protocol. SetCurrent and SetPending
// feed it the tables it watches; Run applies them on one goroutine.
type Follower struct {
	cfg  FollowerConfig
	kick chan struct{}

	mu      sync.Mutex
	current *routing.Table
	pending *routing.Table
	seen    bool // a table has arrived
}

// NewFollower returns a follower; call Run.
func NewFollower(cfg FollowerConfig) *Follower {
	if cfg.Grace <= 0 {
		cfg.Grace = 3 * time.Second
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Follower{cfg: cfg, kick: make(chan struct{}, 1)}
}

// SetCurrent records a new current table (older versions are ignored).
func (f *Follower) SetCurrent(t *routing.Table) {
	f.mu.Lock()
	if t != nil && (f.current == nil || t.Version > f.current.Version) {
		f.current, f.seen = t, true
	}
	f.mu.Unlock()
	f.wake()
}

// SetPending records the table being rolled out (nil: the rollout ended).
func (f *Follower) SetPending(t *routing.Table) {
	f.mu.Lock()
	f.pending = t
	if t != nil {
		f.seen = true
	}
	f.mu.Unlock()
	f.wake()
}

func (f *Follower) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// desired is the assignment to hold: the union of current and a newer pending.
func (f *Follower) desired() *routing.Table {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := f.current
	if f.pending != nil && (f.current == nil || f.pending.Version > f.current.Version) {
		want = routing.Union(f.current, f.pending)
	}
	return want
}

// Run applies the tables until ctx ends. It owns the node's assignment: loads
// (which may read checkpoints for seconds) and reports run here, under no lock,
// so SetCurrent/SetPending never wait for them.
func (f *Follower) Run(ctx context.Context) {
	var (
		applied   *routing.Table // what the node holds
		local     uint64         // assignment counter handed to the node
		lastWant  *routing.Table // desired at the previous pass
		changedAt time.Time      // when desired last changed
		reported  uint64         // version last reported successfully
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wakeIn := time.Duration(0) // 0: wait for a kick
		want := f.desired()
		if want != nil {
			now := time.Now()
			if lastWant == nil || !sameSet(lastWant.Assigned(f.cfg.Node), want.Assigned(f.cfg.Node)) {
				changedAt = now
			}
			lastWant = want
			// Make before break: within the grace period keep what is loaded.
			target := want
			if now.Sub(changedAt) < f.cfg.Grace {
				target = routing.Union(applied, want)
			}
			if applied == nil || !sameSet(target.Assigned(f.cfg.Node), applied.Assigned(f.cfg.Node)) {
				local++
				cp := *target
				cp.Version = local
				if err := f.cfg.Target.SetAssignment(&cp); err != nil {
					// Not ready: the leader abandons the rollout if this persists.
					f.cfg.Logger.Error("loading the assignment failed", "table", want.Version, "err", err)
					wakeIn = f.cfg.Retry
				} else {
					applied = target
				}
			}
			if wakeIn == 0 && reported != want.Version {
				if err := f.cfg.Report(ctx, want.Version); err != nil {
					if ctx.Err() != nil {
						return
					}
					f.cfg.Logger.Warn("reporting the ready version failed", "table", want.Version, "err", err)
					wakeIn = f.cfg.Retry
				} else {
					reported = want.Version
				}
			}
			if wakeIn == 0 && applied != nil && !sameSet(applied.Assigned(f.cfg.Node), want.Assigned(f.cfg.Node)) {
				wakeIn = max(time.Millisecond, changedAt.Add(f.cfg.Grace).Sub(now))
			}
		}
		var tc <-chan time.Time
		if wakeIn > 0 {
			timer.Reset(wakeIn)
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		case <-tc:
		}
		if tc != nil && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func sameSet(a, b map[[2]int]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
