package trunknode

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// fixtureGGUF is the fixture's float32 twin: with float32 weights every
// product is the same whatever the rows batched with it, so a resumed prefill
// can be held to bitwise equality.
func fixtureGGUF(t testing.TB) string {
	return filepath.Join(fixtureHF(t), "..", "model.gguf")
}

// recorder wraps the model and keeps the logits of every sampled position,
// per state.
type recorder struct {
	m      Forwarder
	mu     sync.Mutex
	logits map[*hybrid.State][][]float32
}

func (r *recorder) keep(batch []hybrid.Seq) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range batch {
		if !s.NoLogits && s.Err == nil {
			r.logits[s.State] = append(r.logits[s.State], slices.Clone(s.Logits))
		}
	}
}

func (r *recorder) ForwardOn(e hybrid.ExpertBackend, batch []hybrid.Seq) error {
	err := r.m.ForwardOn(e, batch)
	r.keep(batch)
	return err
}

func (r *recorder) ForwardPingPongOn(e hybrid.ExpertBackend, a, b []hybrid.Seq) error {
	err := r.m.ForwardPingPongOn(e, a, b)
	r.keep(a)
	r.keep(b)
	return err
}

// prefixHarness is a trunk node's store and scheduler over the float32
// fixture, driven through the same start path as the public API.
type prefixHarness struct {
	n   *Node
	a   *api
	rec *recorder
}

func newPrefixHarness(t *testing.T, cacheBytes int64, edit func(*Config)) *prefixHarness {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ModelPath = fixtureGGUF(t)
	cfg.LocalExperts = true
	cfg.Limits.MaxContext = 4096
	cfg.Limits.MaxNewTokens = 64
	cfg.Memory = MemoryConfig{RecurrentBytes: 1 << 30, KVBytes: 1 << 30}
	cfg.PrefixCacheBytes = cacheBytes
	cfg.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{m: n.model, logits: map[*hybrid.State][][]float32{}}
	n.sched.deps.Model = rec
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.sched.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; n.Close() })
	return &prefixHarness{n: n, a: &api{n: n}, rec: rec}
}

type prefixResult struct {
	ids    []int
	logits [][]float32
	fin    *Final
}

// generate runs one stateless greedy request.
func (h *prefixHarness) generate(t *testing.T, prompt []int, maxTokens int) prefixResult {
	t.Helper()
	_, job, release, err := h.a.start(context.Background(), genArgs{prompt: prompt, maxTokens: int32(maxTokens), ignoreEOS: true, api: "generate"})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	toks, fin := drainJob(t, job)
	if fin.Err != nil {
		t.Fatal(fin.Err)
	}
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	return prefixResult{ids: toks, logits: h.rec.logits[job.sess.State], fin: fin}
}

// sameResult fails unless got is bitwise what want is.
func sameResult(t *testing.T, what string, got, want prefixResult) {
	t.Helper()
	if !slices.Equal(got.ids, want.ids) {
		t.Fatalf("%s: tokens %v, without the cache %v", what, got.ids, want.ids)
	}
	if len(got.logits) != len(want.logits) || len(got.logits) == 0 {
		t.Fatalf("%s: %d logit vectors, without the cache %d", what, len(got.logits), len(want.logits))
	}
	for i := range got.logits {
		for j := range got.logits[i] {
			if math.Float32bits(got.logits[i][j]) != math.Float32bits(want.logits[i][j]) {
				t.Fatalf("%s: step %d logit %d is %v, without the cache %v", what, i, j, got.logits[i][j], want.logits[i][j])
			}
		}
	}
}

