package trunknode

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// Tiering: sessions idle for TierConfig.After (or the least recently used
// ones, when a new session or a generation needs memory the budget does not
// have) are written to a local directory and their memory freed; the next
// request on one restores it, token-identically, at the cost of reading its
// state (far less than re-reading its conversation). The memory budget then
// bounds resident sessions only; DiskBytes bounds the rest, dropping the
// longest-idle files first. A trunk restarted with the same directory serves
// the sessions found there (a graceful shutdown writes its idle sessions
// first).
//
// A file is
//
//	"SYTF" | u32 version | u16 len | session id | u16 len | owner identity
//	| i64 last use (unix ns) | u64 n | n bytes of session snapshot (snapshot.go)
//	| u32 CRC32 of everything before | [32]byte HMAC-SHA256 of everything before the CRC (with a snapshot key)
//
// written to a temporary name, synced and renamed, so a crash leaves the old
// file or the new one, never a torn one. A file that fails its checks is
// refused with DATA_LOSS, counted, and never served.

// TierConfig configures session tiering (Dir empty: off).
type TierConfig struct {
	Dir       string
	After     time.Duration // idle time before a session is written out (0: only under memory pressure)
	DiskBytes int64         // bytes of files kept (0: no limit)
}

const (
	tierMagic   = "SYTF"
	tierVersion = 1
	tierSuffix  = ".session"
)

// ErrSessionCorrupt reports a tiered session whose file failed its checks
// (DATA_LOSS: the conversation must be sent again).
var ErrSessionCorrupt = errors.New("trunknode: the session's offloaded state is corrupt")

type tierFile struct {
	owner    string
	path     string
	size     int64
	lastUsed time.Time
}

// tierStats counts what the tier did (metrics).
type tierStats struct {
	Offloads, Restores, Dropped, Corrupt uint64
	OffloadSeconds, RestoreSeconds       float64 // summed durations
	Files                                int
	Bytes                                int64
}

type tier struct {
	cfg TierConfig
	id  snapIdentity

	mu    sync.Mutex
	files map[string]*tierFile // session id -> file
	stats tierStats
	// restoring serialises restores of one session.
	restoring map[string]*sync.Mutex
	// disown is told when a file goes (the session is no longer its owner's).
	disown func(owner string)
}

// openTier prepares dir and loads the index of the files found there.
func openTier(cfg TierConfig, id snapIdentity) (*tier, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("trunknode: offload dir: %w", err)
	}
	t := &tier{cfg: cfg, id: id, files: map[string]*tierFile{}, restoring: map[string]*sync.Mutex{}}
	ents, err := os.ReadDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("trunknode: offload dir: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(cfg.Dir, e.Name())
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.Remove(p) // a write cut short by a crash
			continue
		}
		if !strings.HasSuffix(e.Name(), tierSuffix) {
			continue
		}
		sid, owner, used, size, err := readTierHead(p)
		if err != nil {
			t.stats.Corrupt++
			continue // refused when asked for: unknown ids are not found
		}
		t.files[sid] = &tierFile{owner: owner, path: p, size: size, lastUsed: used}
		t.stats.Bytes += size
	}
	t.stats.Files = len(t.files)
	return t, nil
}

// readTierHead reads a file's id, owner and last use (the body is checked
// on restore).
func readTierHead(path string) (id, owner string, used time.Time, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", time.Time{}, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", "", time.Time{}, 0, err
	}
	r := bufio.NewReader(f)
	var head [8]byte
	if _, err := io.ReadFull(r, head[:]); err != nil || string(head[:4]) != tierMagic || binary.LittleEndian.Uint32(head[4:]) != tierVersion {
		return "", "", time.Time{}, 0, fmt.Errorf("%w: %s is not a session file of this version", ErrSessionCorrupt, path)
	}
	if id, err = readStr(r); err != nil {
		return "", "", time.Time{}, 0, err
	}
	if owner, err = readStr(r); err != nil {
		return "", "", time.Time{}, 0, err
	}
	var ns int64
	if err := binary.Read(r, binary.LittleEndian, &ns); err != nil {
		return "", "", time.Time{}, 0, fmt.Errorf("%w: truncated header", ErrSessionCorrupt)
	}
	return id, owner, time.Unix(0, ns), st.Size(), nil
}

