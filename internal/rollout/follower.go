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
	// retired is a pending table just cleared before a current table of its
	// version arrived (the two watches are independent): it stays wanted until
	// that current table arrives or retiredUntil passes (the rollout was
	// abandoned), so its replicas are not dropped while trunks route to them.
	retired      *routing.Table
	retiredUntil time.Time
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

// retainRetired is how long a cleared pending table stays wanted without the
// matching current table.
func (f *Follower) retainRetired() time.Duration { return max(10*f.cfg.Grace, 30*time.Second) }

// SetCurrent records a new current table (older versions are ignored).
func (f *Follower) SetCurrent(t *routing.Table) {
	f.mu.Lock()
	if t != nil && (f.current == nil || t.Version > f.current.Version) {
		f.current = t
		if f.retired != nil && t.Version >= f.retired.Version {
			f.retired = nil
		}
	}
	f.mu.Unlock()
	f.wake()
}

// SetPending records the table being rolled out (nil: the rollout ended).
func (f *Follower) SetPending(t *routing.Table) {
	f.mu.Lock()
	if t == nil && f.pending != nil && (f.current == nil || f.pending.Version > f.current.Version) {
		f.retired, f.retiredUntil = f.pending, time.Now().Add(f.retainRetired())
	}
	if t != nil {
		f.retired = nil
	}
	f.pending = t
	f.mu.Unlock()
	f.wake()
}

func (f *Follower) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// desired is the assignment to hold: the union of current and a newer pending
// (or a just-retired one), and when the retired table stops counting.
func (f *Follower) desired(now time.Time) (*routing.Table, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := f.current
	newer := func(t *routing.Table) bool { return t != nil && (f.current == nil || t.Version > f.current.Version) }
	var until time.Time
	switch {
	case newer(f.pending):
		want = routing.Union(f.current, f.pending)
	case newer(f.retired) && now.Before(f.retiredUntil):
		want, until = routing.Union(f.current, f.retired), f.retiredUntil
	}
	return want, until
}

// Run applies the tables until ctx ends. It owns the node's assignment: loads
// (which may read checkpoints for seconds) and reports run here, under no lock,
// so SetCurrent/SetPending never wait for them. A failed load is retried with
// a growing pause (up to 30s) and never reported ready.
func (f *Follower) Run(ctx context.Context) {
	var (
		applied   *routing.Table // what the node holds
		local     uint64         // assignment counter handed to the node
		lastWant  *routing.Table // desired at the previous pass
		changedAt time.Time      // when desired last changed
		reported  uint64         // version last reported successfully
		backoff   = f.cfg.Retry  // pause before retrying a failed load
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		want, until := f.desired(now)
		var wakeIn time.Duration // 0: wait for a kick
		if want != nil {
			if lastWant == nil || !sameSet(lastWant.Assigned(f.cfg.Node), want.Assigned(f.cfg.Node)) {
				changedAt = now
			}
			lastWant = want
			// Make before break: within the grace period keep what is loaded.
			target := want
			if now.Sub(changedAt) < f.cfg.Grace {
				target = routing.Union(applied, want)
			}
			loaded := true
			if applied == nil || !sameSet(target.Assigned(f.cfg.Node), applied.Assigned(f.cfg.Node)) {
				local++
				cp := *target
				cp.Version = local
				if err := f.cfg.Target.SetAssignment(&cp); err != nil {
					// Not ready: the leader abandons the rollout if this persists.
					f.cfg.Logger.Error("loading the assignment failed", "table", want.Version, "err", err, "retry_in", backoff)
					wakeIn, backoff, loaded = backoff, min(2*backoff, 30*time.Second), false
				} else {
					applied, backoff = target, f.cfg.Retry
				}
			}
			if loaded && reported != want.Version {
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
			if !until.IsZero() && (wakeIn == 0 || until.Sub(now) < wakeIn) {
				wakeIn = max(time.Millisecond, until.Sub(now))
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
