package trunknode

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Replication: after every finished turn (and after a session's creation
// with a prompt) the trunk serving a session sends a copy of it to
// ReplicationConfig.Replicas other trunks (rendezvous hashing on the session
// id), off the token path: a worker takes a copy-on-write clone of the idle
// session under the store's lock (no request ever waits for it), encodes it
// and ships it. A trunk keeps the copies it receives in a bounded memory
// (least recently updated dropped first). When the serving trunk dies, the
// next request on the session, at any trunk, asks every trunk for it (peer.go)
// and takes the most advanced copy: the state after the last turn that
// finished before the crash, so the conversation continues token-identically.
// A generation running at the crash fails with UNAVAILABLE (its stream
// breaks); nothing else is lost.

// ReplicationConfig configures session replicas.
type ReplicationConfig struct {
	Replicas int   // copies kept on other trunks (0: none)
	MaxBytes int64 // memory for the copies this trunk keeps for others
}

type replica struct {
	owner   string
	tokens  int32
	data    []byte   // a full session file
	deltas  [][]byte // deltas after it, in order (delta.go)
	updated time.Time
}

// size is the memory a copy holds.
func (c *replica) size() int64 {
	n := int64(len(c.data))
	for _, d := range c.deltas {
		n += int64(len(d))
	}
	return n
}

// sentState is what a replica trunk holds of a session: the position of the
// last copy it acknowledged and how many deltas followed its full copy.
type sentState struct {
	pos    int
	deltas int
}

// replicaStats are the replication metrics.
type replicaStats struct {
	Sent, SentBytes, Failed, Received, ReceivedBytes, Dropped, Failovers uint64
	Deltas                                                               uint64  // copies sent as deltas
	SendSeconds                                                          float64 // time spent cloning, encoding and sending
	Held                                                                 int
	HeldBytes                                                            int64
	lags                                                                 []float64 // seconds from turn end to acknowledgement, recent
}

type replicator struct {
	n   *Node
	cfg ReplicationConfig

	mu      sync.Mutex
	queue   map[string]time.Time            // session -> when its turn ended (coalesced)
	sent    map[string]map[string]sentState // session -> replica trunk -> what it holds
	sending bool                            // a session is being sent
	wake    chan struct{}
	held    map[string]*replica    // copies of other trunks' sessions
	claimed map[string]*time.Timer // copies being taken over (Release .. Forget)
	// tombs are deleted sessions: a copy sent before the delete and
	// arriving after it must not bring the session back.
	tombs   map[string]time.Time
	stats   replicaStats
	lagHist prometheus.Histogram
}

func newReplicator(n *Node, cfg ReplicationConfig) *replicator {
	return &replicator{n: n, cfg: cfg, queue: map[string]time.Time{}, wake: make(chan struct{}, 1), held: map[string]*replica{}, claimed: map[string]*time.Timer{}, sent: map[string]map[string]sentState{}, tombs: map[string]time.Time{}}
}

// later queues a session for replication (the latest state is sent once).
func (r *replicator) later(sid string) {
	if r == nil || r.cfg.Replicas <= 0 {
		return
	}
	r.mu.Lock()
	if _, ok := r.queue[sid]; !ok {
		r.queue[sid] = time.Now()
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run sends queued sessions until ctx ends.
func (r *replicator) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		for {
			r.mu.Lock()
			var sid string
			var since time.Time
			for id, t := range r.queue {
				sid, since = id, t
				break
			}
			delete(r.queue, sid)
			r.sending = sid != ""
			r.mu.Unlock()
			if sid == "" || ctx.Err() != nil {
				break
			}
			r.send(ctx, sid, since)
			r.mu.Lock()
			r.sending = false
			r.mu.Unlock()
		}
	}
}

// send ships one session's current state to its replica trunks.
func (r *replicator) send(ctx context.Context, sid string, since time.Time) {
	start := time.Now()
	defer func() {
		r.mu.Lock()
		r.stats.SendSeconds += time.Since(start).Seconds()
		r.mu.Unlock()
	}()
	p := r.n.peerSet()
	if p == nil || p.cred == "" {
		return
	}
	others := p.list()
	if len(others) == 0 {
		return
	}
	snap, release, err := r.n.store.cloneIdle(sid)
	if err != nil {
		if err == ErrSessionNotFound {
			r.mu.Lock()
			delete(r.sent, sid)
			r.mu.Unlock()
		}
		return // gone, or running a turn, whose end queues it again
	}
	defer release()
	tokens := int32(snap.State.Pos)
	var full []byte // encoded once, when some target needs it
	for _, target := range rank(sid, others)[:min(r.cfg.Replicas, len(others))] {
		r.mu.Lock()
		prev, known := r.sent[sid][target]
		r.mu.Unlock()
		var b []byte
		delta := known && prev.deltas < maxDeltas && prev.pos <= snap.State.Pos
		if delta {
			b, err = encodeDelta(snap, prev.pos, r.n.cfg.SnapshotKey)
			if err == nil {
				err = p.replicate(ctx, others[target], b, tokens)
				if status.Code(err) == codes.FailedPrecondition {
					delta = false // the replica cannot apply it: a full copy
				}
			}
		}
		if !delta {
			if full == nil {
				if full, err = encodeTier(snap, r.n.snap); err != nil {
					r.n.logger().Warn("encoding a replica failed", "session", sid, "err", err)
					return
				}
			}
			b = full
			err = p.replicate(ctx, others[target], b, tokens)
		}
		r.mu.Lock()
		if err != nil {
			r.stats.Failed++
			delete(r.sent[sid], target)
		} else {
			r.stats.Sent++
			r.stats.SentBytes += uint64(len(b))
			if r.lagHist != nil {
				r.lagHist.Observe(time.Since(since).Seconds())
			}
			if r.sent[sid] == nil {
				r.sent[sid] = map[string]sentState{}
			}
			st := sentState{pos: snap.State.Pos}
			if delta {
				st.deltas = prev.deltas + 1
				r.stats.Deltas++
			}
			r.sent[sid][target] = st
		}
		r.mu.Unlock()
		if err != nil {
			r.n.logger().Warn("replicating a session failed", "session", sid, "peer", target, "err", err)
		}
	}
}

// tombstone records a deleted session (and drops its copy).
func (r *replicator) tombstone(sid string) {
	if r == nil {
		return
	}
	r.drop(sid)
	r.mu.Lock()
	r.tombs[sid] = time.Now()
	r.mu.Unlock()
}

// tombTTL is how long a deleted session's copies are refused: far longer
// than any copy takes in flight.
const tombTTL = 10 * time.Minute

// keep stores a copy received from a peer (a newer one replaces an older).
func (r *replicator) keep(sid, owner string, tokens int32, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dead := r.tombs[sid]; dead {
		return // deleted: a copy sent before the delete
	}
	if old := r.held[sid]; old != nil {
		if old.tokens > tokens {
			return // an older copy arriving late
		}
		r.stats.HeldBytes -= old.size()
	}
	r.held[sid] = &replica{owner: owner, tokens: tokens, data: data, updated: time.Now()}
	r.stats.HeldBytes += int64(len(data))
	r.stats.Received++
	r.stats.ReceivedBytes += uint64(len(data))
	if r.cfg.MaxBytes > 0 && r.stats.HeldBytes > r.cfg.MaxBytes {
		ids := make([]string, 0, len(r.held))
		for id := range r.held {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return r.held[ids[i]].updated.Before(r.held[ids[j]].updated) })
		for _, id := range ids {
			if r.stats.HeldBytes <= r.cfg.MaxBytes || id == sid {
				break
			}
			r.stats.HeldBytes -= r.held[id].size()
			delete(r.held, id)
			r.stats.Dropped++
		}
	}
	r.stats.Held = len(r.held)
}