func readStr(r io.Reader) (string, error) {
	var n uint16
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
		return "", fmt.Errorf("%w: truncated header", ErrSessionCorrupt)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("%w: truncated header", ErrSessionCorrupt)
	}
	return string(b), nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// encodeTier is the file content of a session.
func encodeTier(s *Session, id snapIdentity) ([]byte, error) {
	var snap bytes.Buffer
	snap.Grow(int(snapshotLen(s, id)))
	if err := writeSnapshot(&snap, s, id); err != nil {
		return nil, err
	}
	b := make([]byte, 0, snap.Len()+len(s.ID)+len(s.owner)+64)
	b = append(b, tierMagic...)
	b = binary.LittleEndian.AppendUint32(b, tierVersion)
	b = appendStr(b, s.ID)
	b = appendStr(b, s.owner)
	b = binary.LittleEndian.AppendUint64(b, uint64(s.lastUsed.UnixNano()))
	b = binary.LittleEndian.AppendUint64(b, uint64(snap.Len()))
	b = append(b, snap.Bytes()...)
	return seal(b, id.key), nil
}

// seal appends to b the CRC32 of b and, with a key, the HMAC-SHA256 of b
// (session files and deltas end so).
func seal(b, key []byte) []byte {
	body := len(b)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	if key != nil {
		mac := hmac.New(sha256.New, key)
		mac.Write(b[:body])
		b = mac.Sum(b)
	}
	return b
}

// unseal checks what seal appended to a buffer that starts with magic and
// version, and returns the sealed body. A short buffer, another magic or
// version, or a bad checksum is errSnapshot; a bad signature
// errSnapshotUnsigned.
func unseal(b []byte, magic string, version uint32, key []byte) ([]byte, error) {
	macLen := 0
	if key != nil {
		macLen = sha256.Size
	}
	if len(b) < 8+4+macLen || string(b[:4]) != magic || binary.LittleEndian.Uint32(b[4:]) != version {
		return nil, fmt.Errorf("%w: not a %s record of version %d", errSnapshot, magic, version)
	}
	body := len(b) - 4 - macLen
	if crc32.ChecksumIEEE(b[:body]) != binary.LittleEndian.Uint32(b[body:]) {
		return nil, fmt.Errorf("%w: checksum mismatch (torn or damaged)", errSnapshot)
	}
	if macLen > 0 {
		mac := hmac.New(sha256.New, key)
		mac.Write(b[:body])
		if !hmac.Equal(mac.Sum(nil), b[body+4:]) {
			return nil, fmt.Errorf("%w: not signed with this cluster's snapshot key", errSnapshotUnsigned)
		}
	}
	return b[:body], nil
}

// decodeTier checks a file's content and returns its session's parts.
func decodeTier(b []byte, wantID, wantOwner string, id snapIdentity) (*hybrid.State, []int, error) {
	sealed, err := unseal(b, tierMagic, tierVersion, id.key)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrSessionCorrupt, err)
	}
	body := len(sealed)
	r := bytes.NewReader(sealed[8:])
	sid, err := readStr(r)
	if err != nil {
		return nil, nil, err
	}
	owner, err := readStr(r)
	if err != nil {
		return nil, nil, err
	}
	if sid != wantID || owner != wantOwner {
		return nil, nil, fmt.Errorf("%w: the file holds another session", ErrSessionCorrupt)
	}
	var ns int64
	var n uint64
	binary.Read(r, binary.LittleEndian, &ns)
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || n != uint64(r.Len()) {
		return nil, nil, fmt.Errorf("%w: bad snapshot length", ErrSessionCorrupt)
	}
	snap := b[body-int(n) : body]
	st, unfed, err := readSnapshot(snap, id)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrSessionCorrupt, err)
	}
	return st, unfed, nil
}

