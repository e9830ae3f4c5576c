package hybrid

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard-serving/switchyard/model/kernels"
)

func fixtureHF(t testing.TB) string {
	t.Helper()
	d := filepath.Join("..", "..", "..", "shared", "fixtures", "granite-hybrid-tiny", "hf")
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("shared fixture missing: %v", err)
	}
	return d
}

func loadFixture(t testing.TB) *Model {
	t.Helper()
	m, err := LoadHF(fixtureHF(t), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func maxDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

func randTokens(r *rand.Rand, n, vocab int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = r.IntN(vocab)
	}
	return out
}

func forward1(t testing.TB, m *Model, st *State, toks []int, all bool) []float32 {
	t.Helper()
	seq := []Seq{{State: st, Tokens: toks, AllLogits: all}}
	if err := m.Forward(seq); err != nil {
		t.Fatal(err)
	}
	return seq[0].Logits
}

// Batched decode of N sessions (each at its own position) equals decoding
// each alone: bit for bit with the batch-invariant kernels (what
// --deterministic, the default, selects), and within tolerance without them.
// Without them one-row and many-row products add in different orders, and a
// difference that moves a value across a bf16 rounding boundary of the KV
// cache grows to a few 1e-4..1e-3 in the logits (1.4e-3 measured at the AVX2
// level), hence the tolerance.
func TestBatchedDecodeMatchesSingle(t *testing.T) {
	for _, inv := range []bool{true, false} {
		t.Run(fmt.Sprintf("invariant=%v", inv), func(t *testing.T) {
			defer kernels.SetBatchInvariant(kernels.SetBatchInvariant(inv))
			tol := 5e-3
			if inv {
				tol = 0
			}
			testBatchedDecodeMatchesSingle(t, tol)
		})
	}
}

func testBatchedDecodeMatchesSingle(t *testing.T, tol float64) {
	m := loadFixture(t)
	r := rand.New(rand.NewPCG(1, 2))
	const n = 7
	alone := make([]*State, n)
	batched := make([]*State, n)
	for i := range n {
		alone[i], batched[i] = m.NewState(), m.NewState()
		p := randTokens(r, 1+3*i, m.Cfg.VocabSize)
		forward1(t, m, alone[i], p, false)
		forward1(t, m, batched[i], p, false)
	}
	for step := range 5 {
		toks := randTokens(r, n, m.Cfg.VocabSize)
		batch := make([]Seq, n)
		for i := range n {
			batch[i] = Seq{State: batched[i], Tokens: []int{toks[i]}}
		}
		if err := m.Forward(batch); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			want := forward1(t, m, alone[i], []int{toks[i]}, false)
			if d := maxDiff(batch[i].Logits, want); d > tol {
				t.Fatalf("step %d session %d: batched vs alone max diff %.3g", step, i, d)
			}
		}
	}
}

// A batch mixing a prefill chunk with decode rows equals running them separately.
func TestMixedBatch(t *testing.T) {
	m := loadFixture(t)
	r := rand.New(rand.NewPCG(3, 4))
	a1, a2 := m.NewState(), m.NewState()
	b1, b2 := m.NewState(), m.NewState()
	p := randTokens(r, 5, m.Cfg.VocabSize)
	forward1(t, m, a1, p, false)
	forward1(t, m, b1, p, false)
	long := randTokens(r, 20, m.Cfg.VocabSize)
	batch := []Seq{{State: a1, Tokens: []int{9}}, {State: a2, Tokens: long, AllLogits: true}}
	if err := m.Forward(batch); err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(batch[0].Logits, forward1(t, m, b1, []int{9}, false)); d > 1e-4 {
		t.Fatalf("decode row: %.3g", d)
	}
	if d := maxDiff(batch[1].Logits, forward1(t, m, b2, long, true)); d > 1e-4 {
		t.Fatalf("prefill rows: %.3g", d)
	}
}

