package hybrid

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// LoadOptions.NoMmap copies the matrices out of the file's map: the logits
// are bitwise those of the mapped model, for both checkpoint formats, and
// the matrices no longer point into the map; Close releases the copies.
func TestNoMmapSameLogits(t *testing.T) {
	hf := fixtureHF(t)
	for _, path := range []string{hf, filepath.Join(filepath.Dir(hf), "model.gguf")} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			mapped := mustOpen(t, path, LoadOptions{})
			defer mapped.Close()
			copied := mustOpen(t, path, LoadOptions{NoMmap: true})
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

// TestNoMmapCopiesOnlyKeptExperts: with NoMmap, a model keeping no routed
// experts (a trunk) copies none of them, and one keeping a single expert
// copies exactly that expert's matrices more (the stacks are not copied
// whole).
func TestNoMmapCopiesOnlyKeptExperts(t *testing.T) {
	hf := fixtureHF(t)
	for _, path := range []string{hf, filepath.Join(filepath.Dir(hf), "model.gguf")} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			open := func(keep func(l, e int) bool) *Model {
				m := mustOpen(t, path, LoadOptions{NoMmap: true, KeepExpert: keep})
				t.Cleanup(func() { m.Close() })
				return m
			}
			all := open(nil)
			none := open(func(int, int) bool { return false })
			one := open(func(l, e int) bool { return l == 0 && e == 1 })
			if !all.Cfg.IsMoE() {
				t.Skip("fixture has no routed experts")
			}
			expertBytes := func(x ExpertWeights) int64 {
				return int64(x.Gate.Bytes() + x.Up.Bytes() + x.Down.Bytes())
			}
			var experts int64
			for _, lw := range all.W.Layers {
				for _, x := range lw.Experts {
					experts += expertBytes(x)
				}
			}
			if experts == 0 || none.CopiedBytes() == 0 {
				t.Fatalf("copied %d bytes of experts, %d without them: want both > 0", experts, none.CopiedBytes())
			}
			if got, want := all.CopiedBytes(), none.CopiedBytes()+experts; got != want {
				t.Errorf("all experts kept: copied %d bytes, want %d (the rest) + %d (experts)", got, none.CopiedBytes(), experts)
			}
			x := one.W.Layers[0].Experts[1]
			if got, want := one.CopiedBytes(), none.CopiedBytes()+expertBytes(x); got != want {
				t.Errorf("one expert kept: copied %d bytes, want %d", got, want)
			}
		})
	}
}

// TestExpertCacheSharesKeptExperts: two loads through one ExpertCache (an
// expert node's assignment, then the next) share the experts both keep and
// copy only the new ones, the copies hold the file's bytes, and the cache
// frees each expert when the last model holding it closes.
func TestExpertCacheSharesKeptExperts(t *testing.T) {
	hf := fixtureHF(t)
	// The Q8_0 file's experts are packed where the CPU has those kernels.
	for _, path := range []string{hf, filepath.Join(filepath.Dir(hf), "model.gguf"), filepath.Join(quantDir, "granite-tiny-q8_0.gguf")} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			cache := NewExpertCache()
			load := func(keep func(l, e int) bool) *Model {
				return mustOpen(t, path, LoadOptions{NoMmap: true, KeepExpert: keep, ExpertCache: cache})
			}
			first := load(func(l, e int) bool { return e%2 == 0 })  // even experts
			second := load(func(l, e int) bool { return e%4 != 3 }) // shares e%4 == 0, adds e%4 == 1
			if !first.Cfg.IsMoE() {
				t.Skip("fixture has no routed experts")
			}
			E, L := first.Cfg.Experts, len(first.W.Layers)
			if got, want := cache.Len(), L*(E/2+E/4); got != want {
				t.Fatalf("cache holds %d experts, want %d (the union of both assignments)", got, want)
			}
			var firstBytes int64
			for _, lw := range first.W.Layers {
				for _, x := range lw.Experts {
					firstBytes += int64(x.Gate.Bytes() + x.Up.Bytes() + x.Down.Bytes())
				}
			}
			if got := first.CopiedBytes(); got != firstBytes {
				t.Errorf("copied %d bytes, want %d: the kept experts only (the rest stays mapped)", got, firstBytes)
			}
			a, b := first.W.Layers[0].Experts[0], second.W.Layers[0].Experts[0]
			if unsafe.SliceData(a.Down.Data) != unsafe.SliceData(b.Down.Data) {
				t.Error("an expert both assignments keep was copied twice")
			}
			mapped := mustOpen(t, path, LoadOptions{})
			defer mapped.Close()
			for e, x := range second.W.Layers[0].Experts {
				if e%4 == 3 {
					if x.Down.Data != nil {
						t.Errorf("expert %d is not in the assignment but loaded", e)
					}
					continue
				}
				if kernels.CanPack(mapped.W.Layers[0].Experts[e].Down) && x.Down.Layout == tensor.RowMajor {
					t.Errorf("expert %d: a Q8_0 expert copied through the cache is not packed", e)
				}
				rowMajor := func(m tensor.Matrix) string { return string(kernels.RowMajorBytes(m, 0, m.Rows*m.RowStride())) }
				if rowMajor(x.Down) != rowMajor(mapped.W.Layers[0].Experts[e].Down) ||
					rowMajor(x.Gate) != rowMajor(mapped.W.Layers[0].Experts[e].Gate) {
					t.Errorf("expert %d: copied weights differ from the file's", e)
				}
			}
			if err := first.Close(); err != nil {
				t.Fatal(err)
			}
			if got, want := cache.Len(), L*(3*E/4); got != want {
				t.Errorf("after the first model closed the cache holds %d experts, want %d (the second's)", got, want)
			}
			if err := second.Close(); err != nil {
				t.Fatal(err)
			}
			if cache.Len() != 0 || cache.Bytes() != 0 {
				t.Errorf("after both closed the cache holds %d experts (%d bytes)", cache.Len(), cache.Bytes())
			}
		})
	}
}

