package trunknode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// Session-store errors (mapped to gRPC codes at the edge).
var (
	ErrSessionNotFound = errors.New("trunknode: session not found")
	ErrSessionBusy     = errors.New("trunknode: session is busy with another generation")
	// ErrSessionDeleted ends a generation whose session was deleted meanwhile.
	ErrSessionDeleted = errors.New("trunknode: the session was deleted during the generation")
	ErrMemoryFull     = errors.New("trunknode: session memory budget exhausted")
)

// Session is one conversation's state on this trunk.
type Session struct {
	ID    string
	State *hybrid.State
	// Unfed holds the last sampled token of the previous generation, which is not
	// in State yet; the next turn feeds it first.
	Unfed    []int
	busy     bool
	lastUsed time.Time
	// reserved is the KV memory reserved for the running generation, of which
	// the pages the state allocated since (AllocatedBytes - allocBase) are
	// counted in the store's page account already.
	reserved  int64
	allocBase int64
	private   int64 // KV bytes the state held alone when the reservation was made
	// prefix is set by Store.ResumePrefix for the generation submitted next
	// (Scheduler.Submit takes it): the prompt tokens already in the state and
	// where the prefill leaves prefix-cache checkpoints.
	prefix *prefixPlan
	// ephemeral sessions belong to one stateless request and die with it.
	ephemeral bool
	// owner is the client identity that created it (rpc.ClientIdentity); other
	// identities are told it does not exist.
	owner string
	// stop cancels the running generation (set by the scheduler while busy).
	stop context.CancelCauseFunc
	// deleted: removed from the store while a generation ran on it; its memory
	// stays counted until that generation has stopped (Release).
	deleted bool
	// copying counts the copies of the idle state being made outside the
	// store's lock (cloneIdle): Acquire waits for them, and a session
	// deleted meanwhile (dropAfterCopy) stays counted and keeps its state
	// until the last one ends.
	copying       int
	dropAfterCopy bool
}

// Tokens is the number of tokens held in the state.
func (s *Session) Tokens() int { return s.State.Pos }

// PrefixSkip is the number of prompt tokens of the next generation that its
// state holds already (resumed from a prefix-cache checkpoint).
func (s *Session) PrefixSkip() int {
	if s.prefix == nil {
		return 0
	}
	return s.prefix.skip
}

// outstanding is the part of the session's reservation not allocated yet.
func (s *Session) outstanding() int64 {
	return max(0, s.reserved-(s.State.AllocatedBytes()-s.allocBase))
}

// MemoryConfig is the session memory budget, split into the fixed recurrent state
// and the growing KV cache.
type MemoryConfig struct {
	RecurrentBytes int64         // budget for conv+SSM states (fixed per session)
	KVBytes        int64         // budget for attention KV caches
	IdleTTL        time.Duration // idle sessions are deleted after this (0: never)
	// StatePoolBytes bounds the memory of dropped sessions (recurrent
	// buffers and KV pages) kept for new ones (hybrid.SetStatePoolLimit, a
	// process-wide setting the trunk command applies), outside the budgets
	// above: a new session takes them instead of faulting fresh memory in
	// during its first prefill. 0 keeps none.
	StatePoolBytes int64
}

// Store holds the sessions and enforces the memory budget.
//
// KV memory is counted by the page (hybrid.PageAccount): every page a session
// or a prefix-cache checkpoint holds counts once, however many of them share
// it, plus what running generations have reserved and not allocated yet. The
// recurrent budget counts one state per session and per checkpoint. The prefix
// cache (prefix.go) lives inside these budgets and yields to sessions: a
// session that does not fit evicts checkpoints first.
type Store struct {
	cfg        MemoryConfig
	newState   func() *hybrid.State
	recPer     int64 // recurrent bytes per session
	kvPerToken int64 // KV bytes per token of the model (the budget counts pages, see PageAccount)

	mu       sync.Mutex
	copied   sync.Cond // on mu: a session's copies ended (Session.copying)
	sessions map[string]*Session
	recUsed  int64                 // sessions' recurrent states
	pages    hybrid.PageAccount    // live KV pages of the sessions and checkpoints
	busy     map[*Session]struct{} // sessions holding a reservation (deleted ones until Release)
	prefix   *prefixCache          // nil: off
	// perOwner counts each identified client's held sessions; maxPerOwner
	// caps it (0: no cap).
	perOwner    map[string]int
	maxPerOwner int
}

