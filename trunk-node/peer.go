package trunknode

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// Sessions across trunks. A request naming a session this trunk does not
// hold (in memory or on disk) asks the other trunks of the cluster, all at
// once, to release it: the holder streams the session (a signed session
// file, tier.go) and keeps it held until this trunk has adopted it and
// commits the move (Forget), so a failure on the way loses nothing. The
// session then lives here, keeping its id and owner: a client that comes back
// to this trunk is served locally, and one that alternates between trunks
// pays one move (its state, a few MB for a hybrid model) per switch. Moving
// was chosen over proxying the stream to the holder because every later turn
// is then local (no extra hop per token) and because it is the same
// machinery that drains a trunk: SIGTERM hands every idle session to the
// remaining trunks (rendezvous hashing on the session id) after the running
// generations end, so a rolling upgrade keeps every conversation.
//
// Peers authenticate with a credential derived from the cluster's snapshot
// key (the same on every trunk), and session files are signed with it:
// without --snapshot-key sessions stay on their trunk.

const (
	peerHeader = "x-switchyard-peer"
	// releaseHold bounds how long a released session waits for Forget.
	releaseHold = 30 * time.Second
	// pullTimeout bounds asking the peers for a session and receiving it.
	pullTimeout = 30 * time.Second
)

// peerCredential is the cluster's peer credential (empty without a key).
func peerCredential(key []byte) string {
	if len(key) == 0 {
		return ""
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("switchyard trunk peer v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// errNoPeering reports a peer call to a trunk without a snapshot key.
var errNoPeering = status.Error(codes.FailedPrecondition, "this trunk takes no sessions from peers: cross-trunk sessions need the same --snapshot-key on every trunk")

// peers tracks the other trunks and talks to them.
type peers struct {
	n    *Node
	cred string
	dial func(ctx context.Context, addr string) (*grpc.ClientConn, error)

	mu    sync.Mutex
	addrs map[string]string           // node id -> public address (other trunks)
	conns map[string]*grpc.ClientConn // by address
	held  map[string]*releaseHoldT    // released sessions awaiting Forget
}

type releaseHoldT struct {
	sess  *Session
	timer *time.Timer
}

func newPeers(n *Node) (*peers, error) {
	p := &peers{n: n, cred: peerCredential(n.cfg.SnapshotKey), addrs: map[string]string{}, conns: map[string]*grpc.ClientConn{}, held: map[string]*releaseHoldT{}}
	// Peers are reached on their public port, with its TLS (trusting the
	// public CA).
	var tf rpc.TLSFiles
	if n.cfg.PublicTLS.Enabled() {
		tf.CA = n.cfg.PublicTLS.CA
		if tf.CA == "" {
			tf.CA = n.cfg.PublicTLS.Cert // a self-signed certificate trusts itself
		}
	}
	d, err := rpc.Dialer(tf, int(n.maxSnapshotBytes())+1<<20)
	if err != nil {
		return nil, err
	}
	p.dial = d
	return p, nil
}

// follow keeps the list of the other trunks from their registrations.
func (p *peers) follow(a *agent.Agent) {
	if a.Etcd() == nil || p.cred == "" {
		return
	}
	self := a.NodeID()
	a.Go(func(ctx context.Context) {
		cluster.WatchNodes(ctx, a.Etcd(), cluster.RoleTrunk, func(ns []cluster.NodeInfo) {
			m := map[string]string{}
			for _, ni := range ns {
				if ni.ID != self {
					m[ni.ID] = ni.Addr
				}
			}
			p.mu.Lock()
			p.addrs = m
			p.mu.Unlock()
		})
	})
}

// list returns the other trunks (id -> address); none before Serve has set
// them up (a nil p).
func (p *peers) list() map[string]string {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]string, len(p.addrs))
	for k, v := range p.addrs {
		out[k] = v
	}
	return out
}

func (p *peers) client(ctx context.Context, addr string) (pb.TrunkPeerClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.conns[addr]
	if c == nil {
		var err error
		if c, err = p.dial(ctx, addr); err != nil {
			return nil, err
		}
		p.conns[addr] = c
	}
	return pb.NewTrunkPeerClient(c), nil
}

func (p *peers) outgoing(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, peerHeader, p.cred)
}

func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
	for id, h := range p.held {
		h.timer.Stop()
		p.n.store.Release(h.sess)
		delete(p.held, id)
	}
}