// Prefill in one call equals the same tokens split across calls (continued prefill
// on top of an existing state), for both scan forms.
func TestSplitPrefill(t *testing.T) {
	m := loadFixture(t)
	r := rand.New(rand.NewPCG(5, 6))
	toks := randTokens(r, 37, m.Cfg.VocabSize)
	for _, chunked := range []int{0, 2} {
		m.ScanChunkedMin = chunked
		whole := forward1(t, m, m.NewState(), toks, false)
		for _, splits := range [][]int{{1, 36}, {10, 27}, {16, 16, 5}, {3, 3, 3, 28}} {
			st := m.NewState()
			var got []float32
			i := 0
			for _, n := range splits {
				got = forward1(t, m, st, toks[i:i+n], false)
				i += n
			}
			if d := maxDiff(got, whole); d > 1e-4 {
				t.Fatalf("chunked=%d splits %v: %.3g", chunked, splits, d)
			}
			if st.Pos != len(toks) {
				t.Fatalf("pos %d", st.Pos)
			}
		}
	}
	m.ScanChunkedMin = 2
}

// Fork + continue equals continue, and the fork is independent of the original.
func TestForkAndSerialize(t *testing.T) {
	m := loadFixture(t)
	r := rand.New(rand.NewPCG(7, 8))
	st := m.NewState()
	forward1(t, m, st, randTokens(r, 12, m.Cfg.VocabSize), false)
	fork := st.Clone()
	var buf bytes.Buffer
	if err := st.Encode(&buf, m.Cfg); err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != st.EncodedLen() {
		t.Fatalf("encoded %d bytes, EncodedLen says %d", buf.Len(), st.EncodedLen())
	}
	restored, err := DecodeState(buf.Bytes(), m.Cfg)
	if err != nil {
		t.Fatal(err)
	}
	if restored.Bytes() != st.Bytes() || restored.Pos != st.Pos {
		t.Fatalf("restored %d bytes pos %d, want %d pos %d", restored.Bytes(), restored.Pos, st.Bytes(), st.Pos)
	}
	next := randTokens(r, 4, m.Cfg.VocabSize)
	want := forward1(t, m, st, next, false)
	if d := maxDiff(forward1(t, m, fork, next, false), want); d != 0 {
		t.Fatalf("fork diverged: %.3g", d)
	}
	if d := maxDiff(forward1(t, m, restored, next, false), want); d != 0 {
		t.Fatalf("restored diverged: %.3g", d)
	}
	// Exact size: recurrent (conv K-1 + SSM per mamba layer) + KV per token.
	c := m.Cfg
	wantRec := int64(c.NumLayers(0)) * int64((c.MambaDConv-1)*c.ConvDim()+c.MambaHeads*c.MambaHeadDim*c.MambaDState) * 4
	if st.RecurrentBytes() != wantRec {
		t.Fatalf("recurrent bytes %d want %d", st.RecurrentBytes(), wantRec)
	}
	pages := (st.Pos + PageTokens - 1) / PageTokens
	if st.KVBytes() != int64(pages*PageTokens*c.NumLayers(1))*KVValueBytes(m.KVDType, 2*c.KVDim()) {
		t.Fatalf("kv bytes %d for %d tokens", st.KVBytes(), st.Pos)
	}
	// Corruption is detected, never a panic.
	b := buf.Bytes()
	for _, bad := range [][]byte{b[:len(b)/2], append([]byte("XXXX"), b[4:]...), nil} {
		if _, err := DecodeState(bad, m.Cfg); !errors.Is(err, ErrState) {
			t.Fatalf("corrupt state accepted: %v", err)
		}
	}
	flip := bytes.Clone(b)
	flip[len(flip)/2] ^= 1
	if _, err := DecodeState(flip, m.Cfg); !errors.Is(err, ErrState) {
		t.Fatalf("bit flip accepted: %v", err)
	}
}

