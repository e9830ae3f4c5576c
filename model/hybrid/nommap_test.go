package hybrid

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"unsafe"
)

// LoadOptions.NoMmap copies the matrices out of the file's map: the logits
// are bitwise those of the mapped model, for both checkpoint formats, and
// the matrices no longer point into the map; Close releases the copies.
func TestNoMmapSameLogits(t *testing.T) {
	hf := fixtureHF(t)
	for _, path := range []string{hf, filepath.Join(filepath.Dir(hf), "model.gguf")} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			mapped, _, err := Open(path, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer mapped.Close()
			copied, _, err := Open(path, LoadOptions{NoMmap: true})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := unsafe.SliceData(mapped.W.Embed.Data), unsafe.SliceData(copied.W.Embed.Data); a == b {
				t.Fatal("NoMmap: the embedding still points into the file's map")
			}
			if p := uintptr(unsafe.Pointer(unsafe.SliceData(copied.W.Embed.Data))); p%64 != 0 {
				t.Errorf("copied matrix at %#x: want 64-byte alignment", p)
			}
			toks := randTokens(rand.New(rand.NewPCG(3, 4)), 12, mapped.Cfg.VocabSize)
			want := forward1(t, mapped, mapped.NewState(), toks, true)
			got := forward1(t, copied, copied.NewState(), toks, true)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("logit %d: %g copied, %g mapped", i, got[i], want[i])
				}
			}
			if err := copied.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
