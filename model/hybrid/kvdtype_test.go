package hybrid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// kvDTypes are the KV cache element types every page test runs with.
var kvDTypes = []tensor.DType{tensor.F32, tensor.BF16, tensor.Q8_0}

// loadForKV loads a small model whose attention heads a KV cache of type dt
// takes: the golden fixture (head size 16) for F32 and BF16, and for Q8_0,
// whose blocks are 32 values, the h256 fixture (head size 64).
func loadForKV(t testing.TB, dt tensor.DType) *Model {
	t.Helper()
	if dt != tensor.Q8_0 {
		return loadFixtureF32(t)
	}
	m, _, err := Open(filepath.Join(quantDir, "granite-h256-q4_k_m.gguf"), LoadOptions{KVDType: tensor.Q8_0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// forKVDTypes runs f as a subtest per KV element type.
func forKVDTypes(t *testing.T, f func(t *testing.T, dt tensor.DType)) {
	for _, dt := range kvDTypes {
		t.Run(dt.String(), func(t *testing.T) { f(t, dt) })
	}
}

// roundBF16 returns v rounded to bfloat16 and widened back.
func roundBF16(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = tensor.BF16ToF32(tensor.F32ToBF16(x))
	}
	return out
}

// Attention over BF16 pages equals attention over F32 pages holding the same
// bfloat16-rounded values (the reference twin): the pages differ only in how
// the values are stored, never in what attention computes from them.
func TestBF16PagesMatchRoundedF32Pages(t *testing.T) {
	cases := []struct {
		name        string
		pos0, T     int
		nq, nkv, hd int
	}{
		{"decode first token", 0, 1, 4, 2, 16},
		{"prefill across pages", 0, 2*PageTokens + 37, 6, 2, 16},
		{"continued prefill at a page edge", PageTokens - 3, 9, 4, 1, 32},
		{"decode deep in a context", 3*PageTokens + 11, 1, 8, 2, 16},
		{"head_dim 72 (vector tails)", 2*PageTokens - 40, 90, 6, 3, 72},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.T), 99))
			randn := func(n int) []float32 { return normals(rng, n) }
			kvd, qd, L := c.nkv*c.hd, c.nq*c.hd, c.pos0+c.T
			k, v := randn(L*kvd), randn(L*kvd)
			half := newKVCacheOf(c.nkv, c.hd, tensor.BF16)
			half.Append(k[:c.pos0*kvd], v[:c.pos0*kvd], c.pos0)
			half.Append(k[c.pos0*kvd:], v[c.pos0*kvd:], c.T)
			twin := newKVCache(c.nkv, c.hd)
			twin.Append(roundBF16(k), roundBF16(v), L)
			if half.Bytes()*2 != twin.Bytes() {
				t.Fatalf("bf16 pages take %d bytes, f32 %d: want half", half.Bytes(), twin.Bytes())
			}
			q := randn(c.T * qd)
			scale := float32(1 / math.Sqrt(float64(c.hd)))
			run := func(kv *KVCache) []float32 { return attendRows(kv, q, c.pos0, c.T, c.nq, c.hd, attnBlock, 1, scale) }
			got, want := run(&half), run(&twin)
			// The kernels widen BF16 exactly but their BF16 and F32 paths
			// sum in different orders: equal to float rounding (measured at
			// most 4e-7 here), not bit for bit.
			if d := maxDiff(got, want); d > 2e-6 {
				t.Fatalf("bf16 pages and their f32 twin differ by %.3g", d)
			}
			// And both agree with the plain reference read through Row.
			if d := maxDiff(got, attendRef(&half, q, c.pos0, c.T, c.nq, c.hd, scale)); d > 2e-5 {
				t.Fatalf("bf16 pages vs reference: %.3g", d)
			}
		})
	}
}

// A BF16 cache holds (and Row returns) every value rounded to nearest bfloat16.
func TestBF16RowsRoundTrip(t *testing.T) {
	const nkv, hd, n = 3, 24, PageTokens + 40
	rng := rand.New(rand.NewPCG(3, 4))
	k, v := make([]float32, n*nkv*hd), make([]float32, n*nkv*hd)
	for i := range k {
		k[i], v[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64()*1e3)
	}
	kv := newKVCacheOf(nkv, hd, tensor.BF16)
	kv.Append(k[:7*nkv*hd], v[:7*nkv*hd], 7)
	kv.Append(k[7*nkv*hd:], v[7*nkv*hd:], n-7)
	rk, rv := roundBF16(k), roundBF16(v)
	gk, gv := make([]float32, nkv*hd), make([]float32, nkv*hd)
	for tk := range n {
		kv.Row(tk, gk, gv)
		if c, _ := sameBits(gk, rk[tk*nkv*hd:(tk+1)*nkv*hd]); c != 0 {
			t.Fatalf("token %d keys: %d values differ from their bf16 rounding", tk, c)
		}
		if c, _ := sameBits(gv, rv[tk*nkv*hd:(tk+1)*nkv*hd]); c != 0 {
			t.Fatalf("token %d values: %d values differ from their bf16 rounding", tk, c)
		}
	}
	if want := int64(2 * 2 * nkv * hd * PageTokens * 2); kv.Bytes() != want {
		t.Fatalf("%d bytes for two pages, want %d", kv.Bytes(), want)
	}
}

