package hybrid

import (
	"testing"

	"github.com/switchyard-serving/switchyard/model/config"
)

// SizeOf computes from the config what an allocated state measures.
func TestSizeOfMatchesState(t *testing.T) {
	fix, err := config.ReadCheckpoint(fixtureHF(t))
	if err != nil {
		t.Fatal(err)
	}
	h := *fix
	h.LayerTypes = append([]config.LayerType(nil), fix.LayerTypes...)
	h.LayerTypes[0] = config.Attention // one more attention layer
	for _, c := range []*config.Config{fix, &h} {
		st := NewState(c)
		sz := SizeOf(c)
		if sz.RecurrentBytes != st.RecurrentBytes() || sz.EmptyEncoded != st.EncodedLen() {
			t.Fatalf("SizeOf = %+v, state measures recurrent %d, encoded %d", sz, st.RecurrentBytes(), st.EncodedLen())
		}
	}
}

// A state's recurrent parts share one buffer (recurrentBuffer), each slice
// capped at its own length: zero when new, no append reaching a neighbour,
// and a Clone's parts are copies in memory of their own.
func TestRecurrentOneBuffer(t *testing.T) {
	c, err := config.ReadCheckpoint(fixtureHF(t))
	if err != nil {
		t.Fatal(err)
	}
	st := NewState(c)
	parts := append(append([][]float32(nil), st.Conv...), st.SSM...)
	if len(parts) == 0 {
		t.Fatal("fixture has no Mamba layers")
	}
	for i, p := range parts {
		if len(p) == 0 || cap(p) != len(p) {
			t.Fatalf("part %d: len %d cap %d, want a non-empty slice capped at its length", i, len(p), cap(p))
		}
		for _, v := range p {
			if v != 0 {
				t.Fatalf("part %d of a new state is not zero", i)
			}
		}
	}
	for i, p := range parts {
		for k := range p {
			p[k] = float32(i + 1)
		}
	}
	for i, p := range parts { // writes to one part reached no other
		for _, v := range p {
			if v != float32(i+1) {
				t.Fatalf("part %d holds %g, want %d", i, v, i+1)
			}
		}
	}
	cl := st.Clone()
	cparts := append(append([][]float32(nil), cl.Conv...), cl.SSM...)
	for i, p := range cparts {
		if len(p) != len(parts[i]) || cap(p) != len(p) || &p[0] == &parts[i][0] {
			t.Fatalf("clone part %d: len %d cap %d, shared %v", i, len(p), cap(p), &p[0] == &parts[i][0])
		}
		for _, v := range p {
			if v != float32(i+1) {
				t.Fatalf("clone part %d holds %g, want %d", i, v, i+1)
			}
		}
		p[0] = -1
		if parts[i][0] != float32(i+1) {
			t.Fatalf("writing the clone's part %d changed the original", i)
		}
	}
}