// pull asks every other trunk for owner's session sid and adopts it here;
// (nil, nil) when no trunk holds it.
func (p *peers) pull(ctx context.Context, owner, sid string) (*Session, error) {
	if p.n.sched.Draining() {
		// A trunk going away takes no sessions in: they would leave with it.
		return nil, fmt.Errorf("%w: this trunk is shutting down; retry on another", ErrDraining)
	}
	others := p.list()
	local := p.n.replicas.get(owner, sid) // a copy kept here for a trunk that may be gone
	if len(others) == 0 && local == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	type got struct {
		data    []byte
		cli     pb.TrunkPeerClient
		tokens  int32
		replica bool
		err     error
		peer    string
	}
	res := make(chan got, len(others))
	for peer, addr := range others {
		go func() {
			cli, err := p.client(ctx, addr)
			if err != nil {
				res <- got{err: err, peer: peer}
				return
			}
			st, err := cli.Release(p.outgoing(ctx), &pb.ReleaseRequest{SessionId: sid, Owner: owner})
			if err != nil {
				res <- got{err: err, peer: peer}
				return
			}
			var buf bytes.Buffer
			g := got{cli: cli}
			for first := true; ; first = false {
				m, err := st.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					res <- got{err: err, peer: peer}
					return
				}
				if first {
					g.tokens, g.replica = m.Tokens, m.Replica
				}
				if int64(buf.Len()+len(m.Data)) > p.n.maxSnapshotBytes()+1<<20 {
					res <- got{err: fmt.Errorf("%w: the released session exceeds this node's limit", errSnapshot)}
					return
				}
				buf.Write(m.Data)
			}
			g.data = buf.Bytes()
			res <- g
		}()
	}
	// Every trunk answers (most with NOT_FOUND at once): the live session if
	// its trunk is up, else the most advanced copy.
	var firstErr error
	var found []got
	var silent []string // trunks that did not answer
	for range others {
		g := <-res
		if g.err != nil {
			if status.Code(g.err) != codes.NotFound {
				silent = append(silent, g.peer)
				if firstErr == nil {
					firstErr = g.err
				}
			}
			continue
		}
		found = append(found, g)
	}
	if local != nil {
		if data, tokens, err := p.n.replicas.file(local); err == nil {
			found = append(found, got{data: data, tokens: tokens, replica: true})
		}
	}
	if len(found) == 0 {
		if firstErr != nil {
			return nil, fmt.Errorf("%w: asking the other trunks for session %s: %v", ErrNoPeer, clip(sid), firstErr)
		}
		return nil, nil
	}
	// The live session wins whatever its length (a reset session is shorter
	// than its copies); copies only when no trunk has it live, the most
	// advanced first.
	best := 0
	for i, g := range found {
		b := found[best]
		switch {
		case b.replica && !g.replica:
			best = i
		case b.replica == g.replica && g.tokens > b.tokens:
			best = i
		}
	}
	g := found[best]
	if g.replica && len(silent) > 0 {
		// A trunk that did not answer may hold the live session: a copy is
		// taken only once that trunk is known dead (its etcd lease expired,
		// so it left the list of trunks); until then the request is
		// retryable.
		live := p.list()
		for _, id := range silent {
			if _, ok := live[id]; ok {
				for _, o := range found {
					if o.cli != nil {
						o.cli.Forget(p.outgoing(context.WithoutCancel(ctx)), &pb.ForgetRequest{SessionId: sid})
					}
				}
				return nil, fmt.Errorf("%w: trunk %s, which may hold session %s, does not answer and is not known dead yet; retry shortly (%v)",
					ErrNoPeer, id, clip(sid), firstErr)
			}
		}
	}
	sess, err := p.n.withRoom(func() (*Session, error) {
		id, own, used, st, unfed, err := parseTier(g.data, p.n.snap)
		if err != nil {
			return nil, err
		}
		if id != sid || own != owner {
			st.Free() // decoded here, seen by nobody
			return nil, fmt.Errorf("%w: a peer released another session", ErrSessionCorrupt)
		}
		return p.n.store.adoptID(id, own, st, unfed, used, true)
	})
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer fcancel()
	for i, o := range found {
		commit := err == nil && i == best
		if o.cli == nil { // the copy kept here
			if commit {
				p.n.replicas.drop(sid)
			}
			continue
		}
		var ferr error
		for try := 0; try < 3; try++ {
			if _, ferr = o.cli.Forget(p.outgoing(fctx), &pb.ForgetRequest{SessionId: sid, Commit: commit}); ferr == nil || status.Code(ferr) == codes.FailedPrecondition {
				break
			}
		}
		if commit && status.Code(ferr) == codes.FailedPrecondition {
			// The holder's hold had timed out: it serves the session again.
			// Ours is dropped; the request is retryable.
			p.n.store.Delete(sid)
			return nil, fmt.Errorf("%w: moving session %s took too long; retry", ErrNoPeer, clip(sid))
		}
		if commit && ferr != nil {
			p.n.logger().Warn("a peer did not confirm a session move", "session", sid, "err", ferr)
		}
	}
	if err != nil {
		return nil, err
	}
	if g.replica {
		p.n.replicas.failover()
		p.n.logger().Info("took a session over from a replica (its trunk is gone)", "session", sid, "tokens", g.tokens)
	}
	p.n.metrics.transfer("pull", nil, int64(len(g.data)))
	p.n.replicas.later(sid) // its copies now come from here
	return sess, nil
}

