package grammar

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

var (
	bigOnce  sync.Once
	bigVocab *Vocab
)

// vocab100K is the synthetic 100,352-token vocabulary of the benchmarks (the
// size of Granite's).
func vocab100K() *Vocab {
	bigOnce.Do(func() { bigVocab = synthVocab(100352) })
	return bigVocab
}

// greedy tokenises s by longest match.
func greedy(tb testing.TB, v *Vocab, s string) []int {
	ids := map[string]int{}
	for i, t := range v.tokens {
		if !v.special[i] && len(t) > 0 {
			if _, ok := ids[string(t)]; !ok {
				ids[string(t)] = i
			}
		}
	}
	var out []int
	for len(s) > 0 {
		n := min(len(s), 64)
		for ; n > 0; n-- {
			if id, ok := ids[s[:n]]; ok {
				out = append(out, id)
				break
			}
		}
		if n == 0 {
			tb.Fatalf("no token for %q", s)
		}
		s = s[n:]
	}
	return out
}

func matcherAt(tb testing.TB, g *Grammar, v *Vocab, prefix string) *Matcher {
	mt := g.NewMatcher(v)
	for _, id := range greedy(tb, v, prefix) {
		if err := mt.Accept(id); err != nil {
			tb.Fatalf("prefix %q: %v", prefix, err)
		}
	}
	return mt
}

// benchStates are automaton states of the person schema, by the prefix that
// reaches them.
var benchStates = []struct{ name, prefix string }{
	{"start", ``},
	{"in-string", `{"name": "Ada Lo`},
	{"after-key", `{"name"`},
	{"after-colon", `{"name":`},
	{"in-number", `{"name": "Ada", "age": 3`},
	{"after-comma", `{"name": "Ada", "age": 36,`},
}

// BenchmarkMask100K: a mask over 100K tokens computed by the trie walk (cold:
// a cache miss) and taken from the cache and applied (warm).
func BenchmarkMask100K(b *testing.B) {
	v := vocab100K()
	g := mustGrammar(b, testSchemas[0].schema)
	for _, st := range benchStates {
		mt := matcherAt(b, g, v, st.prefix)
		b.Run("cold/"+st.name, func(b *testing.B) {
			var e *maskEntry
			for b.Loop() {
				e = mt.compute()
			}
			b.ReportMetric(float64(e.allowed), "allowed")
		})
		b.Run("warm/"+st.name, func(b *testing.B) {
			logits := make([]float32, v.n)
			mt.Mask(logits)
			for b.Loop() {
				mt.entry = nil // look the state up in the cache every time
				mt.Mask(logits)
			}
		})
	}
}

const benchDoc = `{
  "name": "Ada Lovelace, Countess of Lovelace",
  "age": 36,
  "email": null,
  "tags": ["mathematician", "writer", "analyst"],
  "address": {"street": "12 St James's Square, London", "zip": "SW1Y 4JH"},
  "score": 99.5,
  "ok": true
}`

// BenchmarkDecodeLoop: one document of the person schema decoded greedily
// from synthetic logits (noise plus a boost for the document's next token),
// as argmax alone and as copy+Mask+argmax+Accept (what the decoder does). It
// reports both per token and their ratio. "warm" shares one grammar (its cache
// warm after the first document); "cold" compiles the schema every document,
// so every mask is computed.
func BenchmarkDecodeLoop(b *testing.B) {
	v := vocab100K()
	target := append(greedy(b, v, benchDoc), v.eos)
	rng := rand.New(rand.NewPCG(5, 6))
	rows := make([][]float32, 8)
	for i := range rows {
		rows[i] = make([]float32, v.n)
		for j := range rows[i] {
			rows[i][j] = rng.Float32() * 10
		}
	}
	argmax := func(l []float32) int {
		best := 0
		for i, x := range l {
			if x > l[best] {
				best = i
			}
		}
		return best
	}
	logits := make([]float32, v.n)
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run(name, func(b *testing.B) {
			shared := mustGrammar(b, testSchemas[0].schema)
			var plain, constrained time.Duration
			for b.Loop() {
				t0 := time.Now()
				for i, want := range target {
					row := rows[i%len(rows)]
					copy(logits, row)
					logits[want] = 20
					if argmax(logits) != want {
						b.Fatal("argmax")
					}
				}
				t1 := time.Now()
				g := shared
				if cold {
					g = mustGrammar(b, testSchemas[0].schema)
				}
				mt := g.NewMatcher(v)
				for i, want := range target {
					row := rows[i%len(rows)]
					copy(logits, row)
					logits[want] = 20
					mt.Mask(logits)
					if tok := argmax(logits); tok != want {
						b.Fatalf("token %d: got %d %q, want %d %q", i, tok, v.tokens[tok], want, v.tokens[want])
					}
					if err := mt.Accept(want); err != nil {
						b.Fatal(err)
					}
				}
				plain += t1.Sub(t0)
				constrained += time.Since(t1)
			}
			n := float64(b.N * len(target))
			b.ReportMetric(float64(plain.Microseconds())/n, "argmax-µs/token")
			b.ReportMetric(float64(constrained.Microseconds())/n, "masked-µs/token")
			b.ReportMetric(float64(constrained)/float64(plain), "ratio")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkNewVocab100K: building the trie of a 100K vocabulary (once per model).
func BenchmarkNewVocab100K(b *testing.B) {
	v := vocab100K()
	for b.Loop() {
		NewVocab(v.tokens, v.special, v.eos)
	}
}