// writeFile writes b to the session's file atomically.
func (t *tier) writeFile(sid string, b []byte) (string, error) {
	final := filepath.Join(t.cfg.Dir, fileName(sid))
	f, err := os.CreateTemp(t.cfg.Dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	if d, err := os.Open(t.cfg.Dir); err == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

// fileName is the file of a session id (ids are "s-" and hex; anything else
// is hex-encoded so it cannot leave the directory).
func fileName(sid string) string {
	ok := sid != ""
	for _, c := range sid {
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			ok = false
			break
		}
	}
	if !ok {
		sid = fmt.Sprintf("x%x", sid)
	}
	return sid + tierSuffix
}

// put records a written file and drops the longest-idle files beyond the disk
// budget; false when that dropped the new file itself (it was the longest
// idle: the session stays in memory).
func (t *tier) put(sid string, f *tierFile, took time.Duration) (kept bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.files[sid]; old != nil {
		t.stats.Bytes -= old.size
	}
	t.files[sid] = f
	t.stats.Bytes += f.size
	t.stats.OffloadSeconds += took.Seconds()
	if t.cfg.DiskBytes > 0 && t.stats.Bytes > t.cfg.DiskBytes {
		ids := make([]string, 0, len(t.files))
		for id := range t.files {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return t.files[ids[i]].lastUsed.Before(t.files[ids[j]].lastUsed) })
		for _, id := range ids {
			if t.stats.Bytes <= t.cfg.DiskBytes {
				break
			}
			if id == sid {
				t.forgetLocked(id) // not dropped: still in memory
				continue
			}
			t.removeLocked(id)
			t.stats.Dropped++
		}
	}
	t.stats.Files = len(t.files)
	if _, kept = t.files[sid]; kept {
		t.stats.Offloads++
	}
	return kept
}

func (t *tier) removeLocked(sid string) {
	f := t.files[sid]
	if f == nil {
		return
	}
	if t.disown != nil {
		t.disown(f.owner)
	}
	os.Remove(f.path)
	t.stats.Bytes -= f.size
	delete(t.files, sid)
	t.stats.Files = len(t.files)
}

// forgetLocked deletes a restored session's file (its owner keeps it).
func (t *tier) forgetLocked(sid string) {
	if f := t.files[sid]; f != nil {
		os.Remove(f.path)
		t.stats.Bytes -= f.size
		delete(t.files, sid)
		t.stats.Files = len(t.files)
	}
}

// remove deletes a session's file (the session was deleted or restored).
func (t *tier) remove(sid string) {
	t.mu.Lock()
	t.removeLocked(sid)
	t.mu.Unlock()
}

// has reports whether owner's session sid is on disk.
func (t *tier) has(owner, sid string, anyOwner bool) (*tierFile, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.files[sid]
	if f == nil || (!anyOwner && f.owner != owner) {
		return nil, false
	}
	return f, true
}

// lock serialises the restores of one session.
func (t *tier) lock(sid string) func() {
	t.mu.Lock()
	m := t.restoring[sid]
	if m == nil {
		m = &sync.Mutex{}
		t.restoring[sid] = m
	}
	t.mu.Unlock()
	m.Lock()
	return func() {
		m.Unlock()
		t.mu.Lock()
		if t.restoring[sid] == m && m.TryLock() {
			delete(t.restoring, sid)
			m.Unlock()
		}
		t.mu.Unlock()
	}
}

func (t *tier) snapshot() tierStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stats
}

// offload writes an idle session to disk and frees its memory. A session in
// use (or deleted meanwhile) is left alone.
func (n *Node) offload(sess *Session) error {
	start := time.Now()
	if err := n.store.Acquire(sess, 0); err != nil {
		return err // busy: try later
	}
	b, err := encodeTier(sess, n.snap)
	if err != nil {
		n.store.Release(sess)
		return err
	}
	path, err := n.tier.writeFile(sess.ID, b)
	if err != nil {
		n.store.Release(sess)
		return fmt.Errorf("trunknode: offload %s: %w", sess.ID, err)
	}
	kept := n.tier.put(sess.ID, &tierFile{owner: sess.owner, path: path, size: int64(len(b)), lastUsed: sess.lastUsed}, time.Since(start))
	n.store.Release(sess)
	if !kept {
		return fmt.Errorf("%w: session %s is older than every session on disk and --offload-disk-bytes is full", ErrMemoryFull, sess.ID)
	}
	if !n.store.evict(sess) {
		n.tier.mu.Lock()
		n.tier.forgetLocked(sess.ID) // used or deleted meanwhile: memory is the truth
		n.tier.mu.Unlock()
	}
	return nil
}