// checkpointsIntact recomputes every checkpoint's prefix from scratch and
// compares its state bitwise: sessions resumed from a checkpoint and
// appending to it never changed it.
func checkpointsIntact(t *testing.T, n *Node) {
	t.Helper()
	n.store.mu.Lock()
	var entries []*prefixEntry
	for _, e := range n.store.prefix.entries {
		entries = append(entries, e)
	}
	n.store.mu.Unlock()
	m := n.model
	for _, e := range entries {
		st := m.NewState()
		toks := make([]int, len(e.tokens))
		for i, x := range e.tokens {
			toks[i] = int(x)
		}
		if err := m.Forward([]hybrid.Seq{{State: st, Tokens: toks, NoLogits: true}}); err != nil {
			t.Fatal(err)
		}
		if !sameState(st, e.state) {
			t.Fatalf("checkpoint at %d no longer holds its prefix's state", e.state.Pos)
		}
	}
}

func sameState(a, b *hybrid.State) bool {
	if a.Pos != b.Pos {
		return false
	}
	eq := func(x, y []float32) bool {
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
				return false
			}
		}
		return len(x) == len(y)
	}
	for i := range a.Conv {
		if !eq(a.Conv[i], b.Conv[i]) || !eq(a.SSM[i], b.SSM[i]) {
			return false
		}
	}
	for i := range a.KV {
		d := 2 * 16 * 4 // ample for the fixture's kv width
		ka, va, kb, vb := make([]float32, d), make([]float32, d), make([]float32, d), make([]float32, d)
		for tok := range a.Pos {
			a.KV[i].Row(tok, ka, va)
			b.KV[i].Row(tok, kb, vb)
			if !eq(ka, kb) || !eq(va, vb) {
				return false
			}
		}
	}
	return true
}

func cat(parts ...[]int) []int {
	var out []int
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// A stateless request resumed from a prefix checkpoint gives exactly the
// tokens and the logits of a full prefill (float32 weights, local experts),
// reports the reused tokens as cached, and never changes the checkpoint.
func TestPrefixCacheMatchesFullPrefill(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	vocab := 456 // below the end-of-text id
	tokens := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = r.IntN(vocab)
		}
		return out
	}
	sys700, sys300, doc, long, p257 := tokens(700), tokens(300), tokens(600), tokens(1300), tokens(257)
	turn2 := cat(doc, tokens(300))
	cases := []struct {
		name    string
		every   int // checkpoint every this many blocks
		prompts [][]int
		cached  []int // Usage.cached_tokens per request
	}{
		{"repeated prompt", 0, [][]int{doc, doc}, []int{0, 512}},
		{"shared prefix ends mid-block, requests diverge", 0,
			[][]int{cat(sys300, tokens(40)), cat(sys300, tokens(40)), cat(sys300, tokens(45))}, []int{0, 256, 256}},
		{"system prompt seen twice, then resumed", 0,
			[][]int{cat(sys700, tokens(100)), cat(sys700, tokens(100)), cat(sys700, tokens(100)), cat(sys700, tokens(90))}, []int{0, 0, 512, 512}},
		{"conversation sent statelessly, turn by turn", 0,
			[][]int{doc, turn2, cat(turn2, tokens(200))}, []int{0, 512, 768}},
		{"one token after the block", 0, [][]int{p257, cat(p257[:256], tokens(1))}, []int{0, 256}},
		{"prompt shorter than a block", 0, [][]int{doc[:100], doc[:100]}, []int{0, 0}},
		{"long prompt checkpointed every two blocks", 2,
			[][]int{long, cat(long[:1100], tokens(50))}, []int{0, 1024}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			on := newPrefixHarness(t, 1<<30, nil)
			on.n.store.EnablePrefixCache(PrefixConfig{Bytes: 1 << 30, Every: tc.every})
			off := newPrefixHarness(t, 0, nil)
			for i, p := range tc.prompts {
				got, want := on.generate(t, p, 6), off.generate(t, p, 6)
				sameResult(t, "request "+string(rune('1'+i)), got, want)
				if got.fin.CachedTokens != tc.cached[i] || got.fin.PromptTokens != len(p) {
					t.Fatalf("request %d: usage cached %d prompt %d, want cached %d prompt %d", i+1, got.fin.CachedTokens, got.fin.PromptTokens, tc.cached[i], len(p))
				}
				if want.fin.CachedTokens != 0 {
					t.Fatalf("request %d without the cache reports %d cached tokens", i+1, want.fin.CachedTokens)
				}
			}
			checkpointsIntact(t, on.n)
			st := on.n.store.PrefixStats()
			hits, saved := 0, 0
			for _, c := range tc.cached {
				if c > 0 {
					hits++
					saved += c
				}
			}
			if int(st.Hits) != hits || int(st.SavedTokens) != saved {
				t.Fatalf("stats %+v, want %d hits saving %d tokens", st, hits, saved)
			}
		})
	}
}

