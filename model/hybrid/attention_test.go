package hybrid

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// attendRef is the plain twin of the paged attention: for each query row, a dot
// product with every visible key, a float64 softmax and a weighted sum of values,
// reading the cache token by token.
// normals returns n draws of a standard normal from rng.
func normals(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// attendRows runs attendBlock over the T query rows q ([T, nq·hd]) that
// follow pos0 tokens of kv, in blocks of block rows and tasks of per query
// heads, and returns the output rows.
func attendRows(kv *KVCache, q []float32, pos0, T, nq, hd, block, per int, scale float32) []float32 {
	qd := nq * hd
	att := make([]float32, T*qd)
	var ws attnScratch
	for t0 := 0; t0 < T; t0 += block {
		t1 := min(T, t0+block)
		for h := 0; h < nq; h += per {
			task := attnTask{kv: kv, pos0: pos0, t0: t0, t1: t1, h: h, nh: per, keysMax: pos0 + t1}
			attendBlock(&task, q, att, &ws, qd, hd, nq/kv.kvHeads, scale)
		}
	}
	return att
}

func attendRef(kv *KVCache, q []float32, pos0, T, nq, hd int, scale float32) []float32 {
	kvd := kv.kvHeads * hd
	rep := nq / kv.kvHeads
	out := make([]float32, T*nq*hd)
	keys := make([][]float32, kv.Len())
	vals := make([][]float32, kv.Len())
	for j := range keys {
		keys[j], vals[j] = make([]float32, kvd), make([]float32, kvd)
		kv.Row(j, keys[j], vals[j])
	}
	for t := range T {
		for h := range nq {
			kh := h / rep
			qh := q[(t*nq+h)*hd : (t*nq+h+1)*hd]
			L := pos0 + t + 1
			sc := make([]float64, L)
			mx := math.Inf(-1)
			for j := range L {
				var d float32
				for i, x := range qh {
					d += x * keys[j][kh*hd+i]
				}
				sc[j] = float64(d * scale)
				mx = math.Max(mx, sc[j])
			}
			var sum float64
			for j := range sc {
				sc[j] = math.Exp(sc[j] - mx)
				sum += sc[j]
			}
			o := out[(t*nq+h)*hd : (t*nq+h+1)*hd]
			for j := range L {
				for i := range o {
					o[i] += float32(sc[j] / sum * float64(vals[j][kh*hd+i]))
				}
			}
		}
	}
	return out
}

func TestPagedAttentionMatchesReference(t *testing.T) {
	cases := []struct {
		name           string
		pos0, T        int
		nq, nkv, hd    int
		stale, wantPgs int
	}{
		{"decode first token", 0, 1, 4, 2, 16, 0, 1},
		{"prefill within a page", 0, 70, 4, 4, 8, 0, 1},
		{"prefill across pages", 0, 2*PageTokens + 37, 6, 2, 16, 0, 3},
		{"continued prefill at a page edge", PageTokens - 3, 9, 4, 1, 32, 0, 2},
		{"decode deep in a context", 3*PageTokens + 11, 1, 8, 2, 16, 0, 4},
		{"after a reset", 5, 300, 4, 2, 16, 2*PageTokens + 100, 2},
		{"head_dim 72 (vector tails)", 2*PageTokens - 40, 90, 6, 3, 72, 0, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.T), uint64(c.pos0)))
			randn := func(n int) []float32 { return normals(rng, n) }
			kvd, qd := c.nkv*c.hd, c.nq*c.hd
			kv := newKVCache(c.nkv, c.hd)
			if c.stale > 0 { // a session that held more tokens (one of them NaN) and was reset
				k := randn(c.stale * kvd)
				k[len(k)-1] = float32(math.NaN())
				kv.Append(k, k, c.stale)
				kv.reset()
				if kv.Bytes() != 0 || len(kv.pages) != 0 {
					t.Fatalf("reset kept %d pages", len(kv.pages))
				}
			}
			kv.Append(randn(c.pos0*kvd), randn(c.pos0*kvd), c.pos0)
			kv.Append(randn(c.T*kvd), randn(c.T*kvd), c.T)
			if kv.PagesInUse() != c.wantPgs {
				t.Fatalf("%d pages in use, want %d", kv.PagesInUse(), c.wantPgs)
			}
			q := randn(c.T * qd)
			scale := float32(1 / math.Sqrt(float64(c.hd)))
			att := attendRows(&kv, q, c.pos0, c.T, c.nq, c.hd, attnBlock, 1, scale)
			want := attendRef(&kv, q, c.pos0, c.T, c.nq, c.hd, scale)
			worst := 0.0
			for i := range want {
				worst = math.Max(worst, math.Abs(float64(att[i]-want[i])))
			}
			if worst > 2e-5 {
				t.Fatalf("max abs difference %.3g", worst)
			}
		})
	}
}

