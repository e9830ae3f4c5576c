package trunknode

import (
	"errors"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// TestStoreChargesKVByThePage checks the budget follows the engine's page
// allocation: a request reserves the pages it may open, and what stays charged
// after it is exactly the session's KVBytes.
func TestStoreChargesKVByThePage(t *testing.T) {
	c, err := config.Load(filepath.Join(fixtureHF(t), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	kvPer := int64(2*c.KVDim()*4) * int64(c.NumLayers(config.Attention))
	page := int64(hybrid.PageTokens) * kvPer
	cases := []struct {
		name      string
		held, add int   // tokens held before, tokens the request adds
		budget    int64 // KV budget
		reserve   int64 // reservation wanted (0 with wantFull)
		wantFull  bool
	}{
		{"first token opens a page", 0, 1, 4 * page, page, false},
		{"fills the first page exactly", 0, hybrid.PageTokens, 4 * page, page, false},
		{"one token over a page", 0, hybrid.PageTokens + 1, 4 * page, 2 * page, false},
		{"grows inside its open page", 10, 20, 4 * page, 0, false},
		{"crosses into the next page", hybrid.PageTokens - 1, 2, 4 * page, page, false},
		{"does not fit the budget", 0, 3*hybrid.PageTokens + 1, 3 * page, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore(MemoryConfig{RecurrentBytes: 1 << 40, KVBytes: tc.budget}, func() *hybrid.State { return hybrid.NewState(c) }, hybrid.SizeOf(c).RecurrentBytes, kvPer)
			sess, err := st.Create(false)
			if err != nil {
				t.Fatal(err)
			}
			grow := func(n int) { // what the engine does: append n tokens to every attention layer
				kv := make([]float32, n*c.KVDim())
				for i := range sess.State.KV {
					sess.State.KV[i].Append(kv, kv, n)
				}
				sess.State.Pos += n
			}
			if tc.held > 0 {
				if err := st.Acquire(sess, tc.held); err != nil {
					t.Fatal(err)
				}
				grow(tc.held)
				st.Release(sess)
			}
			_, _, before := st.Usage()
			err = st.Acquire(sess, tc.add)
			if tc.wantFull {
				if !errors.Is(err, ErrMemoryFull) {
					t.Fatalf("Acquire = %v, want ErrMemoryFull", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, _, during := st.Usage(); during-before != tc.reserve {
				t.Fatalf("reserved %d bytes, want %d", during-before, tc.reserve)
			}
			grow(tc.add)
			st.Release(sess)
			if _, _, after := st.Usage(); after != sess.State.KVBytes() {
				t.Fatalf("charged %d bytes, session holds %d", after, sess.State.KVBytes())
			}
			held := sess.State.KVBytes()
			if freed, err := st.Delete(sess.ID); err != nil || freed != st.recPer+held {
				t.Fatalf("Delete freed %d (%v), want %d", freed, err, st.recPer+held)
			}
			if n, rec, kv := st.Usage(); n != 0 || rec != 0 || kv != 0 {
				t.Fatalf("after delete: %d sessions, %d + %d bytes", n, rec, kv)
			}
		})
	}
}

// A session's recurrent buffer is reused by the next session once the
// session is gone (hybrid.State.Free): deleted when idle, an ephemeral one at
// the end of its generation, and one deleted while running only once the
// generation ended, never while it still runs. The next session starts from
// zeros.
func TestDroppedSessionsStateReused(t *testing.T) {
	c, err := config.Load(filepath.Join(fixtureHF(t), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	prev := hybrid.SetStatePoolLimit(1 << 30)
	t.Cleanup(func() { hybrid.SetStatePoolLimit(prev) })
	st := NewStore(MemoryConfig{RecurrentBytes: 1 << 40, KVBytes: 1 << 30}, func() *hybrid.State { return hybrid.NewState(c) }, hybrid.SizeOf(c).RecurrentBytes, 1)
	buf := func(s *Session) *float32 { return &s.State.SSM[0][0] }
	dirty := func(s *Session) {
		for i := range s.State.SSM {
			for j := range s.State.SSM[i] {
				s.State.SSM[i][j] = 1
			}
		}
	}
	next := func(t *testing.T, want *float32) {
		t.Helper()
		s, err := st.Create(false)
		if err != nil {
			t.Fatal(err)
		}
		if buf(s) != want {
			t.Fatal("the new session did not take the dropped session's buffer")
		}
		for i := range s.State.SSM {
			for j, v := range s.State.SSM[i] {
				if v != 0 {
					t.Fatalf("new session's SSM %d[%d] = %v", i, j, v)
				}
			}
		}
		if _, err := st.Delete(s.ID); err != nil {
			t.Fatal(err)
		}
	}
	hybrid.SetStatePoolLimit(0) // start empty
	hybrid.SetStatePoolLimit(1 << 30)

	t.Run("deleted idle", func(t *testing.T) {
		s, err := st.Create(false)
		if err != nil {
			t.Fatal(err)
		}
		dirty(s)
		b := buf(s)
		if _, err := st.Delete(s.ID); err != nil {
			t.Fatal(err)
		}
		next(t, b)
	})
	t.Run("ephemeral", func(t *testing.T) {
		s, err := st.Create(true)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Acquire(s, 1); err != nil {
			t.Fatal(err)
		}
		dirty(s)
		b := buf(s)
		st.Release(s)
		next(t, b)
	})
	t.Run("deleted while running", func(t *testing.T) {
		s, err := st.Create(false)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Acquire(s, 1); err != nil {
			t.Fatal(err)
		}
		b := buf(s)
		if _, err := st.Delete(s.ID); err != nil {
			t.Fatal(err)
		}
		// Still running: its buffer is its own.
		other, err := st.Create(false)
		if err != nil {
			t.Fatal(err)
		}
		if buf(other) == b {
			t.Fatal("a session deleted while running lent its buffer before the generation ended")
		}
		dirty(s) // the generation goes on writing
		st.Release(s)
		next(t, b)
		if _, err := st.Delete(other.ID); err != nil {
			t.Fatal(err)
		}
	})
}

// A replica copy is made outside the store's lock (cloneIdle): while a copy
// is being made, Acquire on that session waits for it, other sessions are
// served, and a delete keeps the state (and its memory counted) until the
// copy ends. The copy holds the session's values.
func TestCopyOutsideTheLock(t *testing.T) {
	c, err := config.Load(filepath.Join(fixtureHF(t), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	rec := hybrid.SizeOf(c).RecurrentBytes
	st := NewStore(MemoryConfig{RecurrentBytes: 1 << 40, KVBytes: 1 << 30}, func() *hybrid.State { return hybrid.NewState(c) }, rec, 1)
	newSess := func() *Session {
		s, err := st.Create(false)
		if err != nil {
			t.Fatal(err)
		}
		for i := range s.State.SSM {
			for j := range s.State.SSM[i] {
				s.State.SSM[i][j] = float32(i + j)
			}
		}
		return s
	}
	pin := func(s *Session) { st.mu.Lock(); s.copying++; st.mu.Unlock() }
	unpin := func(s *Session) { st.mu.Lock(); st.uncopyLocked(s); st.mu.Unlock() }

	t.Run("copy", func(t *testing.T) {
		s := newSess()
		cp, release, err := st.cloneIdle(s.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if cp.State == s.State || s.copying != 0 {
			t.Fatalf("copy shares the state (%v) or left the session pinned (%d)", cp.State == s.State, s.copying)
		}
		for i := range s.State.SSM {
			if !slices.Equal(cp.State.SSM[i], s.State.SSM[i]) || !slices.Equal(cp.State.Conv[i], s.State.Conv[i]) {
				t.Fatalf("layer %d: the copy's recurrent values differ", i)
			}
		}
	})
	t.Run("acquire waits", func(t *testing.T) {
		s, other := newSess(), newSess()
		pin(s)
		var unpinned atomic.Bool
		done := make(chan error, 1)
		go func() {
			err := st.Acquire(s, 1)
			if err == nil && !unpinned.Load() {
				err = errors.New("Acquire returned while a copy was being made")
			}
			done <- err
		}()
		// The Acquire is waiting for the copy (its goroutine parked in the
		// store's condition)...
		waitUntil(t, "Acquire waiting for the copy", func() bool {
			buf := make([]byte, 1<<20)
			for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
				if strings.Contains(g, "(*Store).Acquire") && strings.Contains(g, "(*Cond).Wait") {
					return true
				}
			}
			return false
		})
		// ...and another session is served meanwhile: the lock is free.
		if err := st.Acquire(other, 1); err != nil {
			t.Fatal(err)
		}
		st.Release(other)
		unpinned.Store(true)
		unpin(s)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		st.Release(s)
	})
	t.Run("not offloaded during a copy", func(t *testing.T) {
		old := newSess()
		old.lastUsed = old.lastUsed.Add(-time.Hour) // the least recently used
		newer := newSess()
		if got := st.lruIdle(nil); got != old {
			t.Fatalf("lruIdle picked %v, want the oldest session", got)
		}
		pin(old)
		if got := st.lruIdle(nil); got == old {
			t.Fatal("lruIdle picked a session being copied")
		}
		unpin(old)
		for _, s := range []*Session{old, newer} {
			if _, err := st.Delete(s.ID); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("deleted during a copy", func(t *testing.T) {
		s := newSess()
		n0, rec0, _ := st.Usage()
		pin(s)
		if _, err := st.Delete(s.ID); err != nil {
			t.Fatal(err)
		}
		n1, rec1, _ := st.Usage()
		if n1 != n0-1 || rec1 != rec0 || s.State.RecurrentBytes() != rec {
			t.Fatalf("deleted during a copy: %d sessions (was %d), %d recurrent bytes counted (was %d), state holds %d: want the state kept and counted",
				n1, n0, rec1, rec0, s.State.RecurrentBytes())
		}
		unpin(s)
		_, rec2, _ := st.Usage()
		if rec2 != rec0-rec || s.State.RecurrentBytes() != 0 {
			t.Fatalf("after the copy: %d recurrent bytes counted, state holds %d; want %d and 0 (freed)", rec2, s.State.RecurrentBytes(), rec0-rec)
		}
	})
}