func TestForwardRejectsBadInput(t *testing.T) {
	m := loadFixture(t)
	cases := map[string][]Seq{
		"empty":        {{State: m.NewState()}},
		"out of vocab": {{State: m.NewState(), Tokens: []int{m.Cfg.VocabSize}}},
		"negative":     {{State: m.NewState(), Tokens: []int{-1}}},
		"no state":     {{Tokens: []int{1}}},
	}
	for name, b := range cases {
		if err := m.Forward(b); !errors.Is(err, ErrInput) {
			t.Errorf("%s: err = %v, want ErrInput", name, err)
		}
	}
}

// A state whose KV cache ran ahead of its position (a failed step that was not
// discarded) is refused, not silently attended with the wrong keys.
func TestForwardRejectsInconsistentState(t *testing.T) {
	m := loadFixture(t)
	st := m.NewState()
	if len(st.KV) == 0 {
		t.Skip("fixture has no attention layer")
	}
	kv := make([]float32, m.Cfg.KVDim())
	st.KV[0].Append(kv, kv, 1)
	if err := m.Forward([]Seq{{State: st, Tokens: []int{1}}}); !errors.Is(err, ErrState) {
		t.Fatalf("err = %v, want ErrState", err)
	}
}

// The chunked SSD scan agrees with the exact recurrence for random inputs, chunk
// sizes that do and do not divide T, several groups, and a non-zero initial state.
func TestScanChunkedMatchesRecurrent(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, tc := range []struct{ T, H, P, N, G, Q int }{
		{1, 2, 4, 3, 1, 4}, {7, 4, 8, 5, 2, 3}, {16, 4, 4, 8, 1, 16}, {33, 8, 4, 4, 4, 8}, {50, 2, 3, 2, 1, 256},
		{80, 4, 20, 40, 2, 37}, // several 16×16 tiles of the transposes each way
	} {
		din := tc.H * tc.P
		cd := din + 2*tc.G*tc.N
		mk := func(n int, scale float64) []float32 {
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(r.NormFloat64() * scale)
			}
			return v
		}
		xbc := mk(tc.T*cd, 1)
		dt := make([]float32, tc.T*tc.H)
		for i := range dt {
			dt[i] = float32(0.01 + 0.5*r.Float64())
		}
		A := make([]float32, tc.H)
		for i := range A {
			A[i] = -float32(1 + 8*r.Float64())
		}
		D := mk(tc.H, 1)
		s0 := mk(tc.H*tc.P*tc.N, 1)
		ref := scanParams{T: tc.T, H: tc.H, P: tc.P, N: tc.N, G: tc.G, convDim: cd, dInner: din, xbc: xbc, dt: dt, A: A, D: D,
			state: append([]float32(nil), s0...), y: make([]float32, tc.T*din)}
		ch := ref
		ch.state = append([]float32(nil), s0...)
		ch.y = make([]float32, tc.T*din)
		ch.chunk = tc.Q
		scanRecurrent(&ref, &chunkScratch{})
		scanChunked(&ch, &chunkScratch{})
		// Head ranges computed separately (as the parallel path does) give the same.
		split := ref
		split.state = append([]float32(nil), s0...)
		split.y = make([]float32, tc.T*din)
		split.chunk = tc.Q
		for _, hr := range [][2]int{{0, tc.H / 2}, {tc.H / 2, tc.H}} {
			part := split
			part.h0, part.h1 = hr[0], hr[1]
			if hr[0] == hr[1] {
				continue
			}
			scanChunked(&part, &chunkScratch{})
		}
		if d := maxDiff(split.y, ch.y); d != 0 {
			t.Errorf("%+v: head-split chunked scan differs by %.3g", tc, d)
		}
		if d := maxDiff(ref.y, ch.y); d > 1e-4 {
			t.Errorf("%+v: y differs by %.3g", tc, d)
		}
		if d := maxDiff(ref.state, ch.state); d > 1e-4 {
			t.Errorf("%+v: state differs by %.3g", tc, d)
		}
	}
}

