package hybrid

import (
	"bytes"
	"math"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// loadFixtureF32 loads the fixture's GGUF twin, whose weights are float32.
func loadFixtureF32(t testing.TB) *Model {
	t.Helper()
	m, _, err := LoadGGUF(filepath.Join(fixtureHF(t), "..", "model.gguf"), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// sameBits reports how many values differ in their bits, and the largest difference.
func sameBits(a, b []float32) (int, float64) {
	if len(a) != len(b) {
		return max(len(a), len(b)), math.Inf(1)
	}
	n, d := 0, 0.0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			n++
			d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		}
	}
	return n, d
}

func sum(v []int) int {
	n := 0
	for _, x := range v {
		n += x
	}
	return n
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// greedy feeds the prompt to st in the given cuts, then decodes n tokens
// greedily; it returns the logits of every sampled position and the tokens.
func greedy(t *testing.T, m *Model, st *State, prompt []int, cuts []int, n int) ([][]float32, []int) {
	t.Helper()
	var logits [][]float32
	var toks []int
	i := st.Pos
	var last []float32
	for _, c := range append(slices.Clone(cuts), len(prompt)-st.Pos-sum(cuts)) {
		if c == 0 {
			continue
		}
		last = slices.Clone(forward1(t, m, st, prompt[i:i+c], false))
		i += c
	}
	for range n {
		logits = append(logits, last)
		tok := argmax(last)
		toks = append(toks, tok)
		last = slices.Clone(forward1(t, m, st, []int{tok}, false))
	}
	return logits, toks
}

// A session resumed from a checkpoint (a Clone of the state at a block
// boundary: recurrent state copied, KV pages shared) continues exactly as the
// whole prefill does. With float32 weights and the recurrent scan the logits
// are bitwise equal whatever the cuts; the chunked scan is too when the cuts
// fall on multiples of its chunk (the GGUF twin's is 256), not otherwise; with
// bf16 weights the products' rounding depends on the rows per call (a tile
// of 5 or more rows accumulates in another order), so they agree to rounding.
func TestResumedCheckpointMatchesFullPrefill(t *testing.T) {
	f32, bf16 := loadFixtureF32(t), loadFixture(t)
	cases := []struct {
		name    string
		m       *Model
		chunked int // ScanChunkedMin
		L, ckpt int // prompt length, checkpoint position
		cuts    []int
		bitwise bool // logits bitwise equal; otherwise within tol and same tokens
	}{
		{"f32 recurrent, prefix ends mid-block", f32, 0, 300, 256, nil, true},
		{"f32 recurrent, one token after the block", f32, 0, 257, 256, nil, true},
		{"f32 recurrent, two blocks, odd cuts", f32, 0, 700, 512, []int{37}, true},
		{"f32 recurrent, one token after two blocks", f32, 0, 513, 512, nil, true},
		{"f32 chunked, cut on its chunk", f32, 2, 700, 256, nil, true},
		{"f32 chunked, cut inside its chunk", f32, 2, 700, 256, []int{100}, false},
		{"bf16 recurrent", bf16, 0, 600, 512, nil, false},
	}
	r := rand.New(rand.NewPCG(21, 22))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			prev := m.ScanChunkedMin
			m.ScanChunkedMin = tc.chunked
			t.Cleanup(func() { m.ScanChunkedMin = prev })
			prompt := randTokens(r, tc.L, m.Cfg.VocabSize)
			want, wantToks := greedy(t, m, m.NewState(), prompt, nil, 6)

			st := m.NewState()
			forward1(t, m, st, prompt[:tc.ckpt], false)
			ckpt := st.Clone()
			st.Release()
			resumed := ckpt.Clone()
			got, gotToks := greedy(t, m, resumed, prompt, tc.cuts, 6)
			if !slices.Equal(gotToks, wantToks) {
				t.Fatalf("resumed tokens %v, full prefill %v", gotToks, wantToks)
			}
			for i := range want {
				n, d := sameBits(got[i], want[i])
				switch {
				case tc.bitwise && n > 0:
					t.Fatalf("step %d: %d logits differ (max %.3g); want bitwise equal", i, n, d)
				case !tc.bitwise && d > 1e-4:
					t.Fatalf("step %d: logits differ by %.3g", i, d)
				}
			}
			if ckpt.Pos != tc.ckpt || ckpt.KV[0].Len() != tc.ckpt {
				t.Fatalf("the checkpoint moved: pos %d, %d tokens cached", ckpt.Pos, ckpt.KV[0].Len())
			}
		})
	}
}

