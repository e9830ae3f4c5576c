package grammar

import (
	"container/list"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestMaskMatchesReference: the trie walk with its shortcut and the cache
// give, at every step of random walks, the mask the reference twin gives.
func TestMaskMatchesReference(t *testing.T) {
	for _, v := range testVocabs() {
		for _, sc := range testSchemas {
			t.Run(sc.name, func(t *testing.T) {
				g := mustGrammar(t, sc.schema)
				for seed := range 6 {
					rng := rand.New(rand.NewPCG(uint64(seed), uint64(v.n)))
					randomWalk(t, g, v, rng, walkOpts{steps: 120, closeAt: 40, ref: true})
				}
			})
		}
	}
}

// TestRandomDocuments: sampling under the mask always ends (at EOS) with a
// document encoding/json accepts, that matches the schema and that Validate
// accepts.
func TestRandomDocuments(t *testing.T) {
	v := testVocabs()[0]
	seeds := 60
	if testing.Short() {
		seeds = 15
	}
	for _, sc := range testSchemas {
		t.Run(sc.name, func(t *testing.T) {
			g := mustGrammar(t, sc.schema)
			for seed := range seeds {
				rng := rand.New(rand.NewPCG(uint64(seed), 7))
				doc, ok := randomWalk(t, g, v, rng, walkOpts{steps: 3000, closeAt: 30 + seed*5})
				if !ok {
					t.Fatalf("seed %d: no end after 3000 tokens: %q", seed, doc)
				}
				checkDoc(t, sc.schema, doc)
				if err := g.Validate(doc); err != nil {
					t.Fatalf("Validate(%q): %v", doc, err)
				}
			}
		})
	}
}

// FuzzMask runs a random walk from the fuzzed seed over a fuzzed schema and
// vocabulary, comparing the mask with the reference twin at every step.
func FuzzMask(f *testing.F) {
	for i := range testSchemas {
		f.Add(uint8(i), uint8(i%2), uint64(i*7919))
	}
	grammars := make([]*Grammar, len(testSchemas))
	for i, sc := range testSchemas {
		grammars[i] = mustGrammar(f, sc.schema)
	}
	vocabs := testVocabs()
	f.Fuzz(func(t *testing.T, schema, vocab uint8, seed uint64) {
		g := grammars[int(schema)%len(grammars)]
		v := vocabs[int(vocab)%len(vocabs)]
		rng := rand.New(rand.NewPCG(seed, 3))
		randomWalk(t, g, v, rng, walkOpts{steps: 80, closeAt: int(seed % 80), ref: true})
	})
}

func TestAccept(t *testing.T) {
	v := testVocabs()[0]
	id := map[string]int{}
	for i, tok := range v.tokens {
		if _, ok := id[string(tok)]; !ok && !v.special[i] {
			id[string(tok)] = i
		}
	}
	g := mustGrammar(t, testSchemas[0].schema) // person
	mt := g.NewMatcher(v)
	for _, tok := range []string{`{"`, "name", `": "`, "日本", `",`, " ", `"`, "age", `":`, "12", "}"} {
		if err := mt.Accept(id[tok]); err != nil {
			t.Fatalf("Accept(%q): %v", tok, err)
		}
	}
	if !mt.Done() {
		t.Fatal("not Done after a complete document")
	}
	logits := make([]float32, v.n)
	mt.Mask(logits)
	for i, l := range logits {
		if (l != negInf) != (i == v.eos) {
			t.Fatalf("complete document: token %d %q allowed=%v", i, v.tokens[i], l != negInf)
		}
	}
	if err := mt.Accept(id[" "]); !errors.Is(err, ErrRejected) {
		t.Fatalf("whitespace after the document: %v, want ErrRejected", err)
	}
	if err := mt.Accept(v.eos); err != nil {
		t.Fatal(err)
	}
	if err := mt.Accept(v.eos); !errors.Is(err, ErrRejected) {
		t.Fatalf("token after EOS: %v", err)
	}

	mt = g.NewMatcher(v)
	for _, tc := range []struct {
		tok  int
		what string
	}{
		{id["["], "array where an object is required"},
		{v.eos, "EOS before the document"},
		{v.n - 3, "special token"},
		{v.n - 4, "empty token"},
		{-1, "negative id"},
		{v.n, "id past the vocabulary"},
	} {
		if err := mt.Accept(tc.tok); !errors.Is(err, ErrRejected) {
			t.Errorf("%s: %v, want ErrRejected", tc.what, err)
		}
	}
	// A rejected token leaves the state as it was.
	if err := mt.Accept(id[`{"`]); err != nil {
		t.Fatal(err)
	}
	if err := mt.Accept(id["age"]); !errors.Is(err, ErrRejected) {
		t.Fatalf("required property skipped: %v", err)
	}
	if err := mt.Accept(id["name"]); err != nil {
		t.Fatal(err)
	}
}

// TestMaskLogitsLength: logits past the vocabulary (padded output layers) are
// masked; shorter logits are masked as far as they go.
func TestMaskLogitsLength(t *testing.T) {
	v := testVocabs()[0]
	mt := mustGrammar(t, `{"type":"string"}`).NewMatcher(v)
	long := make([]float32, v.n+100)
	mt.Mask(long)
	for i := v.n; i < len(long); i++ {
		if long[i] != negInf {
			t.Fatalf("logit %d past the vocabulary not masked", i)
		}
	}
	short := make([]float32, 10)
	mt.Mask(short)
	for i, l := range short {
		if want := i == '\t'; (l != negInf) != want { // leading whitespace
			t.Fatalf("short logits: token %d allowed=%v", i, l != negInf)
		}
	}
}

// TestCacheConcurrent: matchers of one grammar share its cache from many
// goroutines (run with -race) and get the same masks.
func TestCacheConcurrent(t *testing.T) {
	v := testVocabs()[1]
	g := mustGrammar(t, testSchemas[0].schema)
	var wg sync.WaitGroup
	docs := make([][]byte, 8)
	for w := range docs {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w%2), 1)) // pairs of identical walks
			docs[w], _ = randomWalk(t, g, v, rng, walkOpts{steps: 400, closeAt: 40})
		})
	}
	wg.Wait()
	for w := 2; w < len(docs); w++ {
		if string(docs[w]) != string(docs[w%2]) {
			t.Fatalf("walk %d differs from walk %d", w, w%2)
		}
	}
	c := g.cacheFor(v)
	if c.hits.Load() == 0 {
		t.Fatal("no cache hits")
	}
}

