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
