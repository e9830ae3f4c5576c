package rollout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/routing"
)

// ErrAbandoned means a rollout was given up (a node left, or the nodes did not
// load in time); pending is cleared and the current table stays in force.
var ErrAbandoned = errors.New("rollout: abandoned")

// Config tunes Roll.
type Config struct {
	// ReadyTimeout bounds the wait for every node of the table to load it.
	ReadyTimeout time.Duration
	// Poll is how often ready versions are read (default 50ms).
	Poll time.Duration
	// Gone reports a node of the table that has left or died ("" when none);
	// the rollout is abandoned at once. Nil: never.
	Gone func(t *routing.Table) string
}

// NextVersion is the version the next table must carry: above the current one
// and above any pending one (a rollout a former leader left unfinished), so a
// version never names two different assignments.
func NextVersion(current, pending *routing.Table) uint64 {
	var v uint64
	if current != nil {
		v = current.Version
	}
	if pending != nil && pending.Version > v {
		v = pending.Version
	}
	return v + 1
}

// Roll rolls t out make-before-break: pending, wait for every node of t to be
// ready at t.Version, publish, clear pending. On ctx's end (leadership lost) it
// returns ctx's error and leaves pending for the next leader to replace.
func Roll(ctx context.Context, st Store, t *routing.Table, cfg Config) error {
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	deadline := time.Now().Add(cfg.ReadyTimeout)
	abandon := func(why error) error {
		// Best effort: a pending table nobody finishes only keeps extra replicas
		// loaded until the next rollout replaces it.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		err := st.ClearPending(cctx, t.Version) // only ours: never a newer leader's table
		cancel()
		if err != nil {
			return fmt.Errorf("%w: table %d: %w (and clearing it failed: %v; the next rollout replaces it)", ErrAbandoned, t.Version, why, err)
		}
		return fmt.Errorf("%w: table %d: %w", ErrAbandoned, t.Version, why)
	}
	var lastErr error
	// Phase 1: publish pending (retried: etcd may be briefly unavailable).
	for {
		err := st.SetPending(ctx, t)
		if err == nil {
			break
		}
		lastErr = err
		if err := waitOrExpire(ctx, cfg.Poll, deadline); err != nil {
			return orAbandon(ctx, abandon, fmt.Errorf("publishing pending: %w", lastErr))
		}
	}
	// Phase 2: wait until every node of t holds its assignment.
	for {
		ready, err := st.Ready(ctx)
		if err == nil && allReady(t, ready) {
			break
		}
		if err != nil {
			lastErr = err
		}
		if cfg.Gone != nil {
			if id := cfg.Gone(t); id != "" {
				return orAbandon(ctx, abandon, fmt.Errorf("expert node %s left during the rollout", id))
			}
		}
		if err := waitOrExpire(ctx, cfg.Poll, deadline); err != nil {
			why := fmt.Errorf("expert nodes %v did not load it within %v", notReady(t, ready), cfg.ReadyTimeout)
			if lastErr != nil && ready == nil {
				why = fmt.Errorf("reading ready versions: %w", lastErr)
			}
			return orAbandon(ctx, abandon, why)
		}
	}
	// Phase 3: make it current, then end the rollout.
	for {
		err := st.Publish(ctx, t)
		if err == nil {
			break
		}
		if errors.Is(err, cluster.ErrNotNewer) {
			// Another leader published meanwhile: this table is stale for good.
			return orAbandon(ctx, abandon, err)
		}
		lastErr = err
		if err := waitOrExpire(ctx, cfg.Poll, deadline); err != nil {
			return orAbandon(ctx, abandon, fmt.Errorf("publishing: %w", lastErr))
		}
	}
	for {
		err := st.ClearPending(ctx, t.Version)
		if err == nil {
			return nil
		}
		// The table is current; a stale pending of the same version is harmless
		// (followers load the union) and the next rollout replaces it.
		if err := waitOrExpire(ctx, cfg.Poll, deadline.Add(cfg.ReadyTimeout)); err != nil {
			return nil
		}
	}
}

// orAbandon returns ctx's error when the leader lost its context (the next leader
// takes over the pending table), else abandons.
func orAbandon(ctx context.Context, abandon func(error) error, why error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return abandon(why)
}

// waitOrExpire sleeps one poll interval; it fails when ctx ends or the deadline
// has passed.
func waitOrExpire(ctx context.Context, poll time.Duration, deadline time.Time) error {
	if time.Now().After(deadline) {
		return errors.New("deadline")
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(poll):
		return nil
	}
}

func allReady(t *routing.Table, ready map[string]uint64) bool {
	for _, n := range t.Nodes {
		if ready[n.ID] < t.Version {
			return false
		}
	}
	return true
}

func notReady(t *routing.Table, ready map[string]uint64) []string {
	var out []string
	for _, n := range t.Nodes {
		if ready[n.ID] < t.Version {
			out = append(out, n.ID)
		}
	}
	return out
}