// A state encodes in its KV type (version 1: f32, version 2: bf16), EncodedLen
// and SizeOf agree with what Encode writes, and decoding gives back the same
// type and values bit for bit; a decoded state continues exactly as the
// original.
func TestEncodeKeepsKVDType(t *testing.T) {
	forKVDTypes(t, func(t *testing.T, dt tensor.DType) {
		m := loadForKV(t, dt)
		m.KVDType = dt
		m.ScanChunkedMin = 0
		r := rand.New(rand.NewPCG(31, 32))
		st := m.NewState()
		if st.KVDType() != dt {
			t.Fatalf("NewState KV type %v", st.KVDType())
		}
		if SizeOf(m.Cfg).EmptyEncoded != st.EncodedLen() {
			t.Fatalf("SizeOf empty %d, state %d", SizeOf(m.Cfg).EmptyEncoded, st.EncodedLen())
		}
		forward1(t, m, st, randTokens(r, PageTokens+9, m.Cfg.VocabSize), false)
		var buf bytes.Buffer
		if err := st.Encode(&buf, m.Cfg); err != nil {
			t.Fatal(err)
		}
		if int64(buf.Len()) != st.EncodedLen() {
			t.Fatalf("encoded %d bytes, EncodedLen %d", buf.Len(), st.EncodedLen())
		}
		if kv := st.EncodedLen() - SizeOf(m.Cfg).EmptyEncoded; kv != int64(st.Pos)*m.KVBytesPerToken() {
			t.Fatalf("encoded KV %d bytes for %d tokens, want %d per token", kv, st.Pos, m.KVBytesPerToken())
		}
		if v, want := binary.LittleEndian.Uint32(buf.Bytes()[4:]), stateVersion(dt); v != want {
			t.Fatalf("format version %d, want %d", v, want)
		}
		pages := int64((st.Pos + PageTokens - 1) / PageTokens)
		if st.KVBytes() != pages*PageTokens*m.KVBytesPerToken() {
			t.Fatalf("KV bytes %d for %d pages of %d bytes per token", st.KVBytes(), pages, m.KVBytesPerToken())
		}
		dec, err := DecodeState(buf.Bytes(), m.Cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := dec.Validate(); err != nil {
			t.Fatal(err)
		}
		if dec.KVDType() != dt || dec.KVBytes() != st.KVBytes() {
			t.Fatalf("decoded KV type %v, %d bytes; want %v, %d", dec.KVDType(), dec.KVBytes(), dt, st.KVBytes())
		}
		if n, _ := sameBits(dump(dec), dump(st)); n != 0 {
			t.Fatalf("decoded state differs (%d values)", n)
		}
		next := randTokens(r, 3, m.Cfg.VocabSize)
		if n, _ := sameBits(forward1(t, m, dec, next, false), forward1(t, m, st, next, false)); n != 0 {
			t.Fatal("decoded state diverged from the original")
		}
	})
}

// Validate finds a non-finite value in a BF16 page.
func TestValidateBF16Pages(t *testing.T) {
	m := loadFixtureF32(t)
	m.KVDType = tensor.BF16
	st := m.NewState()
	forward1(t, m, st, randTokens(rand.New(rand.NewPCG(1, 2)), 5, m.Cfg.VocabSize), false)
	if err := st.Validate(); err != nil {
		t.Fatal(err)
	}
	st.KV[0].pages[0].half[3] = tensor.F32ToBF16(float32(math.Inf(1)))
	if err := st.Validate(); err == nil {
		t.Fatal("an infinite key was accepted")
	}
}

// KV bytes per token by type, for the fixture.
func TestKVBytesPerToken(t *testing.T) {
	c := loadFixtureF32(t).Cfg
	f, b := KVBytesPerToken(c, tensor.F32), KVBytesPerToken(c, tensor.BF16)
	if f != 2*int64(c.KVDim())*4*int64(c.NumLayers(1)) || b*2 != f {
		t.Fatalf("f32 %d, bf16 %d bytes per token", f, b)
	}
	if q := KVBytesPerToken(c, tensor.Q8_0); q != f/32*34/4 {
		t.Fatalf("q8_0 %d bytes per token, f32 %d", q, f)
	}
	for s, want := range map[string]tensor.DType{"f32": tensor.F32, "bf16": tensor.BF16, "q8_0": tensor.Q8_0, "Q8_0": tensor.Q8_0} {
		if dt, err := ParseKVDType(s); err != nil || dt != want {
			t.Fatalf("ParseKVDType(%q) = %v, %v", s, dt, err)
		}
	}
	if _, err := ParseKVDType("q4_0"); err == nil {
		t.Fatal("ParseKVDType accepted q4_0")
	}
}

// Attention over Q8_0 pages equals the plain reference read through Row (the
// keys and values dequantized) with the queries quantized as the Q8_0 kernels
// quantize them (per 32 values, after the 1/√d scaling),
// to float rounding; each row's result is the same bits whether it is
// computed alone (decode) or in a block of rows (prefill).
func TestQ80PagesAttention(t *testing.T) {
	cases := []struct {
		name        string
		pos0, T     int
		nq, nkv, hd int
	}{
		{"decode first token", 0, 1, 4, 2, 32},
		{"prefill across pages", 0, 2*PageTokens + 37, 6, 2, 64},
		{"continued prefill at a page edge", PageTokens - 3, 9, 4, 1, 32},
		{"decode deep in a context", 3*PageTokens + 11, 1, 12, 4, 128},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.T), 77))
			randn := func(n int) []float32 { return normals(rng, n) }
			kvd, qd, L := c.nkv*c.hd, c.nq*c.hd, c.pos0+c.T
			k, v := randn(L*kvd), randn(L*kvd)
			kv := newKVCacheOf(c.nkv, c.hd, tensor.Q8_0)
			kv.Append(k[:c.pos0*kvd], v[:c.pos0*kvd], c.pos0)
			kv.Append(k[c.pos0*kvd:], v[c.pos0*kvd:], c.T)
			if want := KVValueBytes(tensor.BF16, 2*kvd*PageTokens) * 34 / 64 * int64(kv.PagesInUse()); kv.Bytes() != want {
				t.Fatalf("q8_0 pages take %d bytes, want %d (34/64 of bf16)", kv.Bytes(), want)
			}
			q := randn(c.T * qd)
			scale := float32(1 / math.Sqrt(float64(c.hd)))
			attend := func(block int) []float32 { return attendRows(&kv, q, c.pos0, c.T, c.nq, c.hd, block, 1, scale) }
			got := attend(attnBlock)
			if n, d := sameBits(attend(1), got); n != 0 {
				t.Fatalf("rows alone and in blocks differ (%d values, by up to %.3g)", n, d)
			}
			// The reference: the queries as the kernels quantize them for a
			// Q8_0 matrix (as llama.cpp's quantize_row_q8_0 on x86: the scale
			// d = amax/127 stored as f16, q = x·127/amax rounded to nearest
			// even), widened back.
			qq := make([]float32, len(q))
			for b := 0; b < len(q); b += 32 {
				var amax float32
				for _, x := range q[b : b+32] {
					amax = max(amax, float32(math.Abs(float64(x*scale))))
				}
				d := tensor.F16ToF32(tensor.F32ToF16(amax / 127))
				for i, x := range q[b : b+32] {
					qq[b+i] = d * float32(math.RoundToEven(float64(x*scale*(127/amax))))
				}
			}
			blk := make([]byte, c.hd/32*tensor.Q8_0BlockBytes)
			want := attendRef(&kv, qq, c.pos0, c.T, c.nq, c.hd, 1)
			if d := maxDiff(got, want); d > 2e-5 {
				t.Fatalf("q8_0 pages vs reference: %.3g", d)
			}
			// And the cache holds what quantizeKVQ80 makes of each row.
			gk, gv := make([]float32, kvd), make([]float32, kvd)
			wk, wv := make([]float32, c.hd), make([]float32, c.hd)
			for tk := range L {
				kv.Row(tk, gk, gv)
				for h := range c.nkv {
					o := tk*kvd + h*c.hd
					quantizeKVQ80(blk, k[o:o+c.hd])
					tensor.DequantizeRow(tensor.Q8_0, blk, wk)
					quantizeKVQ80(blk, v[o:o+c.hd])
					tensor.DequantizeRow(tensor.Q8_0, blk, wv)
					if n, _ := sameBits(gk[h*c.hd:(h+1)*c.hd], wk); n != 0 {
						t.Fatalf("token %d head %d keys: %d values differ from quantizeKVQ80's", tk, h, n)
					}
					if n, _ := sameBits(gv[h*c.hd:(h+1)*c.hd], wv); n != 0 {
						t.Fatalf("token %d head %d values: %d values differ from quantizeKVQ80's", tk, h, n)
					}
				}
			}
		})
	}
}