// The ping-pong form (two micro-batches interleaved at the expert waits) equals
// running each micro-batch with Forward.
func TestForwardPingPongMatches(t *testing.T) {
	m := loadFixture(t)
	r := rand.New(rand.NewPCG(11, 12))
	mk := func(n int) ([]Seq, []Seq) {
		a, b := make([]Seq, n), make([]Seq, n)
		for i := range n {
			toks := randTokens(r, 1+i%5, m.Cfg.VocabSize)
			a[i] = Seq{State: m.NewState(), Tokens: toks}
			b[i] = Seq{State: m.NewState(), Tokens: toks}
		}
		return a, b
	}
	a1, a2 := mk(3)
	b1, b2 := mk(4)
	if err := m.ForwardPingPong(a1, b1); err != nil {
		t.Fatal(err)
	}
	if err := m.Forward(a2); err != nil {
		t.Fatal(err)
	}
	if err := m.Forward(b2); err != nil {
		t.Fatal(err)
	}
	for i := range a1 {
		if d := maxDiff(a1[i].Logits, a2[i].Logits); d != 0 {
			t.Fatalf("micro-batch a seq %d differs by %.3g", i, d)
		}
	}
	for i := range b1 {
		if d := maxDiff(b1[i].Logits, b2[i].Logits); d != 0 {
			t.Fatalf("micro-batch b seq %d differs by %.3g", i, d)
		}
	}
}

func TestTopK(t *testing.T) {
	cases := []struct {
		logits []float32
		want   []int32
	}{
		{[]float32{1, 5, 3, 5, -2}, []int32{1, 3}},        // tie: lower id first
		{[]float32{0, 0, 0, 0}, []int32{0, 1, 2}},         // all equal
		{[]float32{-1, -9, 4, 2, 3}, []int32{2, 4, 3, 0}}, // descending order
	}
	for _, tc := range cases {
		ids := make([]int32, len(tc.want))
		w := make([]float32, len(tc.want))
		topK(tc.logits, ids, w)
		var sum float32
		for j := range ids {
			if ids[j] != tc.want[j] {
				t.Fatalf("topK(%v) = %v, want %v", tc.logits, ids, tc.want)
			}
			sum += w[j]
		}
		if math.Abs(float64(sum-1)) > 1e-6 {
			t.Fatalf("weights sum to %v", sum)
		}
	}
}

// causalConv (tap by tap, vector products) gives the bits of the plain
// per-channel loop, at every kernel level.
func TestCausalConvMatchesLoop(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	prev := kernels.KernelLevel()
	defer kernels.SetKernelLevel(prev)
	for _, lvl := range kernels.SupportedLevels() {
		kernels.SetKernelLevel(lvl)
		for _, tc := range []struct{ T, cd, K int }{{1, 40, 4}, {7, 3328, 4}, {5, 17, 3}} {
			w := &MambaWeights{ConvW: make([]float32, tc.cd*tc.K), ConvB: make([]float32, tc.cd)}
			for i := range w.ConvW {
				w.ConvW[i] = float32(r.NormFloat64())
			}
			for i := range w.ConvB {
				w.ConvB[i] = float32(r.NormFloat64())
			}
			ext := make([]float32, (tc.K-1+tc.T)*tc.cd)
			for i := range ext {
				ext[i] = float32(r.NormFloat64())
			}
			got := make([]float32, tc.T*tc.cd)
			causalConv(got, ext, make([]float32, tc.cd), w, tc.K)
			want := make([]float32, tc.T*tc.cd)
			for t := range tc.T {
				o := want[t*tc.cd : (t+1)*tc.cd]
				for ch := range tc.cd {
					acc := w.ConvB[ch]
					for k := range tc.K {
						acc = float32(acc + float32(w.ConvW[ch*tc.K+k]*ext[(t+k)*tc.cd+ch]))
					}
					o[ch] = acc
				}
				kernels.SiLUMul(o, o, nil)
			}
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("level %v %+v: out[%d] = %g, loop %g", lvl, tc, i, got[i], want[i])
				}
			}
		}
	}
}