// get returns owner's copy of sid, or nil.
func (r *replicator) get(owner, sid string) *replica {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.held[sid]
	if c == nil || c.owner != owner {
		return nil
	}
	return c
}

// drop deletes a copy (it became the live session somewhere).
func (r *replicator) drop(sid string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.held[sid]; c != nil {
		r.stats.HeldBytes -= c.size()
		delete(r.held, sid)
		r.stats.Held = len(r.held)
	}
}

func (r *replicator) snapshot() replicaStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// rank orders nodes by rendezvous hash of (node, key), best first.
func rank(key string, nodes map[string]string) []string {
	ids := make([]string, 0, len(nodes))
	rest := map[string]string{}
	for k, v := range nodes {
		rest[k] = v
	}
	for len(rest) > 0 {
		best := rendezvous(key, rest)
		ids = append(ids, best)
		delete(rest, best)
	}
	return ids
}

// verifyTier checks a session file's checksum and signature (not its state).
func verifyTier(b []byte, key []byte) error {
	_, err := unseal(b, tierMagic, tierVersion, key)
	return err
}

// replicate sends one session file to the trunk at addr.
func (p *peers) replicate(ctx context.Context, addr string, b []byte, tokens int32) error {
	cli, err := p.client(ctx, addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	st, err := cli.Replicate(p.outgoing(ctx))
	if err != nil {
		return err
	}
	w := &chunkWriter{send: st.Send, buf: make([]byte, 0, snapChunk), first: &pb.SessionSnapshotChunk{TotalBytes: int64(len(b)), Tokens: tokens}}
	if _, err := w.Write(b); err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	_, err = st.CloseAndRecv()
	return err
}

func (s *peerAPI) Replicate(stream pb.TrunkPeer_ReplicateServer) error {
	if err := s.authorize(stream.Context()); err != nil {
		return err
	}
	r := s.n.replicas
	if r == nil {
		return errNoPeering
	}
	if s.n.sched.Draining() {
		return toStatus(ErrDraining) // its copies are being handed on already
	}
	b, first, err := s.recvFile(stream)
	if err != nil {
		return toStatus(err)
	}
	var tokens int32
	if first != nil {
		tokens = first.Tokens
	}
	if len(b) >= 4 && string(b[:4]) == deltaMagic {
		h, err := readDeltaHead(b, s.n.cfg.SnapshotKey)
		if err != nil {
			return toStatus(err)
		}
		if !r.keepDelta(h, b) {
			return status.Errorf(codes.FailedPrecondition, "no copy of session %s at position %d here: send a full copy", clip(h.id), h.base)
		}
		return stream.SendAndClose(&pb.ReplicateResponse{})
	}
	if err := verifyTier(b, s.n.cfg.SnapshotKey); err != nil {
		return toStatus(err)
	}
	rd := bytes.NewReader(b[8:])
	sid, err := readStr(rd)
	if err != nil {
		return toStatus(err)
	}
	owner, err := readStr(rd)
	if err != nil {
		return toStatus(err)
	}
	r.keep(sid, owner, tokens, b)
	return stream.SendAndClose(&pb.ReplicateResponse{})
}

// watchReplicas exports the replication metrics.
func (m *metrics) watchReplicas(node string, r *replicator) {
	labels := prometheus.Labels{"node_id": node}
	counter := func(name, help string, v func(replicaStats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return v(r.snapshot()) })
	}
	gauge := func(name, help string, v func(replicaStats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return v(r.snapshot()) })
	}
	r.lagHist = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "switchyard_session_replication_lag_seconds",
		Help: "Time from the end of a turn to a replica trunk's acknowledgement of the session's copy.", ConstLabels: labels,
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}})
	m.reg.MustRegister(r.lagHist,
		counter("switchyard_session_replicas_sent_total", "Session copies sent to replica trunks.", func(s replicaStats) float64 { return float64(s.Sent) }),
		counter("switchyard_session_replica_sent_bytes_total", "Bytes of session copies sent to replica trunks.", func(s replicaStats) float64 { return float64(s.SentBytes) }),
		counter("switchyard_session_replicas_failed_total", "Session copies a replica trunk did not acknowledge.", func(s replicaStats) float64 { return float64(s.Failed) }),
		counter("switchyard_session_replicas_received_total", "Session copies received from other trunks.", func(s replicaStats) float64 { return float64(s.Received) }),
		counter("switchyard_session_replicas_dropped_total", "Copies dropped to stay within the replica memory (least recently updated first).", func(s replicaStats) float64 { return float64(s.Dropped) }),
		counter("switchyard_session_failovers_total", "Sessions taken over from a replica copy (their trunk had gone).", func(s replicaStats) float64 { return float64(s.Failovers) }),
		gauge("switchyard_session_replicas_held", "Copies of other trunks' sessions held here.", func(s replicaStats) float64 { return float64(s.Held) }),
		gauge("switchyard_session_replicas_held_bytes", "Bytes of copies of other trunks' sessions held here.", func(s replicaStats) float64 { return float64(s.HeldBytes) }),
	)
}