// A Q8_0 cache needs head sizes of whole 32-value blocks: a model whose heads
// are 16 wide is refused at load with a message that names the fix, and a
// Q8_0 state offered to it is refused as a state of another model, without a
// panic; Validate finds a non-finite scale in a Q8_0 page.
func TestQ80KVRefusedAndValidated(t *testing.T) {
	_, _, err := LoadGGUF(filepath.Join(fixtureHF(t), "..", "model.gguf"), LoadOptions{KVDType: tensor.Q8_0})
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "multiple of 32") || !strings.Contains(err.Error(), "bf16") {
		t.Fatalf("loading a head size 16 model with a Q8_0 KV cache: %v", err)
	}
	m := loadForKV(t, tensor.Q8_0)
	st := m.NewState()
	forward1(t, m, st, randTokens(rand.New(rand.NewPCG(5, 6)), 5, m.Cfg.VocabSize), false)
	if err := st.Validate(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := st.Encode(&buf, m.Cfg); err != nil {
		t.Fatal(err)
	}
	small := loadFixtureF32(t)
	b := buf.Bytes()
	binary.LittleEndian.PutUint32(b[8:], Fingerprint(small.Cfg)) // get past the fingerprint check
	if _, err := DecodeState(b, small.Cfg); !errors.Is(err, ErrState) {
		t.Fatalf("a Q8_0 state into a head size 16 model: %v", err)
	}
	// Token 1's first key scale, f16 +inf (0x7c00): in the keys' 16-row
	// groups the first block's 16 scales lead, row 1's at byte 2.
	st.KV[0].pages[0].q8[2] = 0x00
	st.KV[0].pages[0].q8[3] = 0x7c
	if err := st.Validate(); err == nil {
		t.Fatal("an infinite key scale was accepted")
	}
}