// Requests sharing a prefix and running at once (batched, resuming while
// others still write checkpoints) each give what they give without the cache.
func TestPrefixCacheConcurrentRequests(t *testing.T) {
	on := newPrefixHarness(t, 1<<30, nil)
	off := newPrefixHarness(t, 0, nil)
	r := rand.New(rand.NewPCG(33, 34))
	sys := make([]int, 600)
	for i := range sys {
		sys[i] = r.IntN(456)
	}
	var prompts [][]int
	for i := range 8 {
		p := slices.Clone(sys)
		for range 20 + 7*i {
			p = append(p, r.IntN(456))
		}
		prompts = append(prompts, p)
	}
	on.generate(t, prompts[0], 4) // leaves the checkpoint at 512
	got := make([]prefixResult, len(prompts))
	var wg sync.WaitGroup
	for i, p := range prompts {
		wg.Go(func() { got[i] = on.generate(t, p, 8) })
	}
	wg.Wait()
	for i, p := range prompts {
		sameResult(t, "request", got[i], off.generate(t, p, 8))
		if got[i].fin.CachedTokens != 512 {
			t.Errorf("request %d: %d cached tokens, want 512", i, got[i].fin.CachedTokens)
		}
	}
	checkpointsIntact(t, on.n)
	if _, rec, kv := on.n.store.Usage(); rec != on.n.store.PrefixStats().RecurrentBytes || kv != on.n.store.PrefixStats().KVBytes {
		t.Fatalf("idle node holds %d + %d bytes, its checkpoints %+v", rec, kv, on.n.store.PrefixStats())
	}
}

