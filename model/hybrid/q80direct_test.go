package hybrid

import (
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// TestLlamaCppQ8_0Direct checks the logits of a Q8_0 model against
// llama.cpp's on the same file evaluated directly (granite-tiny-q8_0: the
// shared fixture quantized by llama.cpp's llama_model_quantize to file type
// Q8_0, all 53 matrices Q8_0; see ../gguf/testdata/README.md). For Q8_0
// weights llama.cpp's CPU matmuls quantize the activations to q8_0 (8 bits
// per 32 values, an f16 scale) in every product, decode included; so does
// Switchyard at the avx512 level on CPUs with AVX-512 VNNI and at the avx2
// level (kernels.SetQ8Activations, on by default), at every row count.
// Every kernel level runs, F32 KV cache; the avx2 and avx512 levels with
// 8-bit activations off and on. Three ways of running each prompt:
//
//   - batched: the prompt in one Forward call, logits at every position;
//   - token by token: one Forward call per token (one input row);
//   - 8 copies: 8 sequences of the same prompt in one Forward call.
//
// Measured (AMD EPYC Zen 4; logits up to 16.3 in size, std 4.0), max abs diff
// from llama.cpp over the three prompts (1, 7 and 42 tokens; 50 positions):
//
//	float activations (ref, go, avx2; avx512 with
//	  8-bit activations off), every way:                  4.45
//	  (prompts of 1, 7 and 42 tokens: 0.88, 4.45, 2.0)
//	8-bit activations (avx2, avx512), every way:          0.12
//	  (42-token prompt 1.9e-6, 1-token 9.5e-7; 7-token
//	  1.9e-6 but at its last position 0.12, a tie)
//
// With float activations the difference is llama.cpp's activation
// quantization (the float path is within 3.1e-5 of llama.cpp's logits on the
// same weights dequantized to F32, at every level): tolFloat. It is large on
// this tiny model (4.45 at position 5 of the 7-token prompt; 0.88 already at
// the first token).
//
// With 8-bit activations the logits are llama.cpp's to float rounding
// (1.9e-6), but for the last position of the 7-token prompt: there the scale
// of one activation block, amax/127 at the input of layer 1's ssm_out, lies
// 8.5e-4 of an f16 step from an f16 rounding tie (a few float32 ulps of
// amax), and rounds the other way than llama.cpp's (forcing it to the other
// f16 value gives 9.5e-7 there). Where such ties fall moves with any change
// of float rounding: llama.cpp's own x64 build (scalar quantization: x·(1/d)
// for x·127/amax, halves away from zero) agrees with its haswell build to
// 2e-6 on the 42-token prompt up to position 16, and is 0.15-1.14 away from
// position 17 on. So each prompt may have one position beyond tolTight
// (1e-4: 50 times the measured float-rounding agreement), within tolTie
// (about two flips of 0.12), and the 8-bit path must be at least 20 times
// closer to llama.cpp than the float path (measured 36 times).
func TestLlamaCppQ8_0Direct(t *testing.T) {
	testLlamaCppQ80Direct(t, "granite-tiny-q8_0.json", map[gguf.GGMLType]int{gguf.GGMLTypeQ8_0: 53, gguf.GGMLTypeF32: 43},
		q80DirectTols{float: 6.0, tight: 1e-4, tie: 0.25, beyond: 1, closer: 20})
}

// q80DirectTols are the tolerances of testLlamaCppQ80Direct: float bounds
// the float32 activations' max abs diff from llama.cpp; with 8-bit
// activations each prompt may have beyond positions past tight, all within
// tie, and the 8-bit path must be closer times closer than the float path.
type q80DirectTols struct {
	float, tight, tie float64
	beyond            int
	closer            float64
}

// testLlamaCppQ80Direct runs a model of the Q8_0 family from
// ../gguf/testdata (index: its llama.cpp reference) with the tensor types
// of types, at every kernel level, three ways, mapped and copied, against
// llama.cpp's logits (see TestLlamaCppQ8_0Direct). With 8-bit activations
// the avx2 level runs the integer kernels too (since session 13), so it is
// held to the same tolerances as avx512.
func testLlamaCppQ80Direct(t *testing.T, index string, types map[gguf.GGMLType]int, tol q80DirectTols) {
	const copies = 8
	tolFloat, tolTight, tolTie, closer := tol.float, tol.tight, tol.tie, tol.closer
	ref, want := readLlamaRef(t, index)
	path := filepath.Join(quantDir, ref.Model)
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	have := map[gguf.GGMLType]int{}
	for _, ti := range f.Tensors() {
		have[ti.Type]++
	}
	f.Close()
	if !maps.Equal(have, types) {
		t.Fatalf("fixture is not what the test expects: types %v, want %v", have, types)
	}

	m := openDirect(t, path, ref.VocabSize)
	// The same file copied into memory (the servers' default): its matrices
	// packed in 16-row groups where the CPU has those kernels, which must
	// give the mapped model's logits bit for bit.
	mc := openDirectWith(t, path, ref.VocabSize, LoadOptions{KVDType: tensor.F32, NoMmap: true})
	if in := m.W.Layers[0].Mamba.InProj; kernels.CanPack(in) && mc.W.Layers[0].Mamba.InProj.Layout == tensor.RowMajor {
		t.Fatalf("copied model: in_proj (%v) not packed on a CPU with the packed kernels", in.DType)
	}
	V := m.Cfg.VocabSize
	prevQ8 := kernels.SetQ8Activations(true)
	defer kernels.SetQ8Activations(prevQ8)

	// result is one run over the prompts, each run three ways (batched, token
	// by token, as copies): per way, the max abs diff from llama.cpp of each
	// prompt at each position (as copies: the largest over the copies), and
	// every logit computed.
	const (
		batched = iota
		decode
		asCopies
		ways
	)
	wayNames := [ways]string{"batched", "token by token", fmt.Sprintf("as %d copies", copies)}
	type result struct {
		pos    [ways][][]float64
		logits [ways][]float32
	}
	run := func(m *Model) result {
		var r result
		for _, p := range ref.Prompts {
			n := len(p.TokenIDs)
			exp := want[p.Offset : p.Offset+n*V]
			diffs := func(logits []float32) []float64 {
				d := make([]float64, n)
				for i := range d {
					d[i] = maxAbs(logits[i*V:(i+1)*V], exp[i*V:(i+1)*V])
				}
				return d
			}

			seq := []Seq{{State: m.NewState(), Tokens: p.TokenIDs, AllLogits: true}}
			if err := m.Forward(seq); err != nil {
				t.Fatal(err)
			}
			r.pos[batched] = append(r.pos[batched], diffs(seq[0].Logits))
			r.logits[batched] = append(r.logits[batched], seq[0].Logits[:n*V]...)

			st := m.NewState()
			var all []float32
			for _, tok := range p.TokenIDs {
				seq := []Seq{{State: st, Tokens: []int{tok}}}
				if err := m.Forward(seq); err != nil {
					t.Fatal(err)
				}
				all = append(all, seq[0].Logits[:V]...)
			}
			r.pos[decode] = append(r.pos[decode], diffs(all))
			r.logits[decode] = append(r.logits[decode], all...)

			seqs := make([]Seq, copies)
			for c := range seqs {
				seqs[c] = Seq{State: m.NewState(), Tokens: p.TokenIDs, AllLogits: true}
			}
			if err := m.Forward(seqs); err != nil {
				t.Fatal(err)
			}
			worst := make([]float64, n)
			for _, s := range seqs {
				for i, d := range diffs(s.Logits) {
					worst[i] = math.Max(worst[i], d)
				}
				r.logits[asCopies] = append(r.logits[asCopies], s.Logits[:n*V]...)
			}
			r.pos[asCopies] = append(r.pos[asCopies], worst)
		}
		return r
	}
	// maxOf is the max abs diff of way w over the prompts that keep(prompt).
	maxOf := func(r result, w int, keep func(llamaPrompt) bool) float64 {
		var m float64
		for i, p := range ref.Prompts {
			if keep(p) {
				m = math.Max(m, slices.Max(r.pos[w][i]))
			}
		}
		return m
	}
	every := func(llamaPrompt) bool { return true }
	worstFloat := func(r result) float64 {
		return max(maxOf(r, batched, every), maxOf(r, decode, every), maxOf(r, asCopies, every))
	}
	for _, lvl := range kernels.SupportedLevels() {
		kernels.SetKernelLevel(lvl)
		// Below avx2 the setting changes nothing; at avx2 and avx512 the
		// float run comes first, to compare with.
		q8s := []bool{true}
		if lvl >= kernels.LevelAVX2 {
			q8s = []bool{false, true}
		}
		var float result
		for _, q8 := range q8s {
			kernels.SetQ8Activations(q8)
			r := run(m)
			rc := run(mc)
			for w := range ways {
				for i := range r.logits[w] {
					if math.Float32bits(r.logits[w][i]) != math.Float32bits(rc.logits[w][i]) {
						t.Fatalf("level %v, 8-bit activations %v, %s: logit %d copied %g, mapped %g", lvl, q8, wayNames[w], i, rc.logits[w][i], r.logits[w][i])
					}
				}
			}
			// The integer kernels ran if the logits changed.
			ints := q8 && lvl >= kernels.LevelAVX2 && !slices.Equal(r.logits[asCopies], float.logits[asCopies])
			name := fmt.Sprintf("level %v, 8-bit activations %v", lvl, ints)
			if q8 && lvl >= kernels.LevelAVX2 && !ints {
				name += " (no integer kernels on this CPU)"
			}
			beyondAll := map[string][]int{}
			for w := range ways {
				for i, p := range ref.Prompts {
					pos := r.pos[w][i]
					d := slices.Max(pos)
					where := fmt.Sprintf("%s, %s %s", name, p.Name, wayNames[w])
					if !ints {
						if d > tolFloat {
							t.Errorf("%s: max abs diff %.3g > %g", where, d, tolFloat)
						}
						continue
					}
					// llama.cpp's logits to float rounding, but for a
					// rounding tie.
					var beyond []int
					for j, dj := range pos {
						if dj > tolTight {
							beyond = append(beyond, j)
						}
					}
					if len(beyond) > 0 {
						beyondAll[p.Name+" "+wayNames[w]] = beyond
					}
					if len(beyond) > tol.beyond || d > tolTie {
						t.Errorf("%s: positions %v beyond %g (at most %d allowed, within %g), max abs diff %.3g",
							where, beyond, tolTight, tol.beyond, tolTie, d)
					}
				}
			}
			var per [ways][]float64
			for w := range ways {
				for i := range ref.Prompts {
					per[w] = append(per[w], slices.Max(r.pos[w][i]))
				}
			}
			t.Logf("%s: max abs diff batched %.2g, token by token %.2g, as %d copies %.2g",
				name, per[batched], per[decode], copies, per[asCopies])
			if !q8 {
				float = r
				continue
			}
			if !ints {
				continue
			}
			t.Logf("%s: positions beyond %g: %v", name, tolTight, beyondAll)
			fw := worstFloat(float)
			for w := range ways {
				if q := maxOf(r, w, every); q*closer > fw {
					t.Errorf("%s: %s %.3g from llama.cpp, not %g times closer than the float path (%.3g)", name, wayNames[w], q, closer, fw)
				}
			}
			t.Logf("%s: closer to llama.cpp than the float path (%.3g) %.3g times", name, fw, fw/max(maxOf(r, batched, every), maxOf(r, decode, every), maxOf(r, asCopies, every)))
		}
	}
}

// TestLlamaCppQ40FamilyDirect is TestLlamaCppQ8_0Direct on the shared
// fixture quantized by llama.cpp to Q4_0, Q5_0 and IQ4_NL
// (granite-tiny-q4_0, -q5_0: 48 matrices of the type and 5 Q8_0, llama.cpp's
// mix; -iq4_nl: all 53, made with the pure parameter, since the mix keeps
// two Q5_1 whose q8_1 activations Switchyard does not reproduce): llama.cpp
// takes q8_0 activations for these weights, as Switchyard's Q8_0 integer
// path does at the avx2 and avx512 levels.
//
// Measured (AMD EPYC Zen 4), max abs diff from llama.cpp per prompt (1, 7
// and 42 tokens), the same batched, token by token and as 8 copies, at both
// levels:
//
//	          float activations   8-bit activations
//	Q4_0      0.94 1.4 1.1        1.9e-6 1.9e-6 1.9e-6 (every position)
//	Q5_0      1.0 7.3 3.6         1.9e-6 1.9e-6 0.15 (a tie at position 29 of
//	                              the 42-token prompt, carried to the end; at
//	                              avx512 position 9 too, within 0.15)
//	IQ4_NL    0.54 0.92 4.7       9.5e-7 1.9e-6 0.59 (a tie at position 38)
//
// and on the fixture quantized to MXFP4_MOE (granite-tiny-mxfp4_moe: the 18
// routed-expert matrices MXFP4, the other 35 Q8_0; llama.cpp takes q8_0
// activations for MXFP4 too), measured on AMD EPYC Zen 5:
//
//	          float activations   8-bit activations
//	MXFP4_MOE 1.3 2.1 1.0         avx512: 9.5e-7 1.9e-6 1.9e-6 (every
//	                              position); avx2: the same to position 34 of
//	                              the 42-token prompt, then a tie carried to
//	                              the end (1.4; the kernels themselves give
//	                              their twin's bits at both levels)
func TestLlamaCppQ40FamilyDirect(t *testing.T) {
	t.Run("Q4_0", func(t *testing.T) {
		testLlamaCppQ80Direct(t, "granite-tiny-q4_0.json", map[gguf.GGMLType]int{gguf.GGMLTypeQ4_0: 48, gguf.GGMLTypeQ8_0: 5, gguf.GGMLTypeF32: 43},
			q80DirectTols{float: 2.0, tight: 1e-4, tie: 0.25, beyond: 1, closer: 20})
	})
	t.Run("Q5_0", func(t *testing.T) {
		testLlamaCppQ80Direct(t, "granite-tiny-q5_0.json", map[gguf.GGMLType]int{gguf.GGMLTypeQ5_0: 48, gguf.GGMLTypeQ8_0: 5, gguf.GGMLTypeF32: 43},
			q80DirectTols{float: 10, tight: 1e-4, tie: 0.3, beyond: 14, closer: 20})
	})
	t.Run("IQ4_NL", func(t *testing.T) {
		testLlamaCppQ80Direct(t, "granite-tiny-iq4_nl.json", map[gguf.GGMLType]int{gguf.GGMLTypeIQ4_NL: 53, gguf.GGMLTypeF32: 43},
			q80DirectTols{float: 6.0, tight: 1e-4, tie: 1.0, beyond: 5, closer: 5})
	})
	t.Run("MXFP4_MOE", func(t *testing.T) {
		testLlamaCppQ80Direct(t, "granite-tiny-mxfp4_moe.json", map[gguf.GGMLType]int{gguf.GGMLTypeMXFP4: 18, gguf.GGMLTypeQ8_0: 35, gguf.GGMLTypeF32: 43},
			q80DirectTols{float: 3.0, tight: 1e-4, tie: 2.0, beyond: 8, closer: 1.2})
	})
}