// errCloneBusy: the session is running a generation.
var errCloneBusy = fmt.Errorf("%w: running", ErrSessionBusy)

// cloneIdle returns a copy of an idle session for replication (its KV pages
// shared copy-on-write) and a func that lets the copy go.
func (s *Store) cloneIdle(id string) (*Session, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[id]
	if !ok || sess.ephemeral || sess.deleted {
		return nil, nil, ErrSessionNotFound
	}
	if sess.busy {
		return nil, nil, errCloneBusy
	}
	// The copy is made outside the lock (a recurrent state is tens to
	// hundreds of MiB, and every step's Acquire and Release wait on the
	// lock): the pin keeps the state unchanged (Acquire waits for it) and
	// alive (a delete frees it after the copy).
	sess.copying++
	src, unfed, owner, used := sess.State, append([]int(nil), sess.Unfed...), sess.owner, sess.lastUsed
	s.mu.Unlock()
	st := src.Clone()
	s.mu.Lock()
	s.uncopyLocked(sess)
	cp := &Session{ID: sess.ID, State: st, Unfed: unfed, owner: owner, lastUsed: used}
	return cp, st.Free, nil
}

// handOff sends the copies this trunk keeps to other trunks (a draining
// trunk's replicas must not go with it).
func (r *replicator) handOff(ctx context.Context, p *peers) {
	others := p.list()
	if r == nil || len(others) == 0 {
		return
	}
	r.mu.Lock()
	held := make(map[string]*replica, len(r.held))
	for k, v := range r.held {
		held[k] = v
	}
	r.mu.Unlock()
	for sid, c := range held {
		b, tokens, err := r.file(c)
		if err == nil {
			err = p.replicate(ctx, others[rank(sid, others)[0]], b, tokens)
		}
		if err != nil {
			r.n.logger().Warn("handing a replica to a peer failed", "session", sid, "err", err)
		}
	}
}