// restore brings owner's session sid back from disk (nil, nil when it is not
// there).
func (n *Node) restore(owner, sid string, anyOwner bool) (*Session, error) {
	if n.tier == nil {
		return nil, nil
	}
	if _, ok := n.tier.has(owner, sid, anyOwner); !ok {
		return nil, nil
	}
	unlock := n.tier.lock(sid)
	defer unlock()
	if s, err := n.store.get(sid, owner, anyOwner); err == nil {
		return s, nil // another request restored it meanwhile
	}
	f, ok := n.tier.has(owner, sid, anyOwner)
	if !ok {
		return nil, nil
	}
	start := time.Now()
	b, err := os.ReadFile(f.path)
	if err == nil {
		var sess *Session
		// Each attempt decodes the state afresh: a failed adopt releases it.
		sess, err = n.withRoom(func() (*Session, error) {
			st, unfed, err := decodeTier(b, sid, f.owner, n.snap)
			if err != nil {
				return nil, err
			}
			return n.store.adoptID(sid, f.owner, st, unfed, f.lastUsed, false)
		})
		if err == nil {
			n.tier.mu.Lock()
			n.tier.stats.Restores++
			n.tier.stats.RestoreSeconds += time.Since(start).Seconds()
			n.tier.forgetLocked(sid)
			n.tier.mu.Unlock()
			return sess, nil
		}
		if !errors.Is(err, ErrSessionCorrupt) {
			return nil, err // e.g. no memory now: the file stays
		}
	}
	if !errors.Is(err, ErrSessionCorrupt) {
		err = fmt.Errorf("%w: %w", ErrSessionCorrupt, err)
	}
	n.tier.mu.Lock()
	n.tier.stats.Corrupt++
	n.tier.removeLocked(sid)
	n.tier.mu.Unlock()
	n.logger().Error("refused a corrupt offloaded session", "session", sid, "err", err)
	return nil, err
}

// session finds a session of owner in memory, on disk, or on another trunk
// of the cluster (peer.go), which moves it here.
func (n *Node) session(ctx context.Context, owner, sid string) (*Session, error) {
	s, err := n.store.GetFor(owner, sid)
	if err == nil || !errors.Is(err, ErrSessionNotFound) {
		return s, err
	}
	if r, rerr := n.restore(owner, sid, false); r != nil || rerr != nil {
		return r, rerr
	}
	if p := n.peerSet(); p != nil {
		if r, rerr := p.pull(ctx, owner, sid); r != nil || rerr != nil {
			return r, rerr
		}
	}
	return nil, err
}

// withRoom runs f; when it fails for lack of memory and tiering is on, the
// least recently used idle sessions (never keep, the one f is for) are
// offloaded and f runs again.
func (n *Node) withRoom(f func() (*Session, error), keep ...*Session) (*Session, error) {
	s, err := f()
	if n.tier == nil || !errors.Is(err, ErrMemoryFull) {
		return s, err
	}
	var spare *Session
	if len(keep) > 0 {
		spare = keep[0]
	}
	for range 8 {
		victim := n.store.lruIdle(spare)
		if victim == nil {
			break
		}
		if oerr := n.offload(victim); oerr != nil {
			n.logger().Warn("offload under memory pressure failed", "session", victim.ID, "err", oerr)
			continue
		}
		if s, err = f(); !errors.Is(err, ErrMemoryFull) {
			return s, err
		}
	}
	return s, err
}

// offloadIdle writes out the sessions idle longer than TierConfig.After (all
// idle ones when all is set: a graceful shutdown).
func (n *Node) offloadIdle(now time.Time, all bool) {
	if n.tier == nil || (n.tier.cfg.After <= 0 && !all) {
		return
	}
	for _, s := range n.store.idleSince(now, n.tier.cfg.After, all) {
		if err := n.offload(s); err != nil && !errors.Is(err, ErrSessionBusy) && !errors.Is(err, ErrSessionNotFound) {
			n.logger().Warn("offloading an idle session failed", "session", s.ID, "err", err)
		}
	}
}