// dump is every cached key and value of a state, token by token.
func dump(st *State) []float32 {
	var out []float32
	for i := range st.KV {
		c := &st.KV[i]
		d := c.kvHeads * c.headDim
		k, v := make([]float32, d), make([]float32, d)
		for t := range c.Len() {
			c.Row(t, k, v)
			out = append(out, k...)
			out = append(out, v...)
		}
	}
	for i := range st.Conv {
		out = append(out, st.Conv[i]...)
		out = append(out, st.SSM[i]...)
	}
	return out
}

// Appending to a clone never changes the state it was cloned from, nor another
// clone sharing its pages: full pages stay shared, a shared partly filled page
// is copied by the first append, new pages are private.
func TestCopyOnWrite(t *testing.T) { forKVDTypes(t, testCopyOnWrite) }

func testCopyOnWrite(t *testing.T, dt tensor.DType) {
	m := loadForKV(t, dt)
	m.KVDType = dt
	m.ScanChunkedMin = 0
	r := rand.New(rand.NewPCG(23, 24))
	for _, held := range []int{PageTokens, PageTokens + 44} { // at a page boundary, mid-page
		var acct PageAccount
		base := m.NewState()
		base.Attach(&acct)
		forward1(t, m, base, randTokens(r, held, m.Cfg.VocabSize), false)
		before := dump(base)
		a, b := base.Clone(), base.Clone()
		if acct.Bytes() != base.KVBytes() {
			t.Fatalf("held %d: clones cost %d KV bytes, want none beyond the %d shared", held, acct.Bytes(), base.KVBytes())
		}
		// One more token takes a page per layer: a new one at a page boundary,
		// a copy of the shared last page mid-page.
		page := base.KVBytes() / int64(base.KV[0].PagesInUse())
		if g := a.KVGrowBytes(1); g != page {
			t.Fatalf("held %d: KVGrowBytes(1) = %d, want %d", held, g, page)
		}
		bBefore := dump(b)
		forward1(t, m, a, randTokens(r, 300, m.Cfg.VocabSize), false)
		if n, _ := sameBits(dump(base), before); n != 0 {
			t.Fatalf("held %d: appending to a clone changed the original (%d values)", held, n)
		}
		if n, _ := sameBits(dump(b), bBefore); n != 0 {
			t.Fatalf("held %d: appending to a clone changed another clone (%d values)", held, n)
		}
		for i := range a.KV {
			for p, bp := range base.KV[i].pages {
				if shared, want := a.KV[i].pages[p] == bp, p < held/PageTokens; shared != want {
					t.Fatalf("held %d layer %d page %d: shared %v, want %v", held, i, p, shared, want)
				}
			}
		}
		// The original continues exactly as a private copy of it would.
		next := randTokens(r, 5, m.Cfg.VocabSize)
		want := forward1(t, m, b, next, false)
		if n, _ := sameBits(forward1(t, m, base, next, false), want); n != 0 {
			t.Fatalf("held %d: the original and its untouched clone diverged", held)
		}
		for _, st := range []*State{base, a, b} {
			st.Release()
		}
		if acct.Bytes() != 0 {
			t.Fatalf("held %d: %d bytes still counted after every holder let go", held, acct.Bytes())
		}
	}
}

// The page account counts a shared page once, frees it with its last holder,
// and what a state allocates is what KVGrowBytes said; encoding a state with
// shared pages and decoding it gives a private copy that Attach counts.
func TestPageAccounting(t *testing.T) { forKVDTypes(t, testPageAccounting) }