// ErrNoPeer means the trunks that may hold a session could not be asked
// (UNAVAILABLE: retry).
var ErrNoPeer = errors.New("trunknode: the other trunks could not be reached")

// handOff pushes every idle kept session to the other trunks (rendezvous
// hashing on the session id picks each one's trunk) and deletes the ones
// they took; it returns how many moved.
func (p *peers) handOff(ctx context.Context) (moved, failed int) {
	others := p.list()
	if len(others) == 0 || p.cred == "" {
		return 0, 0
	}
	// Moves in progress end first (committed or timed out), so their
	// sessions are either gone or idle here again.
	for deadline := time.Now().Add(releaseHold + time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		p.mu.Lock()
		n := len(p.held)
		p.mu.Unlock()
		if n == 0 {
			break
		}
	}
	p.n.replicas.handOff(ctx, p)
	for _, sess := range p.n.store.idleSince(time.Now(), 0, true) {
		// The session's rendezvous trunk first, then the others.
		order := []string{rendezvous(sess.ID, others)}
		for id := range others {
			if id != order[0] {
				order = append(order, id)
			}
		}
		var err error
		for _, target := range order {
			if err = p.push(ctx, others[target], sess); err == nil {
				break
			}
			p.n.logger().Warn("handing a session to a peer failed", "session", sess.ID, "peer", target, "err", err)
		}
		if err != nil {
			failed++
			continue
		}
		moved++
	}
	return moved, failed
}

// rendezvous picks the node with the highest hash of (node, key).
func rendezvous(key string, nodes map[string]string) string {
	best, bestH := "", uint64(0)
	for id := range nodes {
		h := fnv.New64a()
		h.Write([]byte(id))
		h.Write([]byte{0})
		h.Write([]byte(key))
		if v := h.Sum64(); best == "" || v > bestH || (v == bestH && id < best) {
			best, bestH = id, v
		}
	}
	return best
}

// push hands one idle session to the trunk at addr and deletes it here.
func (p *peers) push(ctx context.Context, addr string, sess *Session) error {
	if err := p.n.store.Acquire(sess, 0); err != nil {
		return err
	}
	b, err := encodeTier(sess, p.n.snap)
	if err != nil {
		p.n.store.Release(sess)
		return err
	}
	cli, err := p.client(ctx, addr)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, pullTimeout)
		defer cancel()
		var st pb.TrunkPeer_AdoptClient
		if st, err = cli.Adopt(p.outgoing(ctx)); err == nil {
			w := &chunkWriter{send: st.Send, buf: make([]byte, 0, snapChunk), first: &pb.SessionSnapshotChunk{TotalBytes: int64(len(b)), Tokens: int32(sess.State.Pos)}}
			if _, err = w.Write(b); err == nil {
				err = w.flush()
			}
			if err == nil {
				_, err = st.CloseAndRecv()
			}
		}
	}
	if err == nil {
		p.n.store.Delete(sess.ID) // while still held
	}
	p.n.store.Release(sess)
	if err != nil {
		return err
	}
	p.n.metrics.transfer("handoff", nil, int64(len(b)))
	return nil
}

// peerAPI serves TrunkPeer.
type peerAPI struct {
	pb.UnimplementedTrunkPeerServer
	n *Node
	p *peers
}