// failover counts a session taken over from a copy.
func (r *replicator) failover() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.stats.Failovers++
	r.mu.Unlock()
}

// expire drops copies not updated for ttl (their session expired or went
// quiet: its trunk deletes it after the same idle time).
func (r *replicator) expire(now time.Time, ttl time.Duration) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, at := range r.tombs {
		if now.Sub(at) > tombTTL {
			delete(r.tombs, id)
		}
	}
	if ttl <= 0 {
		return
	}
	for id, c := range r.held {
		if now.Sub(c.updated) > ttl {
			r.stats.HeldBytes -= c.size()
			delete(r.held, id)
		}
	}
	r.stats.Held = len(r.held)
}

// claim marks a copy as being taken over by one trunk; false when another
// already is (two trunks must not both adopt it). The claim ends with
// unclaim or after the release hold.
func (r *replicator) claim(sid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.claimed[sid] != nil {
		return false
	}
	r.claimed[sid] = time.AfterFunc(releaseHold, func() { r.unclaim(sid, false) })
	return true
}

// unclaim ends a claim: commit drops the copy (it is live elsewhere now). It
// reports whether there was a claim or copy to act on.
func (r *replicator) unclaim(sid string, commit bool) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	t := r.claimed[sid]
	delete(r.claimed, sid)
	r.mu.Unlock()
	if t != nil {
		t.Stop()
	}
	if commit {
		had := r.has(sid)
		r.drop(sid)
		return t != nil || had
	}
	return t != nil
}

// has reports whether a copy of sid is kept here.
func (r *replicator) has(sid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held[sid] != nil
}

// keepDelta appends a delta to the copy it follows; false when there is no
// such copy here (the sender then sends a full one).
func (r *replicator) keepDelta(h deltaHead, data []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dead := r.tombs[h.id]; dead {
		return true // deleted: taken and ignored
	}
	c := r.held[h.id]
	if c == nil || c.owner != h.owner || int(c.tokens) != h.base || r.claimed[h.id] != nil {
		return false
	}
	c.deltas = append(c.deltas, data)
	c.tokens = int32(h.upto)
	c.updated = time.Now()
	r.stats.HeldBytes += int64(len(data))
	r.stats.Received++
	r.stats.ReceivedBytes += uint64(len(data))
	return true
}

// file returns a copy as one session file (its deltas applied) and its
// token count.
func (r *replicator) file(c *replica) ([]byte, int32, error) {
	r.mu.Lock()
	full, deltas, tokens := c.data, append([][]byte(nil), c.deltas...), c.tokens
	r.mu.Unlock()
	b, err := assemble(full, deltas, r.n.snap)
	return b, tokens, err
}

// tokensOf is the token count of the copy of sid kept here (-1: none).
func (r *replicator) tokensOf(sid string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.held[sid]; c != nil {
		return int(c.tokens)
	}
	return -1
}