// quantizeKVQ80 follows llama.cpp's x86 quantize_row_q8_0 on hand-made
// blocks: d = amax/127 as f16, q = x·127/amax rounded to nearest even (ties
// go to the even code, where tensor.QuantizeQ8_0 rounds them away from zero),
// and a block of zeros is d = 0, q = 0.
func TestQuantizeKVQ80(t *testing.T) {
	x := make([]float32, 64)
	x[0] = 127 // amax 127: id 1, so each value is its own code
	x[1], x[2], x[3], x[4], x[5] = 2.5, 3.5, -2.5, -0.5, 126.49
	// block 1: all zeros
	blk := make([]byte, 2*tensor.Q8_0BlockBytes)
	quantizeKVQ80(blk, x)
	if d := tensor.F16ToF32(binary.LittleEndian.Uint16(blk)); d != tensor.F16ToF32(tensor.F32ToF16(1)) {
		t.Fatalf("scale %g, want 1", d)
	}
	for i, want := range []int8{127, 2, 4, -2, 0, 126} {
		if q := int8(blk[2+i]); q != want {
			t.Errorf("value %g: code %d, want %d", x[i], q, want)
		}
	}
	for i, b := range blk[tensor.Q8_0BlockBytes:] {
		if b != 0 {
			t.Fatalf("zero block: byte %d is %#x", i, b)
		}
	}
}

// A KV head's query heads attended together in one task (a page read once
// for all of them) give each row the bits it gets alone (one head, one row),
// for every KV element type: the products are batch-invariant and the
// softmax is per row, so the task's grouping is free to follow the threads.
func TestAttentionGroupedHeadsSameBits(t *testing.T) {
	forKVDTypes(t, func(t *testing.T, dt tensor.DType) {
		const nq, nkv, hd = 12, 4, 64
		for _, c := range []struct{ pos0, T int }{{0, 1}, {0, PageTokens + 70}, {2*PageTokens + 5, 1}, {PageTokens - 9, 40}} {
			rng := rand.New(rand.NewPCG(uint64(c.pos0), uint64(c.T)))
			randn := func(n int) []float32 { return normals(rng, n) }
			kvd, qd, L := nkv*hd, nq*hd, c.pos0+c.T
			kv := newKVCacheOf(nkv, hd, dt)
			kv.Append(randn(L*kvd), randn(L*kvd), L)
			q := randn(c.T * qd)
			run := func(block, per int) []float32 { return attendRows(&kv, q, c.pos0, c.T, nq, hd, block, per, 0.125) }
			alone := run(1, 1)
			for _, g := range []struct{ block, per int }{{attnBlock, nq / nkv}, {attnBlock, 1}, {1, nq / nkv}} {
				if n, d := sameBits(run(g.block, g.per), alone); n != 0 {
					t.Fatalf("pos0 %d, %d rows, blocks of %d rows and %d heads: %d values differ from rows alone (by up to %.3g)", c.pos0, c.T, g.block, g.per, n, d)
				}
			}
		}
	})
}
