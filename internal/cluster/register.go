package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Registration keeps a node's key, and every key attached to it with Put, in
// etcd under one lease owned by an etcd concurrency.Session (which keeps the
// lease alive). When the session ends without Close (the lease expired during
// an etcd outage or partition, or was revoked by an operator), a new lease is
// granted as soon as etcd answers again and every key is written again: a node
// reappears by itself after any outage. Close revokes the lease and returns
// within a bounded time even when etcd is unreachable.
type Registration struct {
	cli *clientv3.Client
	ttl int
	key string
	val string
	log *slog.Logger

	mu       sync.Mutex
	sess     *concurrency.Session // nil while the node is not registered
	attached map[string]string    // keys written under the lease, by key
	gen      uint64               // registrations so far (1 after Register)

	stop   context.CancelFunc
	done   chan struct{}
	closed sync.Once
}

// RegisterOptions tune Register (zero values: defaults).
type RegisterOptions struct {
	// Logger receives lease-loss and re-registration events (default: discarded).
	Logger *slog.Logger
	// AttemptTimeout bounds one grant-and-write attempt (default 5s).
	AttemptTimeout time.Duration
	// RetryMin/RetryMax bound the backoff between attempts after a lost lease
	// (defaults 200ms and 5s).
	RetryMin, RetryMax time.Duration
}

func (o *RegisterOptions) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 5 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 200 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Second
	}
}

// Register writes n under its role (NodesPrefix/<role>/<id>) with a lease of ttl
// seconds and keeps it registered until ctx ends or Close is called; the first
// attempt must succeed (an unreachable etcd at start is an error the caller
// sees). ctx bounds the registration's whole life, not only this call.
func Register(ctx context.Context, cli *clientv3.Client, n NodeInfo, ttl int64, opts ...RegisterOptions) (*Registration, error) {
	if n.ID == "" || n.Role == "" {
		return nil, errors.New("cluster: register: node id and role are required")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("cluster: register: lease TTL must be positive, got %d", ttl)
	}
	var o RegisterOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	o.defaults()
	if n.Joined.IsZero() {
		n.Joined = time.Now().UTC()
	}
	b, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("cluster: register: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	r := &Registration{cli: cli, ttl: int(ttl), key: NodesPrefix + n.Role + "/" + n.ID, val: string(b),
		log: o.Logger.With("key", NodesPrefix+n.Role+"/"+n.ID), attached: map[string]string{}, stop: cancel, done: make(chan struct{})}
	sess, err := r.grant(rctx, o.AttemptTimeout)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("cluster: register %s: %w", r.key, err)
	}
	r.sess, r.gen = sess, 1
	go r.keep(rctx, o)
	return r, nil
}

// grant takes a new lease (bounded by timeout), writes the node key and every
// attached key under it in one transaction, and hands the lease to a session
// that keeps it alive for as long as ctx lives.
func (r *Registration) grant(ctx context.Context, timeout time.Duration) (*concurrency.Session, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	l, err := r.cli.Grant(actx, int64(r.ttl))
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	ops := []clientv3.Op{clientv3.OpPut(r.key, r.val, clientv3.WithLease(l.ID))}
	for k, v := range r.attached {
		ops = append(ops, clientv3.OpPut(k, v, clientv3.WithLease(l.ID)))
	}
	r.mu.Unlock()
	if _, err := r.cli.Txn(actx).Then(ops...).Commit(); err != nil {
		r.revoke(l.ID)
		return nil, err
	}
	// The session only keeps the lease alive (WithLease skips its own grant);
	// its context is the registration's, so the keep-alive outlives this call.
	sess, err := concurrency.NewSession(r.cli, concurrency.WithLease(l.ID), concurrency.WithTTL(r.ttl), concurrency.WithContext(ctx))
	if err != nil {
		r.revoke(l.ID)
		return nil, err
	}
	return sess, nil
}

// keep waits for the session to end and registers again until ctx ends.
func (r *Registration) keep(ctx context.Context, o RegisterOptions) {
	defer close(r.done)
	for {
		r.mu.Lock()
		sess := r.sess
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
		}
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.sess = nil
		r.mu.Unlock()
		r.log.Warn("etcd lease lost; registering again")
		backoff := o.RetryMin
		for {
			s, err := r.grant(ctx, o.AttemptTimeout)
			if err == nil {
				r.mu.Lock()
				r.sess = s
				r.gen++
				gen := r.gen
				// Keys attached while the grant was in flight missed its
				// transaction: write them all again under the new lease.
				ops := make([]clientv3.Op, 0, len(r.attached))
				for k, v := range r.attached {
					ops = append(ops, clientv3.OpPut(k, v, clientv3.WithLease(s.Lease())))
				}
				r.mu.Unlock()
				if len(ops) > 0 {
					pctx, cancel := context.WithTimeout(ctx, o.AttemptTimeout)
					r.cli.Txn(pctx).Then(ops...).Commit() // best effort: a failure here ends the session and retries
					cancel()
				}
				r.log.Info("registered again in etcd", "lease", fmt.Sprintf("%x", s.Lease()), "generation", gen)
				break
			}
			if ctx.Err() != nil {
				return
			}
			r.log.Debug("registration attempt failed", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, o.RetryMax)
		}
	}
}

// Put writes key = val under the registration's lease and keeps it there: it is
// written again after every re-registration, and disappears with the node.
// While the node is not registered (etcd unreachable) the value is kept and
// written at re-registration; Put then returns ErrNotRegistered.
func (r *Registration) Put(ctx context.Context, key, val string) error {
	r.mu.Lock()
	r.attached[key] = val
	sess := r.sess
	r.mu.Unlock()
	for {
		if sess == nil {
			return ErrNotRegistered
		}
		if _, err := r.cli.Put(ctx, key, val, clientv3.WithLease(sess.Lease())); err != nil {
			return err
		}
		// A re-registration may have happened meanwhile and rewritten the key
		// under the new lease before this write reattached it to the old one
		// (which then expires, deleting it): write again under the new lease.
		r.mu.Lock()
		now := r.sess
		r.mu.Unlock()
		if now == sess {
			return nil
		}
		sess = now
	}
}

// ErrNotRegistered means the node's lease is lost and a new one not yet granted.
var ErrNotRegistered = errors.New("cluster: not registered (etcd lease lost; registering again)")

// Generation counts the registrations so far: 1 after Register, one more after
// every re-registration.
func (r *Registration) Generation() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

// Abandon stops keeping the lease alive without revoking it, as a crashed process
// would: the registration disappears when the TTL expires (fault injection).
func (r *Registration) Abandon() {
	r.closed.Do(func() {
		r.stop()
		<-r.done
		r.mu.Lock()
		if r.sess != nil {
			r.sess.Orphan()
		}
		r.mu.Unlock()
	})
}

// Close revokes the registration (the node and its attached keys disappear from
// watchers at once). It waits at most two seconds for etcd; if etcd is down the
// lease simply expires after its TTL.
func (r *Registration) Close() error {
	var err error
	r.closed.Do(func() {
		r.stop()
		<-r.done
		r.mu.Lock()
		sess := r.sess
		r.sess = nil
		r.mu.Unlock()
		if sess != nil {
			sess.Orphan()
			err = r.revoke(sess.Lease())
		}
	})
	return err
}

func (r *Registration) revoke(id clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := r.cli.Revoke(ctx, id)
	return err
}