// With budgets too small to keep the checkpoints, evicted or never stored,
// every request still gives what it gives without the cache, and the memory a
// checkpoint held goes back to the budget when it is evicted.
func TestPrefixCacheEvictionKeepsResults(t *testing.T) {
	probe := newPrefixHarness(t, 0, nil)
	rec := probe.n.size.RecurrentBytes
	pages := 2 * hybrid.PageTokens * probe.n.kvPerToken // a checkpoint at 512 tokens
	r := rand.New(rand.NewPCG(35, 36))
	tokens := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = r.IntN(456)
		}
		return out
	}
	docA, docB := tokens(600), tokens(600)
	cases := []struct {
		name       string
		cacheBytes int64
		recBudget  int64
		holdBefore int // hold a session before this request (0: never)
		prompts    [][]int
		cached     []int
		evicted    uint64 // for the cache's budget
		yielded    uint64 // to sessions
		entries    int    // at the end
	}{
		{"cache fits one checkpoint", rec + pages, 1 << 30, 0,
			[][]int{cat(docA, tokens(9)), cat(docB, tokens(9)), cat(docA, tokens(9)), cat(docA, tokens(9))}, []int{0, 0, 0, 512}, 2, 0, 1},
		{"cache smaller than a checkpoint", rec, 1 << 30, 0,
			[][]int{cat(docA, tokens(9)), cat(docA, tokens(9))}, []int{0, 0}, 0, 0, 0},
		{"sessions take the room back", 1 << 30, 2 * rec, 2,
			[][]int{cat(docA, tokens(9)), cat(docA, tokens(9))}, []int{0, 0}, 0, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			budgets := func(c *Config) { c.Memory.RecurrentBytes = tc.recBudget }
			on := newPrefixHarness(t, tc.cacheBytes, budgets)
			off := newPrefixHarness(t, 0, budgets)
			store := on.n.store
			for i, p := range tc.prompts {
				if i+1 == tc.holdBefore {
					// The idle node holds exactly its checkpoints.
					st := store.PrefixStats()
					if _, rec, kv := store.Usage(); rec != st.RecurrentBytes || kv != st.KVBytes || st.Entries == 0 {
						t.Fatalf("before pressure: usage %d + %d, checkpoints %+v", rec, kv, st)
					}
					if _, err := store.Create(false); err != nil {
						t.Fatal(err)
					}
				}
				got, want := on.generate(t, p, 4), off.generate(t, p, 4)
				sameResult(t, "request", got, want)
				if got.fin.CachedTokens != tc.cached[i] {
					t.Fatalf("request %d: %d cached tokens, want %d", i+1, got.fin.CachedTokens, tc.cached[i])
				}
			}
			st := store.PrefixStats()
			if st.Evictions != tc.evicted || st.Yielded != tc.yielded || st.Entries != tc.entries {
				t.Fatalf("stats %+v, want %d evicted, %d yielded, %d left", st, tc.evicted, tc.yielded, tc.entries)
			}
			if st.RecurrentBytes+st.KVBytes > tc.cacheBytes {
				t.Fatalf("checkpoints hold %d bytes, the cache may hold %d", st.RecurrentBytes+st.KVBytes, tc.cacheBytes)
			}
			// What is in use is the held sessions (no tokens) and the checkpoints left.
			held := 0
			if tc.holdBefore > 0 {
				held = 1
			}
			n, rec, kv := store.Usage()
			if n != held || rec != int64(held)*probe.n.size.RecurrentBytes+st.RecurrentBytes || kv != st.KVBytes {
				t.Fatalf("usage %d sessions, %d + %d bytes; checkpoints %+v", n, rec, kv, st)
			}
			if st.Entries > 0 {
				checkpointsIntact(t, on.n)
			}
		})
	}
}