// TestExpertCacheRecopiesSparseSlabs: a load keeping under three quarters of
// an earlier load's experts copies them again instead of pinning that
// load's memory, which is freed when the earlier model closes; a later load
// keeping the new copies shares them.
func TestExpertCacheRecopiesSparseSlabs(t *testing.T) {
	path := filepath.Join(filepath.Dir(fixtureHF(t)), "model.gguf")
	cache := NewExpertCache()
	load := func(keep func(l, e int) bool) *Model {
		return mustOpen(t, path, LoadOptions{NoMmap: true, KeepExpert: keep, ExpertCache: cache})
	}
	all := load(nil)
	if !all.Cfg.IsMoE() {
		t.Skip("fixture has no routed experts")
	}
	E, L := all.Cfg.Experts, len(all.W.Layers)
	even := func(l, e int) bool { return e%2 == 0 }
	half := load(even) // half of all's slab: copied again
	if got, want := cache.Len(), L*E+L*E/2; got != want {
		t.Fatalf("cache holds %d experts, want %d (all, and the half copied again)", got, want)
	}
	if unsafe.SliceData(all.W.Layers[0].Experts[0].Down.Data) == unsafe.SliceData(half.W.Layers[0].Experts[0].Down.Data) {
		t.Error("a load keeping half of a slab shares it")
	}
	allBytes := cache.Bytes()
	if err := all.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := cache.Len(), L*E/2; got != want {
		t.Errorf("after the first model closed: %d experts, want %d", got, want)
	}
	if cache.Bytes() >= allBytes {
		t.Errorf("after the first model closed the cache holds %d bytes, no less than the %d before", cache.Bytes(), allBytes)
	}
	again := load(even)
	if unsafe.SliceData(again.W.Layers[0].Experts[2].Gate.Data) != unsafe.SliceData(half.W.Layers[0].Experts[2].Gate.Data) {
		t.Error("the same assignment again copied its experts instead of sharing them")
	}
	for _, m := range []*Model{half, again} {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if cache.Len() != 0 || cache.Bytes() != 0 {
		t.Errorf("after every model closed: %d experts, %d bytes", cache.Len(), cache.Bytes())
	}
}

// TestCopiedFingerprint: a model copied into memory (its Q8_0 matrices
// packed where the CPU has the kernels) has the mapped model's weights
// fingerprint, so trunks that load differently still agree on snapshots.
func TestCopiedFingerprint(t *testing.T) {
	path := filepath.Join(quantDir, "granite-tiny-q8_0.gguf")
	mapped, copied := mustOpen(t, path, LoadOptions{}), mustOpen(t, path, LoadOptions{NoMmap: true})
	t.Cleanup(func() { mapped.Close(); copied.Close() })
	if kernels.CanPack(mapped.W.Output) && copied.W.Output.Layout == tensor.RowMajor {
		t.Fatal("the copied output matrix is not packed on a CPU with the packed kernels")
	}
	if mapped.W.Fingerprint() != copied.W.Fingerprint() {
		t.Fatal("copied and mapped models have different weight fingerprints")
	}
}

// mustOpen opens path with opt or fails the test; the caller closes the model.
func mustOpen(t *testing.T, path string, opt LoadOptions) *Model {
	t.Helper()
	m, _, err := Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