// TestCacheBounded: the LRU keeps at most limit bytes and evicts the least
// recently used.
func TestCacheBounded(t *testing.T) {
	e := &maskEntry{}
	c := &maskCache{limit: 2 * (1 + e.size()), items: map[string]*list.Element{}}
	c.put("a", &maskEntry{})
	c.put("b", &maskEntry{})
	c.get([]byte("a"))
	c.put("c", &maskEntry{})
	if c.get([]byte("b")) != nil || c.get([]byte("a")) == nil || c.get([]byte("c")) == nil {
		t.Fatal("LRU did not evict the least recently used entry")
	}
	if c.lru.Len() != 2 {
		t.Fatalf("%d entries, limit 2", c.lru.Len())
	}
}

// TestMaskMatchesReference100K: the same on the benchmarks' 100K vocabulary,
// for a few short walks.
func TestMaskMatchesReference100K(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the 100K vocabulary")
	}
	v := vocab100K()
	for _, i := range []int{0, 2, 9} { // person, tree, json_object
		g := mustGrammar(t, testSchemas[i].schema)
		for seed := range 2 {
			rng := rand.New(rand.NewPCG(uint64(seed), 100))
			randomWalk(t, g, v, rng, walkOpts{steps: 12, closeAt: 8, ref: true})
		}
	}
}

// FuzzFromJSONSchema: any bytes a request carries as its schema compile or
// fail with a *SchemaError, never panic; a schema that compiles gives a
// grammar whose matcher walks (randomWalk's checks, against the reference
// twin) without panicking.
func FuzzFromJSONSchema(f *testing.F) {
	for _, sc := range testSchemas {
		f.Add([]byte(sc.schema), uint64(len(sc.schema)))
	}
	for _, s := range []string{
		`{"type":"json_object"}`,
		`{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"integer","minimum":-5,"maximum":12}}}`,
		`{"type":"string","pattern":"^[a-c]{2,3}$"}`,
		`{"anyOf":[{"type":"null"},{"$ref":"#/$defs/a"}],"$defs":{"a":{"type":"array","items":{"$ref":"#/$defs/a"},"maxItems":2}}}`,
		`{"enum":["a",1,null,true,{"k":[1]}]}`,
		`{"type":"object","properties":{"a":{"const":"x"}},"required":["a"],"additionalProperties":false}`,
		`{"type":"number","minLength":3}`,
		`[`, `{"type":7}`, `{"$ref":"#/nope"}`, `{"$ref":"#"}`,
	} {
		f.Add([]byte(s), uint64(len(s)))
	}
	vocabs := testVocabs()
	f.Fuzz(func(t *testing.T, schema []byte, seed uint64) {
		g, err := FromJSONSchema(schema)
		if err != nil {
			var se *SchemaError
			if !errors.As(err, &se) || (!errors.Is(err, ErrSchema) && !errors.Is(err, ErrUnsupported)) {
				t.Fatalf("FromJSONSchema(%q): error %v (%T) is not a *SchemaError wrapping ErrSchema or ErrUnsupported", schema, err, err)
			}
			return
		}
		v := vocabs[int(seed%uint64(len(vocabs)))]
		rng := rand.New(rand.NewPCG(seed, 5))
		randomWalk(t, g, v, rng, walkOpts{steps: 40, closeAt: int(seed % 40), ref: true})
	})
}