// The store's accounting with checkpoints: a shared page counts once, a
// resumed session reserves only the pages it adds, and a checkpoint's memory
// returns to the budget when it is evicted for a session.
func TestStorePrefixAccounting(t *testing.T) {
	c, err := config.Load(filepath.Join(fixtureHF(t), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	kvPer := int64(2*c.KVDim()*4) * int64(c.NumLayers(config.Attention))
	page := int64(hybrid.PageTokens) * kvPer
	rec := hybrid.SizeOf(c).RecurrentBytes
	store := NewStore(MemoryConfig{RecurrentBytes: 1 << 40, KVBytes: 8 * page}, func() *hybrid.State { return hybrid.NewState(c) }, rec, kvPer)
	store.EnablePrefixCache(PrefixConfig{Bytes: 1 << 40})
	grow := func(st *hybrid.State, n int) { // what the engine does
		kv := make([]float32, n*c.KVDim())
		for i := range st.KV {
			st.KV[i].Append(kv, kv, n)
		}
		st.Pos += n
	}
	usage := func(wantRec, wantKV int64, when string) {
		t.Helper()
		if _, r, kv := store.Usage(); r != wantRec || kv != wantKV {
			t.Fatalf("%s: usage %d + %d bytes, want %d + %d", when, r, kv, wantRec, wantKV)
		}
	}
	prompt := make([]int, 600)
	for i := range prompt {
		prompt[i] = i % 400
	}

	// The first request leaves a checkpoint at 512 and goes.
	a, _ := store.CreateFor("", true)
	if skip := store.ResumePrefix(a, prompt); skip != 0 || !slices.Equal(a.prefix.marks, []int{512}) {
		t.Fatalf("first request: skip %d, marks %v", skip, a.prefix.marks)
	}
	if err := store.Acquire(a, 600+4); err != nil {
		t.Fatal(err)
	}
	usage(rec, 3*page, "reserved")
	grow(a.State, 512)
	store.checkpoint(a.prefix, a.State)
	usage(2*rec, 3*page, "checkpoint taken (its pages are the session's)")
	grow(a.State, 88+4)
	store.Release(a)
	usage(rec, 2*page, "first request done: the checkpoint's pages stay")

	// The second resumes: it shares the checkpoint's pages and reserves one more.
	b, _ := store.CreateFor("", true)
	if skip := store.ResumePrefix(b, prompt); skip != 512 || b.State.Pos != 512 {
		t.Fatalf("second request: skip %d, pos %d", skip, b.State.Pos)
	}
	usage(2*rec, 2*page, "resumed (pages shared, counted once)")
	if err := store.Acquire(b, 88+4); err != nil {
		t.Fatal(err)
	}
	usage(2*rec, 3*page, "reserved the rest")
	grow(b.State, 88+4)
	usage(2*rec, 3*page, "rest prefilled")
	store.Release(b)
	usage(rec, 2*page, "second request done")

	// A session that needs the whole KV budget evicts the checkpoint.
	s, _ := store.Create(false)
	if err := store.Acquire(s, 8*hybrid.PageTokens); err != nil {
		t.Fatalf("the cache did not yield: %v", err)
	}
	usage(rec, 8*page, "the cache yielded")
	if st := store.PrefixStats(); st.Entries != 0 || st.Yielded != 1 || st.KVBytes != 0 || st.RecurrentBytes != 0 {
		t.Fatalf("after yielding: %+v", st)
	}
	store.Release(s)
	usage(rec, 0, "released")
}

// The public API reports the reused tokens and the metrics count them.
func TestPrefixCacheAPIAndMetrics(t *testing.T) {
	c, n := startLocal(t, func(cfg *Config) {
		cfg.ModelPath = fixtureGGUF(t)
		cfg.Limits.MaxContext = 2048
		cfg.PrefixCacheBytes = 1 << 30
	})
	r := rand.New(rand.NewPCG(37, 38))
	prompt := make([]int, 700)
	for i := range prompt {
		prompt[i] = r.IntN(456)
	}
	var res []genResult
	for range 2 {
		res = append(res, generate(t, c, &pb.GenerateRequest{Input: &pb.GenerateRequest_TokenIds{TokenIds: ids(prompt)}, MaxTokens: 5, IgnoreEos: true, Logprobs: true}))
	}
	for i, g := range res {
		if g.status != nil {
			t.Fatal(g.status)
		}
		if want := int32(512 * i); g.final.Usage.CachedTokens != want || g.final.Usage.PromptTokens != int32(len(prompt)) {
			t.Fatalf("request %d usage %v, want %d cached", i+1, g.final.Usage, want)
		}
	}
	if !slices.Equal(res[0].ids, res[1].ids) || !slices.Equal(res[0].logps, res[1].logps) {
		t.Fatalf("resumed %v %v, full %v %v", res[1].ids, res[1].logps, res[0].ids, res[0].logps)
	}
	reg := n.Registry()
	for name, want := range map[string]float64{
		"switchyard_prefix_cache_lookups_total":      2,
		"switchyard_prefix_cache_hits_total":         1,
		"switchyard_prefix_cache_saved_tokens_total": 512,
		"switchyard_prefix_cache_inserts_total":      1,
		"switchyard_prefix_cache_entries":            1,
	} {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != 1 {
			t.Fatalf("%s: %d series (%v)", name, got, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			m := mf.GetMetric()[0]
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if v != want {
				t.Fatalf("%s = %v, want %v", name, v, want)
			}
		}
	}
	if got, _ := testutil.GatherAndCount(reg, "switchyard_prefix_cache_bytes"); got != 2 {
		t.Fatalf("switchyard_prefix_cache_bytes: %d series, want recurrent and kv", got)
	}
}