// authorize checks the caller's peer credential.
func (s *peerAPI) authorize(ctx context.Context) error {
	if s.p.cred == "" {
		return errNoPeering
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(peerHeader) {
		if subtle.ConstantTimeCompare([]byte(v), []byte(s.p.cred)) == 1 {
			return nil
		}
	}
	return status.Error(codes.PermissionDenied, "TrunkPeer is for the cluster's trunks: the peer credential is missing or wrong (is --snapshot-key the same on every trunk?)")
}

func (s *peerAPI) Adopt(stream pb.TrunkPeer_AdoptServer) error {
	if err := s.authorize(stream.Context()); err != nil {
		return err
	}
	if s.n.sched.Draining() {
		return toStatus(ErrDraining)
	}
	b, _, err := s.recvFile(stream)
	if err != nil {
		return toStatus(err)
	}
	sess, err := s.n.withRoom(func() (*Session, error) {
		id, owner, used, st, unfed, err := parseTier(b, s.n.snap)
		if err != nil {
			return nil, err
		}
		return s.n.store.adoptID(id, owner, st, unfed, used, true)
	})
	if err != nil {
		return toStatus(err)
	}
	s.n.metrics.transfer("adopt", nil, int64(len(b)))
	return stream.SendAndClose(&pb.AdoptResponse{SessionId: sess.ID})
}

// recvFile receives a session file streamed by a peer (bounded by this
// node's largest session, with the import's progress requirement) and
// returns it with its first chunk.
func (s *peerAPI) recvFile(stream interface {
	Recv() (*pb.SessionSnapshotChunk, error)
	Context() context.Context
}) ([]byte, *pb.SessionSnapshotChunk, error) {
	limit := s.n.maxSnapshotBytes() + 1<<20
	chunks := recvChunks(stream)
	var buf bytes.Buffer
	var first *pb.SessionSnapshotChunk
	start := time.Now()
	for {
		m, err := nextChunk(stream.Context(), chunks)
		if err == io.EOF {
			return buf.Bytes(), first, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if first == nil {
			first = m
		}
		if int64(buf.Len()+len(m.Data)) > limit {
			return nil, nil, fmt.Errorf("%w: the session exceeds this node's limit of %d bytes", errSnapshot, limit)
		}
		buf.Write(m.Data)
		if err := importProgress(start, int64(buf.Len())); err != nil {
			return nil, nil, err
		}
	}
}

func (s *peerAPI) Release(req *pb.ReleaseRequest, stream pb.TrunkPeer_ReleaseServer) error {
	if err := s.authorize(stream.Context()); err != nil {
		return err
	}
	sess, err := s.n.store.GetFor(req.Owner, req.SessionId)
	if errors.Is(err, ErrSessionNotFound) {
		// Only what is here: memory, then disk (never ask the peers back),
		// then a replica copy.
		if sess, err = s.n.restore(req.Owner, req.SessionId, false); sess == nil && err == nil {
			if c := s.n.replicas.get(req.Owner, req.SessionId); c != nil {
				if !s.n.replicas.claim(req.SessionId) {
					return toStatus(fmt.Errorf("%w: another trunk is taking session %s over", ErrSessionBusy, clip(req.SessionId)))
				}
				data, tokens, err := s.n.replicas.file(c)
				if err != nil {
					s.n.replicas.unclaim(req.SessionId, false)
					return toStatus(err)
				}
				w := &chunkWriter{send: stream.Send, buf: make([]byte, 0, snapChunk),
					first: &pb.SessionSnapshotChunk{TotalBytes: int64(len(data)), Tokens: tokens, Replica: true}}
				if _, err := w.Write(data); err != nil {
					return toStatus(err)
				}
				return toStatus(w.flush())
			}
			err = fmt.Errorf("%w: %s", ErrSessionNotFound, clip(req.SessionId))
		}
	}
	if err != nil {
		return toStatus(err)
	}
	if err := s.n.store.Acquire(sess, 0); err != nil {
		return toStatus(err)
	}
	b, err := encodeTier(sess, s.n.snap)
	if err == nil {
		w := &chunkWriter{send: stream.Send, buf: make([]byte, 0, snapChunk), first: &pb.SessionSnapshotChunk{TotalBytes: int64(len(b)), Tokens: int32(sess.State.Pos)}}
		if _, err = w.Write(b); err == nil {
			err = w.flush()
		}
	}
	if err != nil {
		s.n.store.Release(sess)
		return toStatus(err)
	}
	// Held until Forget (or the hold times out: the move is then aborted).
	s.p.mu.Lock()
	if old := s.p.held[sess.ID]; old != nil {
		old.timer.Stop()
	}
	h := &releaseHoldT{sess: sess}
	h.timer = time.AfterFunc(releaseHold, func() { s.forget(sess.ID, false) })
	s.p.held[sess.ID] = h
	s.p.mu.Unlock()
	s.n.metrics.transfer("release", nil, int64(len(b)))
	return nil
}

func (s *peerAPI) Forget(ctx context.Context, req *pb.ForgetRequest) (*pb.ForgetResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	if !s.forget(req.SessionId, req.Commit) && req.Commit {
		return nil, status.Errorf(codes.FailedPrecondition, "session %s is not released here (the hold timed out): the mover must drop its copy", clip(req.SessionId))
	}
	return &pb.ForgetResponse{}, nil
}

// forget ends a release; false when there was nothing to end (the hold had
// timed out: the session is in service here again).
func (s *peerAPI) forget(sid string, commit bool) bool {
	s.p.mu.Lock()
	h := s.p.held[sid]
	delete(s.p.held, sid)
	s.p.mu.Unlock()
	if h == nil {
		return s.n.replicas.unclaim(sid, commit)
	}
	h.timer.Stop()
	if commit {
		s.n.store.Delete(sid) // while still held: no request can start on it in between
	}
	s.n.store.Release(h.sess)
	return true
}

// parseTier reads a session file of any id and owner.
func parseTier(b []byte, id snapIdentity) (sid, owner string, used time.Time, st *hybrid.State, unfed []int, err error) {
	if len(b) < 10 || string(b[:4]) != tierMagic {
		return "", "", time.Time{}, nil, nil, fmt.Errorf("%w: not a session file", errSnapshot)
	}
	r := bytes.NewReader(b[8:])
	if sid, err = readStr(r); err != nil {
		return "", "", time.Time{}, nil, nil, err
	}
	if owner, err = readStr(r); err != nil {
		return "", "", time.Time{}, nil, nil, err
	}
	var ns int64
	if err = binary.Read(r, binary.LittleEndian, &ns); err != nil {
		return "", "", time.Time{}, nil, nil, fmt.Errorf("%w: truncated header", errSnapshot)
	}
	if st, unfed, err = decodeTier(b, sid, owner, id); err != nil {
		return "", "", time.Time{}, nil, nil, err
	}
	return sid, owner, time.Unix(0, ns), st, unfed, nil
}

func (s *peerAPI) Drop(ctx context.Context, req *pb.DropRequest) (*pb.DropResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	return &pb.DropResponse{Found: s.n.dropLocal(req.Owner, req.SessionId)}, nil
}

// dropLocal deletes owner's session sid from this trunk: memory, disk and
// replica copy; it reports whether any was here.
func (n *Node) dropLocal(owner, sid string) bool {
	found := false
	if n.tier != nil {
		// Under the session's restore lock: a restore in progress finishes
		// first, and its result is deleted below.
		unlock := n.tier.lock(sid)
		defer unlock()
		if _, ok := n.tier.has(owner, sid, false); ok {
			n.tier.remove(sid)
			found = true
		}
	}
	if _, err := n.store.DeleteFor(owner, sid); err == nil {
		found = true
	}
	if c := n.replicas.get(owner, sid); c != nil {
		found = true
	}
	// A copy still in flight (sent before the delete) must not revive it,
	// here or on a trunk that held nothing yet. (Session ids are
	// unguessable, so another client cannot tombstone a session it does
	// not know.)
	n.replicas.tombstone(sid)
	return found
}

// dropEverywhere deletes a session on this trunk and on every other one, so
// no offloaded file or replica copy brings it back; it reports whether any
// trunk held it.
func (n *Node) dropEverywhere(ctx context.Context, owner, sid string) (bool, error) {
	found := n.dropLocal(owner, sid)
	p := n.peerSet()
	if p == nil || p.cred == "" {
		return found, nil
	}
	others := p.list()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for _, addr := range others {
		wg.Go(func() {
			cli, err := p.client(ctx, addr)
			var r *pb.DropResponse
			if err == nil {
				r, err = cli.Drop(p.outgoing(ctx), &pb.DropRequest{SessionId: sid, Owner: owner})
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if r.GetFound() {
				found = true
			}
		})
	}
	wg.Wait()
	if firstErr != nil && !found {
		return false, fmt.Errorf("%w: deleting session %s: %v", ErrNoPeer, clip(sid), firstErr)
	}
	return found, nil
}