func testPageAccounting(t *testing.T, dt tensor.DType) {
	m := loadForKV(t, dt)
	m.KVDType = dt
	m.ScanChunkedMin = 0
	r := rand.New(rand.NewPCG(25, 26))
	var acct PageAccount
	st := m.NewState()
	st.Attach(&acct)
	for _, n := range []int{1, PageTokens - 1, 2, PageTokens, 300} {
		want := st.KVGrowBytes(n)
		before := st.AllocatedBytes()
		forward1(t, m, st, randTokens(r, n, m.Cfg.VocabSize), false)
		if got := st.AllocatedBytes() - before; got != want {
			t.Fatalf("appending %d: allocated %d bytes, KVGrowBytes said %d", n, got, want)
		}
		if acct.Bytes() != st.KVBytes() {
			t.Fatalf("appending %d: account %d, state holds %d", n, acct.Bytes(), st.KVBytes())
		}
	}
	fork := st.Clone()
	if fork.UncountedKVBytes(&acct) != 0 || fork.PrivateKVBytes() != 0 || acct.Bytes() != st.KVBytes() {
		t.Fatalf("a fork adds %d uncounted, %d private bytes", fork.UncountedKVBytes(&acct), fork.PrivateKVBytes())
	}
	var ps PageSet
	if added := ps.Add(st); added != st.KVBytes() || ps.Add(fork) != 0 || ps.Bytes() != st.KVBytes() {
		t.Fatalf("page set: %d bytes for two states sharing %d", ps.Bytes(), st.KVBytes())
	}

	var buf bytes.Buffer
	if err := fork.Encode(&buf, m.Cfg); err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != fork.EncodedLen() {
		t.Fatalf("encoded %d bytes, EncodedLen %d", buf.Len(), fork.EncodedLen())
	}
	dec, err := DecodeState(buf.Bytes(), m.Cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := sameBits(dump(dec), dump(st)); n != 0 || dec.Pos != st.Pos {
		t.Fatalf("decoded state differs (%d values)", n)
	}
	if got := dec.UncountedKVBytes(&acct); got != dec.KVBytes() {
		t.Fatalf("a decoded state's %d bytes are all new, UncountedKVBytes says %d", dec.KVBytes(), got)
	}
	dec.Attach(&acct)
	if acct.Bytes() != 2*st.KVBytes() {
		t.Fatalf("after attaching a decoded copy: %d, want %d", acct.Bytes(), 2*st.KVBytes())
	}

	if ps.Remove(st) != 0 || ps.Remove(fork) != st.KVBytes() || ps.Bytes() != 0 {
		t.Fatalf("page set after removing both: %d", ps.Bytes())
	}
	st.Release()
	if acct.Bytes() != 2*fork.KVBytes() || fork.PrivateKVBytes() != fork.KVBytes() {
		t.Fatalf("with one holder left: account %d, fork private %d of %d", acct.Bytes(), fork.PrivateKVBytes(), fork.KVBytes())
	}
	fork.Reset()
	dec.Release()
	if acct.Bytes() != 0 {
		t.Fatalf("%d bytes counted after every state let go", acct.Bytes())
	}
}

// A clone dropped without Release (a leak in a caller) stops counting once
// the garbage collector finds its pages unreachable.
func TestPageAccountCatchesDroppedStates(t *testing.T) {
	forKVDTypes(t, testPageAccountCatchesDroppedStates)
}

func testPageAccountCatchesDroppedStates(t *testing.T, dt tensor.DType) {
	m := loadForKV(t, dt)
	m.KVDType = dt
	m.ScanChunkedMin = 0
	var acct PageAccount
	func() {
		st := m.NewState()
		st.Attach(&acct)
		forward1(t, m, st, randTokens(rand.New(rand.NewPCG(27, 28)), 300, m.Cfg.VocabSize), false)
		_ = st.Clone() // dropped, never released
		st.Release()   // the clone still holds the pages
	}()
	if acct.Bytes() == 0 {
		t.Fatal("the dropped clone's pages should still count before a collection")
	}
	deadline := time.Now().Add(5 * time.Second)
	for acct.Bytes() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still counted after collections", acct.Bytes())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
