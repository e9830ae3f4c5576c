package hybrid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// emptyPool empties the state pool and restores its limit when the test ends.
func emptyPool(t *testing.T) {
	prev := SetStatePoolLimit(0)
	t.Cleanup(func() { SetStatePoolLimit(prev) })
	SetStatePoolLimit(DefaultStatePoolLimit)
}

// A freed state's recurrent buffer and KV pages are the next new state's,
// zeroed, and the pooled state computes the same bits as a new one; Clone
// and DecodeState take pooled buffers too (a refused decode gives its back);
// the pool keeps no more than its limit; a freed state is refused by
// Forward, and freeing twice pools once.
func TestFreedStateBufferReused(t *testing.T) {
	m := loadFixture(t)
	emptyPool(t)

	st := m.NewState()
	if err := m.Forward([]Seq{{State: st, Tokens: []int{1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	buf := &st.rec[0]
	pages := func(s *State) map[any]bool {
		out := map[any]bool{}
		for i := range s.KV {
			for _, p := range s.KV[i].pages {
				out[unsafePageStart(p)] = true
			}
		}
		return out
	}
	freed := pages(st)
	rec, kv := st.RecurrentBytes(), st.KVBytes()
	if int64(len(st.rec))*4 != rec || kv == 0 {
		t.Fatalf("buffer of %d bytes, recurrent parts %d, KV %d", len(st.rec)*4, rec, kv)
	}
	st.Free()
	st.Free() // a second Free pools nothing more
	if got := StatePoolBytes(); got != rec+kv {
		t.Fatalf("pool holds %d bytes after one Free, want %d + %d", got, rec, kv)
	}
	err := m.Forward([]Seq{{State: st, Tokens: []int{1}}})
	if !errors.Is(err, ErrInput) {
		t.Fatalf("Forward on a freed state: %v, want ErrInput", err)
	}

	st2 := m.NewState()
	if &st2.rec[0] != buf {
		t.Fatal("a new state did not take the freed state's recurrent buffer")
	}
	for i, v := range st2.rec {
		if v != 0 {
			t.Fatalf("pooled buffer not zeroed at %d: %v", i, v)
		}
	}
	fresh := NewStateKV(m.Cfg, m.KVDType) // no pooled recurrent buffer left
	toks := []int{5, 6, 7, 8}
	out := func(s *State) []float32 {
		seq := []Seq{{State: s, Tokens: toks}}
		if err := m.Forward(seq); err != nil {
			t.Fatal(err)
		}
		return append([]float32(nil), seq[0].Logits...)
	}
	a := out(st2) // its pages are the freed state's
	for p := range pages(st2) {
		if !freed[p] {
			t.Fatal("the new state's KV pages did not take the freed pages' values")
		}
	}
	b := out(fresh)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("logit %d: %v from a pooled state, %v from a new one", i, a[i], b[i])
		}
	}
	if got := StatePoolBytes(); got != 0 {
		t.Fatalf("pool holds %d bytes after everything was taken", got)
	}

	// Clone and DecodeState take from the pool (Clone shares the pages).
	fresh.Free()
	cl := st2.Clone()
	if &cl.rec[0] == &st2.rec[0] || StatePoolBytes() != kv {
		t.Fatalf("Clone: own buffer %v, pool %d bytes, want the pages' %d", &cl.rec[0] != &st2.rec[0], StatePoolBytes(), kv)
	}
	for i := range st2.Conv {
		if !slices.Equal(cl.Conv[i], st2.Conv[i]) || !slices.Equal(cl.SSM[i], st2.SSM[i]) {
			t.Fatalf("a clone's recurrent values of layer %d are not the original's", i)
		}
	}
	var w bytes.Buffer
	if err := cl.Encode(&w, m.Cfg); err != nil {
		t.Fatal(err)
	}
	enc := w.Bytes()
	cl.Free() // its pages are st2's too: only the buffer goes back
	if StatePoolBytes() != kv+rec {
		t.Fatalf("pool %d bytes after freeing a clone, want %d", StatePoolBytes(), kv+rec)
	}
	dec, err := DecodeState(enc, m.Cfg)
	if err != nil {
		t.Fatal(err)
	}
	if StatePoolBytes() != 0 {
		t.Fatalf("DecodeState left %d bytes in the pool", StatePoolBytes())
	}
	// Clone and DecodeState take pooled buffers without zeroing them (a
	// freed state's values were in them) and write every value.
	same := func(what string, got, want [][]float32) {
		t.Helper()
		for i := range want {
			for j, v := range got[i] {
				if v != want[i][j] {
					t.Fatalf("%s %d[%d] = %v, want %v", what, i, j, v, want[i][j])
				}
			}
		}
	}
	same("decoded conv", dec.Conv, st2.Conv)
	same("decoded SSM", dec.SSM, st2.SSM)
	// A state refused after it was made gives its buffer back (the first
	// tensor's value count off by one, the checksum made to fit).
	dec.Free()
	bad := append([]byte(nil), enc...)
	binary.LittleEndian.PutUint64(bad[24:], binary.LittleEndian.Uint64(bad[24:])+1)
	binary.LittleEndian.PutUint32(bad[len(bad)-4:], crc32.ChecksumIEEE(bad[:len(bad)-4]))
	if _, err := DecodeState(bad, m.Cfg); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("a state with a wrong tensor size: %v, want ErrState (does not fit)", err)
	}
	if StatePoolBytes() != rec+kv {
		t.Fatalf("pool %d bytes after a refused decode, want %d", StatePoolBytes(), rec+kv)
	}

	// The limit: what does not fit is not kept; lowering it drops what is
	// over it.
	SetStatePoolLimit(rec)
	if StatePoolBytes() > rec {
		t.Fatalf("pool %d bytes with a limit of %d", StatePoolBytes(), rec)
	}
	SetStatePoolLimit(0)
	SetStatePoolLimit(rec)
	extra, more := m.NewState(), m.NewState() // new buffers, no pages
	extra.Free()
	more.Free()
	if StatePoolBytes() != rec {
		t.Fatalf("pool %d bytes with a limit of %d", StatePoolBytes(), rec)
	}
	SetStatePoolLimit(0)
	if StatePoolBytes() != 0 {
		t.Fatalf("pool %d bytes with a limit of 0", StatePoolBytes())
	}
	st2.Free()
	if StatePoolBytes() != 0 {
		t.Fatal("memory kept beyond the limit")
	}
}

// unsafePageStart identifies a page's values by their first element.
func unsafePageStart(p *kvPage) any {
	switch {
	case p.half != nil:
		return &p.half[0]
	case p.q8 != nil:
		return &p.q8[0]
	}
	return &p.data[0]
}

// A page goes to the pool only when its last holder lets it go, and comes
// back zeroed, for every KV type: a shared page is not pooled while a clone
// holds it.
func TestPagesPooledByLastHolder(t *testing.T) {
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.Q8_0} {
		t.Run(dt.String(), func(t *testing.T) {
			emptyPool(t)
			kvd := 2 * 64
			a := newKVCacheOf(2, 64, dt)
			row := make([]float32, 3*kvd)
			for i := range row {
				row[i] = float32(i%7) + 1
			}
			a.Append(row, row, 3)
			b := a.clone(nil)
			pv, pb := unsafePageStart(a.pages[0]), a.pageBytes()
			a.reset()
			if StatePoolBytes() != 0 {
				t.Fatalf("a page still held by a clone was pooled (%d bytes)", StatePoolBytes())
			}
			b.reset()
			if StatePoolBytes() != pb {
				t.Fatalf("pool %d bytes after the last holder let go, want %d", StatePoolBytes(), pb)
			}
			c := newKVCacheOf(2, 64, dt)
			c.Append(row[:kvd], row[:kvd], 1)
			if unsafePageStart(c.pages[0]) != pv {
				t.Fatal("a new page did not take the pooled values")
			}
			var nonzero int
			p := c.pages[0]
			for _, v := range p.data {
				if v != 0 {
					nonzero++
				}
			}
			for _, v := range p.half {
				if v != 0 {
					nonzero++
				}
			}
			for _, v := range p.q8 {
				if v != 0 {
					nonzero++
				}
			}
			// One token written: at most its K and V values (and Q8_0 scales).
			if limit := 2 * kvd * 2; nonzero == 0 || nonzero > limit {
				t.Fatalf("%d nonzero elements in a reused page after one token, want 1..%d (not zeroed?)", nonzero, limit)
			}
		})
	}
}
