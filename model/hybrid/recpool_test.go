package hybrid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

// A freed state's recurrent buffer is the next new state's, zeroed; Clone
// and DecodeState take pooled buffers too; the pool keeps no more than its
// limit; a freed state is refused by Forward, and freeing twice pools once.
func TestFreedStateBufferReused(t *testing.T) {
	m := loadFixture(t)
	prev := SetRecurrentPoolLimit(DefaultRecurrentPoolLimit)
	t.Cleanup(func() { SetRecurrentPoolLimit(prev) })
	SetRecurrentPoolLimit(0) // empty it
	SetRecurrentPoolLimit(DefaultRecurrentPoolLimit)

	st := m.NewState()
	if err := m.Forward([]Seq{{State: st, Tokens: []int{1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	buf := &st.rec[0]
	n := int64(len(st.rec)) * 4
	if n != st.RecurrentBytes() {
		t.Fatalf("buffer of %d bytes, recurrent parts %d", n, st.RecurrentBytes())
	}
	st.Free()
	st.Free() // a second Free pools nothing more
	if got := RecurrentPoolBytes(); got != n {
		t.Fatalf("pool holds %d bytes after one Free, want %d", got, n)
	}
	err := m.Forward([]Seq{{State: st, Tokens: []int{1}}})
	if !errors.Is(err, ErrInput) {
		t.Fatalf("Forward on a freed state: %v, want ErrInput", err)
	}

	st2 := m.NewState()
	if &st2.rec[0] != buf {
		t.Fatal("a new state did not take the freed state's buffer")
	}
	for i, v := range st2.rec {
		if v != 0 {
			t.Fatalf("pooled buffer not zeroed at %d: %v", i, v)
		}
	}
	if RecurrentPoolBytes() != 0 {
		t.Fatalf("pool holds %d bytes after the buffer was taken", RecurrentPoolBytes())
	}
	// The pooled state computes what a fresh one does.
	fresh := NewStateKV(m.Cfg, m.KVDType)
	toks := []int{5, 6, 7, 8}
	out := func(s *State) []float32 {
		seq := []Seq{{State: s, Tokens: toks}}
		if err := m.Forward(seq); err != nil {
			t.Fatal(err)
		}
		return append([]float32(nil), seq[0].Logits...)
	}
	a, b := out(st2), out(fresh)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("logit %d: %v from a pooled state, %v from a new one", i, a[i], b[i])
		}
	}

	// Clone and DecodeState take from the pool.
	fresh.Free()
	cl := st2.Clone()
	if &cl.rec[0] == &st2.rec[0] || RecurrentPoolBytes() != 0 {
		t.Fatalf("Clone: own buffer %v, pool %d bytes", &cl.rec[0] != &st2.rec[0], RecurrentPoolBytes())
	}
	var w bytes.Buffer
	if err := cl.Encode(&w, m.Cfg); err != nil {
		t.Fatal(err)
	}
	enc := w.Bytes()
	cl.Free()
	dec, err := DecodeState(enc, m.Cfg)
	if err != nil {
		t.Fatal(err)
	}
	if RecurrentPoolBytes() != 0 {
		t.Fatalf("DecodeState left %d bytes in the pool", RecurrentPoolBytes())
	}
	for i := range dec.SSM {
		for j, v := range dec.SSM[i] {
			if v != st2.SSM[i][j] {
				t.Fatalf("decoded SSM %d[%d] = %v, want %v", i, j, v, st2.SSM[i][j])
			}
		}
	}
	// A corrupt state's buffer goes back to the pool.
	dec.Free()
	// (the first tensor's value count off by one, the checksum made to fit,
	// so the state is made before the body is refused)
	bad := append([]byte(nil), enc...)
	binary.LittleEndian.PutUint64(bad[24:], binary.LittleEndian.Uint64(bad[24:])+1)
	binary.LittleEndian.PutUint32(bad[len(bad)-4:], crc32.ChecksumIEEE(bad[:len(bad)-4]))
	if _, err := DecodeState(bad, m.Cfg); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("a state with a wrong tensor size: %v, want ErrState (does not fit)", err)
	}
	if RecurrentPoolBytes() != n {
		t.Fatalf("pool %d bytes after a refused decode, want %d", RecurrentPoolBytes(), n)
	}

	// The limit: a buffer that does not fit is not kept; lowering the limit
	// drops what is over it.
	SetRecurrentPoolLimit(n)
	extra := m.NewState() // the pooled buffer
	more := m.NewState()  // a new one
	extra.Free()
	more.Free()
	if RecurrentPoolBytes() != n {
		t.Fatalf("pool %d bytes with a limit of %d", RecurrentPoolBytes(), n)
	}
	SetRecurrentPoolLimit(0)
	if RecurrentPoolBytes() != 0 {
		t.Fatalf("pool %d bytes with a limit of 0", RecurrentPoolBytes())
	}
	st2.Free()
	if RecurrentPoolBytes() != 0 {
		t.Fatal("a buffer kept beyond the limit")
	}
}

// Forward refuses a state of another model shape instead of indexing past
// its layers.
func TestForwardRefusesForeignState(t *testing.T) {
	m := loadFixture(t)
	c := *m.Cfg
	c.LayerTypes = c.LayerTypes[:len(c.LayerTypes)-1]
	err := m.Forward([]Seq{{State: NewState(&c), Tokens: []int{1}}})
	if !errors.Is(err, ErrInput) {
		t.Fatalf("Forward on a state of %d layers: %v, want ErrInput", len(c.LayerTypes), err)
	}
}