// TestRunAttentionBatch runs a mixed batch (a prefill continuing a context, a
// decode row, a fresh prompt) through the parallel path and checks every row of
// the shared output against the reference.
func TestRunAttentionBatch(t *testing.T) {
	const nq, nkv, hd = 8, 2, 32
	qd, kvd := nq*hd, nkv*hd
	rng := rand.New(rand.NewPCG(5, 5))
	randn := func(n int) []float32 { return normals(rng, n) }
	seqs := []struct{ pos0, T int }{{300, 150}, {700, 1}, {0, 77}}
	kvs := make([]KVCache, len(seqs))
	N := 0
	for _, s := range seqs {
		N += s.T
	}
	q, att := randn(N*qd), make([]float32, N*qd)
	var sc scratch
	tasks := sc.attnTasks[:0]
	flops, r := 0, 0
	for i, s := range seqs {
		kvs[i] = newKVCache(nkv, hd)
		kvs[i].Append(randn((s.pos0+s.T)*kvd), randn((s.pos0+s.T)*kvd), s.pos0+s.T)
		for t0 := 0; t0 < s.T; t0 += attnBlock {
			t1 := min(s.T, t0+attnBlock)
			for h := range nq {
				tasks = append(tasks, attnTask{kv: &kvs[i], r: r, pos0: s.pos0, t0: t0, t1: t1, h: h, keysMax: s.pos0 + t1})
			}
			flops += 4 * (t1 - t0) * (s.pos0 + t1) * hd * nq
		}
		r += s.T
	}
	prev := kernels.Threads()
	kernels.SetThreads(2)
	defer kernels.SetThreads(prev)
	runAttention(&sc, tasks, flops, q, att, qd, hd, nq/nkv, 0.125)
	r = 0
	for i, s := range seqs {
		want := attendRef(&kvs[i], q[r*qd:(r+s.T)*qd], s.pos0, s.T, nq, hd, 0.125)
		for j, w := range want {
			if d := math.Abs(float64(att[r*qd+j] - w)); d > 2e-5 {
				t.Fatalf("sequence %d value %d: %v vs %v", i, j, att[r*qd+j], w)
			}
		}
		r += s.T
	}
	for _, tk := range tasks {
		if tk.kv != nil {
			t.Fatal("runAttention kept a cache pointer")
		}
	}
}

func TestKVCacheRowsRoundTrip(t *testing.T) {
	kv := newKVCache(3, 4)
	const n = PageTokens + 5
	k, v := make([]float32, n*12), make([]float32, n*12)
	for i := range k {
		k[i], v[i] = float32(i), -float32(i)
	}
	kv.Append(k[:7*12], v[:7*12], 7)
	kv.Append(k[7*12:], v[7*12:], n-7)
	gk, gv := make([]float32, 12), make([]float32, 12)
	for tok := range n {
		kv.Row(tok, gk, gv)
		for i := range 12 {
			if gk[i] != k[tok*12+i] || gv[i] != v[tok*12+i] {
				t.Fatalf("token %d value %d: got %v/%v", tok, i, gk[i], gv[i])
			}
		}
	}
	if kv.Bytes() != 2*PageTokens*12*2*4 {
		t.Fatalf("bytes %d", kv.Bytes())
	}
	cl := kv.clone(nil)
	kv.reset()
	if cl.Len() != n || kv.Len() != 0 || kv.Bytes() != 0 {
		t.Fatalf("clone %d tokens, reset %d tokens %d bytes", cl.Len(), kv.Len(), kv.Bytes())
	}
}