// NewStore returns a store; newState makes a fresh model state of
// recurrentBytes fixed bytes (hybrid.SizeOf). kvPerToken is the model's KV
// bytes per token; the budget counts the pages the states actually hold
// (hybrid.PageAccount), which come in hybrid.PageTokens·kvPerToken steps.
func NewStore(cfg MemoryConfig, newState func() *hybrid.State, recurrentBytes, kvPerToken int64) *Store {
	s := &Store{cfg: cfg, newState: newState, recPer: recurrentBytes, kvPerToken: kvPerToken, sessions: map[string]*Session{},
		busy: map[*Session]struct{}{}, perOwner: map[string]int{}}
	s.copied.L = &s.mu
	return s
}

// kvUsedLocked is the KV memory in use: live pages plus what running
// generations may still allocate.
func (s *Store) kvUsedLocked() int64 {
	n := s.pages.Bytes()
	for sess := range s.busy {
		n += sess.outstanding()
	}
	return n
}

// recUsedLocked is the recurrent memory in use: sessions and checkpoints.
func (s *Store) recUsedLocked() int64 {
	if s.prefix != nil {
		return s.recUsed + s.prefix.rec
	}
	return s.recUsed
}

// roomLocked reports whether rec more recurrent and kv more KV bytes fit the
// budgets, evicting prefix-cache checkpoints (least recently used first) to
// make room when that can be enough.
func (s *Store) roomLocked(rec, kv int64) bool {
	fits := func() bool {
		return s.recUsedLocked()+rec <= s.cfg.RecurrentBytes && s.kvUsedLocked()+kv <= s.cfg.KVBytes
	}
	if fits() {
		return true
	}
	c := s.prefix
	if c == nil || s.recUsed+rec > s.cfg.RecurrentBytes || s.kvUsedLocked()-c.pages.Bytes()+kv > s.cfg.KVBytes {
		return false // even an empty cache would not make room: keep it
	}
	for !fits() {
		if !c.evictOne() {
			return false
		}
		c.stats.Yielded++
	}
	return true
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return "s-" + hex.EncodeToString(b[:])
}

// Create makes a new empty session without an owner (see CreateFor).
func (s *Store) Create(ephemeral bool) (*Session, error) { return s.CreateFor("", ephemeral) }

// ErrClientLimit means one client holds as many sessions as it may
// (ResourceExhausted, for that client only).
var ErrClientLimit = errors.New("trunknode: client session limit reached")

// SetClientLimit caps the sessions each identified client may hold (0: none).
func (s *Store) SetClientLimit(n int) {
	s.mu.Lock()
	s.maxPerOwner = n
	s.mu.Unlock()
}

// ownLocked counts a new held session of owner, or refuses it (force: count
// it whatever the limit: a session that is the client's already, on disk).
func (s *Store) ownLocked(owner string, ephemeral bool, force ...bool) error {
	if owner == "" || ephemeral {
		return nil
	}
	if len(force) == 0 && s.maxPerOwner > 0 && s.perOwner[owner] >= s.maxPerOwner {
		return fmt.Errorf("%w: %s holds %d sessions; delete some first", ErrClientLimit, clip(owner), s.perOwner[owner])
	}
	s.perOwner[owner]++
	return nil
}

func (s *Store) disownLocked(sess *Session) {
	if sess.owner == "" || sess.ephemeral {
		return
	}
	if s.perOwner[sess.owner]--; s.perOwner[sess.owner] <= 0 {
		delete(s.perOwner, sess.owner)
	}
}

