package trunknode

import (
	"errors"
	"path/filepath"
	"testing"

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