// lruIdle returns the least recently used idle kept session other than
// spare, or nil. A session a replica copy is being made of is passed over:
// its memory would stop counting only when the copy ends.
func (s *Store) lruIdle(spare *Session) *Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *Session
	for _, sess := range s.sessions {
		if sess.busy || sess.ephemeral || sess == spare || sess.copying > 0 {
			continue
		}
		if best == nil || sess.lastUsed.Before(best.lastUsed) {
			best = sess
		}
	}
	return best
}

// idleSince lists kept sessions idle for longer than after (every idle one
// with all).
func (s *Store) idleSince(now time.Time, after time.Duration, all bool) []*Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Session
	for _, sess := range s.sessions {
		if !sess.busy && !sess.ephemeral && (all || now.Sub(sess.lastUsed) > after) {
			out = append(out, sess)
		}
	}
	// Longest idle first: under a disk budget the most recent stay.
	sort.Slice(out, func(i, j int) bool { return out[i].lastUsed.Before(out[j].lastUsed) })
	return out
}

// evict frees an idle session's memory after it was written out; false when
// it is busy or gone (the file is then stale).
func (s *Store) evict(sess *Session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.sessions[sess.ID]; !ok || cur != sess || sess.busy {
		return false
	}
	s.deleteLocked(sess)
	s.ownLocked(sess.owner, false, true) // still the client's: on disk
	return true
}

// adoptID stores a session under its own id and owner: restored from disk
// (counted for its owner already), or moved here from another trunk (count:
// the trunk it left uncounted it).
func (s *Store) adoptID(id, owner string, st *hybrid.State, unfed []int, lastUsed time.Time, count bool) (*Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.sessions[id]; dup {
		st.Free()
		return nil, fmt.Errorf("%w: session %s is in memory already", ErrSessionBusy, clip(id))
	}
	if !s.roomLocked(s.recPer, st.UncountedKVBytes(&s.pages)) {
		st.Free()
		return nil, fmt.Errorf("%w: no room to restore session %s", ErrMemoryFull, clip(id))
	}
	if count {
		s.ownLocked(owner, false, true) // a move: the client's still, whatever its limit
	}
	st.Attach(&s.pages)
	sess := &Session{ID: id, State: st, Unfed: unfed, lastUsed: lastUsed, owner: owner}
	s.sessions[id] = sess
	s.recUsed += s.recPer
	return sess, nil
}

// watchTier exports the tier's counters and gauges.
func (m *metrics) watchTier(node string, t *tier) {
	labels := prometheus.Labels{"node_id": node}
	counter := func(name, help string, v func(tierStats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return v(t.snapshot()) })
	}
	gauge := func(name, help string, v func(tierStats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return v(t.snapshot()) })
	}
	m.reg.MustRegister(
		counter("switchyard_session_offloads_total", "Sessions written to the offload directory and freed from memory.", func(s tierStats) float64 { return float64(s.Offloads) }),
		counter("switchyard_session_offload_seconds_total", "Time spent writing sessions out (divide by offloads for the mean).", func(s tierStats) float64 { return s.OffloadSeconds }),
		counter("switchyard_session_restores_total", "Offloaded sessions read back into memory for a request.", func(s tierStats) float64 { return float64(s.Restores) }),
		counter("switchyard_session_restore_seconds_total", "Time spent restoring sessions (divide by restores for the mean).", func(s tierStats) float64 { return s.RestoreSeconds }),
		counter("switchyard_session_offload_dropped_total", "Offloaded sessions dropped to keep within --offload-disk-bytes (longest idle first).", func(s tierStats) float64 { return float64(s.Dropped) }),
		counter("switchyard_session_offload_corrupt_total", "Offloaded session files refused because they failed their checks.", func(s tierStats) float64 { return float64(s.Corrupt) }),
		gauge("switchyard_session_offloaded", "Sessions held on disk.", func(s tierStats) float64 { return float64(s.Files) }),
		gauge("switchyard_session_offloaded_bytes", "Bytes of offloaded session files.", func(s tierStats) float64 { return float64(s.Bytes) }),
	)
}

// expire deletes the files of sessions idle longer than ttl (--session-ttl
// applies on disk too).
func (t *tier) expire(now time.Time, ttl time.Duration) {
	if t == nil || ttl <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, f := range t.files {
		if now.Sub(f.lastUsed) > ttl {
			t.removeLocked(id)
		}
	}
}