// CreateFor makes a new empty session owned by a client identity, or fails
// with ErrMemoryFull or ErrClientLimit.
func (s *Store) CreateFor(owner string, ephemeral bool) (*Session, error) {
	s.mu.Lock()
	if !s.roomLocked(s.recPer, 0) {
		defer s.mu.Unlock()
		return nil, fmt.Errorf("%w: %d sessions hold %d of %d recurrent-state bytes; delete idle sessions or raise the budget",
			ErrMemoryFull, len(s.sessions), s.recUsed, s.cfg.RecurrentBytes)
	}
	if err := s.ownLocked(owner, ephemeral); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.recUsed += s.recPer // reserved while the state is made
	s.mu.Unlock()
	// Outside the lock: zeroing a pooled recurrent buffer takes milliseconds
	// for the larger models, and every step's Acquire and Release wait on it.
	st := s.newState()
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Attach(&s.pages)
	sess := &Session{ID: newID(), State: st, lastUsed: time.Now(), ephemeral: ephemeral, owner: owner}
	s.sessions[sess.ID] = sess
	return sess, nil
}

// CheckRoom reports ErrMemoryFull unless one more session holding kvBytes of KV
// would fit now (nothing is reserved: Adopt checks again).
func (s *Store) CheckRoom(kvBytes int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.roomLocked(s.recPer, max(kvBytes, 0)) {
		return fmt.Errorf("%w: no room for a session of %d KV bytes (%d of %d in use)", ErrMemoryFull, kvBytes, s.kvUsedLocked(), s.cfg.KVBytes)
	}
	return nil
}

// Adopt stores a session created elsewhere (a fork), charging its memory.
func (s *Store) Adopt(st *hybrid.State, unfed []int) (*Session, error) {
	return s.AdoptFor("", st, unfed)
}

// AdoptFor is Adopt for a client identity (the new session's owner). The
// state's KV pages that are counted already (a fork's, shared with the
// original: State.Clone) cost nothing more. On error the state's pages are
// freed (the caller drops it).
func (s *Store) AdoptFor(owner string, st *hybrid.State, unfed []int) (*Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.roomLocked(s.recPer, st.UncountedKVBytes(&s.pages)) {
		st.Free()
		return nil, fmt.Errorf("%w: no room for a copy of the session", ErrMemoryFull)
	}
	if err := s.ownLocked(owner, false); err != nil {
		st.Free()
		return nil, err
	}
	st.Attach(&s.pages)
	sess := &Session{ID: newID(), State: st, Unfed: unfed, lastUsed: time.Now(), owner: owner}
	s.sessions[sess.ID] = sess
	s.recUsed += s.recPer
	return sess, nil
}

// Get returns a session (not busy-checked) whatever its owner.
func (s *Store) Get(id string) (*Session, error) { return s.get(id, "", true) }

// GetFor returns a session of a client identity: another client's session is
// reported as not found, exactly as a missing one.
func (s *Store) GetFor(owner, id string) (*Session, error) { return s.get(id, owner, false) }

func (s *Store) get(id, owner string, anyOwner bool) (*Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[id]
	if !ok || sess.ephemeral || (!anyOwner && sess.owner != owner) {
		return nil, fmt.Errorf("%w: %s (it may have expired or been deleted)", ErrSessionNotFound, clip(id))
	}
	return sess, nil
}

// Acquire marks a session busy and reserves KV for `tokens` more tokens.
func (s *Store) Acquire(sess *Session, tokens int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess.copying > 0 { // a replica copy is reading the state: milliseconds
		s.copied.Wait()
	}
	if cur, ok := s.sessions[sess.ID]; !ok || cur != sess {
		// Gone, or replaced by another copy of it (offloaded and restored).
		return fmt.Errorf("%w: %s", ErrSessionNotFound, clip(sess.ID))
	}
	if sess.busy {
		return fmt.Errorf("%w: %s", ErrSessionBusy, clip(sess.ID))
	}
	need := sess.State.KVGrowBytes(tokens)
	if !s.roomLocked(0, need) {
		return fmt.Errorf("%w: the request needs %d KV bytes, %d of %d are in use", ErrMemoryFull, need, s.kvUsedLocked(), s.cfg.KVBytes)
	}
	sess.busy = true
	sess.reserved = need
	sess.allocBase = sess.State.AllocatedBytes()
	sess.private = sess.State.PrivateKVBytes()
	s.busy[sess] = struct{}{}
	return nil
}