// BenchmarkPagedAttention is the attention of one 1024-row prefill chunk at the
// end of a context (H-Tiny's shape: 12 query heads, 4 KV heads of 128), and
// reports its rate against the machine's FMA peak on the same threads, for
// each KV element type.
func BenchmarkPagedAttention(b *testing.B) {
	peak := kernels.MeasureFMAPeak(kernels.Threads())
	for _, dt := range kvDTypes {
		for _, ctx := range []int{2048, 8192, 32768} {
			benchPagedAttention(b, dt, ctx, peak)
		}
	}
}

// BenchmarkPagedAttentionDecode is one decode step's attention (one query
// row, H-Tiny's 12 query heads over 4 KV heads of 128) at the end of a
// context, for each KV element type, and reports the rate at which it reads
// the cache's bytes: at long contexts decode attention streams the cache.
func BenchmarkPagedAttentionDecode(b *testing.B) {
	for _, dt := range kvDTypes {
		for _, ctx := range []int{2048, 8192, 32768} {
			for _, per := range []int{1, 3} { // H-Tiny: 3 query heads a KV head
				benchAttentionDecode(b, dt, ctx, per)
			}
		}
	}
}

// benchAttentionDecode is BenchmarkPagedAttentionDecode's case: per query
// heads a task (1: a task per query head; nq/nkv: per KV head).
func benchAttentionDecode(b *testing.B, dt tensor.DType, ctx, per int) {
	const nq, nkv, hd = 12, 4, 128
	b.Run(fmt.Sprintf("%v/ctx%d/heads%d", dt, ctx, per), func(b *testing.B) {
		rng := rand.New(rand.NewPCG(2, uint64(ctx)))
		randn := func(n int) []float32 { return normals(rng, n) }
		kv := newKVCacheOf(nkv, hd, dt)
		kv.Append(randn((ctx-1)*nkv*hd), randn((ctx-1)*nkv*hd), ctx-1)
		kv.Append(randn(nkv*hd), randn(nkv*hd), 1)
		q, att := randn(nq*hd), make([]float32, nq*hd)
		var sc scratch
		flops := 4 * ctx * hd * nq
		for b.Loop() {
			tasks := sc.attnTasks[:0]
			for h := 0; h < nq; h += per {
				tasks = append(tasks, attnTask{kv: &kv, pos0: ctx - 1, t0: 0, t1: 1, h: h, nh: per, keysMax: ctx})
			}
			sc.attnTasks = tasks
			runAttention(&sc, tasks, flops, q, att, nq*hd, hd, nq/nkv, 0.088)
		}
		b.ReportMetric(float64(kv.Bytes())*float64(b.N)/b.Elapsed().Seconds()/1e9, "cacheGB/s")
	})
}

func benchPagedAttention(b *testing.B, dt tensor.DType, ctx int, peak float64) {
	const nq, nkv, hd, T = 12, 4, 128, 1024
	b.Run(fmt.Sprintf("%v/ctx%d", dt, ctx), func(b *testing.B) {
		rng := rand.New(rand.NewPCG(1, uint64(ctx)))
		randn := func(n int) []float32 { return normals(rng, n) }
		kv := newKVCacheOf(nkv, hd, dt)
		kv.Append(randn(ctx*nkv*hd), randn(ctx*nkv*hd), ctx)
		q, att := randn(T*nq*hd), make([]float32, T*nq*hd)
		pos0 := ctx - T
		var sc scratch
		flops := 0
		for t0 := 0; t0 < T; t0 += attnBlock {
			flops += 4 * attnBlock * (pos0 + t0 + attnBlock) * hd * nq
		}
		for b.Loop() {
			tasks := sc.attnTasks[:0]
			for t0 := 0; t0 < T; t0 += attnBlock {
				for h := range nq {
					tasks = append(tasks, attnTask{kv: &kv, pos0: pos0, t0: t0, t1: t0 + attnBlock, h: h, keysMax: pos0 + t0 + attnBlock})
				}
			}
			sc.attnTasks = tasks
			runAttention(&sc, tasks, flops, q, att, nq*hd, hd, nq/nkv, 0.088)
		}
		rate := float64(flops) * float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(rate/1e9, "GFLOP/s")
		b.ReportMetric(rate/peak, "of-peak")
	})
}