// Release ends a generation: the reservation is dropped (what the state holds
// is counted by the page). Ephemeral sessions are deleted.
func (s *Store) Release(sess *Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, sess)
	sess.reserved = 0
	sess.busy = false
	sess.stop = nil
	sess.prefix = nil
	sess.lastUsed = time.Now()
	if sess.deleted {
		// Deleted while running: its memory is free only now that it stopped.
		s.recUsed -= s.recPer
		sess.State.Free()
		return
	}
	if sess.ephemeral {
		s.deleteLocked(sess)
	}
}

// Delete removes a session and returns the bytes it frees. A generation
// running on it is stopped (it ends with ErrSessionDeleted) and the memory
// stays counted in the budget until it has stopped, so the budget always
// covers every state in memory.
func (s *Store) Delete(id string) (int64, error) { return s.delete(id, "", true) }

// DeleteFor is Delete for a client identity (another client's session is not
// found).
func (s *Store) DeleteFor(owner, id string) (int64, error) { return s.delete(id, owner, false) }

func (s *Store) delete(id, owner string, anyOwner bool) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[id]
	if !ok || sess.ephemeral || (!anyOwner && sess.owner != owner) {
		return 0, fmt.Errorf("%w: %s", ErrSessionNotFound, clip(id))
	}
	if sess.busy {
		delete(s.sessions, sess.ID)
		s.disownLocked(sess)
		sess.deleted = true
		if sess.stop != nil {
			sess.stop(ErrSessionDeleted)
		}
		// The scheduler is advancing the state: count from what the store
		// knows (its private pages before the generation, and the reservation).
		return s.recPer + sess.private + sess.reserved, nil
	}
	return s.deleteLocked(sess), nil
}

// setStop records how to stop the generation now running on sess; a session
// deleted before the generation started is stopped at once.
func (s *Store) setStop(sess *Session, stop context.CancelCauseFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.stop = stop
	if sess.deleted {
		stop(ErrSessionDeleted)
	}
}

// deleteLocked removes an idle session and returns the bytes it frees: its
// recurrent state and the KV pages no checkpoint or fork shares.
func (s *Store) deleteLocked(sess *Session) int64 {
	freed := s.recPer + sess.State.PrivateKVBytes()
	delete(s.sessions, sess.ID)
	s.disownLocked(sess)
	if sess.copying > 0 {
		// A copy is reading the state: it is freed, and stops counting, when
		// the last copy ends (uncopyLocked).
		sess.dropAfterCopy = true
		return freed
	}
	s.recUsed -= s.recPer
	sess.State.Free()
	return freed
}

// uncopyLocked ends one copy of sess (cloneIdle): after the last, waiting
// Acquires go on, and a session deleted meanwhile is dropped now.
func (s *Store) uncopyLocked(sess *Session) {
	if sess.copying--; sess.copying > 0 {
		return
	}
	if sess.dropAfterCopy {
		sess.dropAfterCopy = false
		s.recUsed -= s.recPer
		sess.State.Free()
	}
	s.copied.Broadcast()
}

// Expire deletes idle sessions older than the TTL and returns how many.
func (s *Store) Expire(now time.Time) int {
	if s.cfg.IdleTTL <= 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		if !sess.busy && !sess.ephemeral && now.Sub(sess.lastUsed) > s.cfg.IdleTTL {
			s.deleteLocked(sess)
			n++
		}
	}
	return n
}

// Usage reports the sessions held and the bytes in use against the budgets:
// recurrent (sessions and prefix-cache checkpoints) and KV (every live page
// once, plus reservations). PrefixStats gives the checkpoints' share.
func (s *Store) Usage() (sessions int, recurrent, kv int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions), s.recUsedLocked(), s.kvUsedLocked()
}

// clip quotes client-supplied text for an error message, cut to a bounded
// length: an error never echoes unbounded input back (a 1 MiB session id came
// back whole once).
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}

// disown uncounts a session of owner that left the store's knowledge (its
// offloaded file went).
func (s *Store) disown(owner string) {
	s.mu.Lock()
	s.disownLocked(&Session{owner: owner})
	s.mu.Unlock()
}

// own counts a session of owner found on disk at start.
func (s *Store) own(owner string) {
	s.mu.Lock()
	s.ownLocked(owner, false, true)
	s.mu.Unlock()
}
