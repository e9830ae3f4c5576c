package grammar

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Sentinel errors; decide with errors.Is.
var (
	// ErrUnsupported: the schema uses a keyword or a feature this package does
	// not handle (the *SchemaError names the keyword and its location).
	ErrUnsupported = errors.New("grammar: unsupported schema feature")
	// ErrSchema: the schema is malformed or admits no document.
	ErrSchema = errors.New("grammar: malformed schema")
	// ErrRejected: a token (or a document byte) the grammar does not allow.
	ErrRejected = errors.New("grammar: rejected")
)

// SchemaError is the error FromJSONSchema returns. Err is ErrUnsupported or
// ErrSchema; Path is the JSON pointer (as a URI fragment, "#/properties/zip")
// of the schema where the problem is.
type SchemaError struct {
	Err  error
	Path string
	Msg  string // e.g. `unsupported keyword "pattern"`
}

func (e *SchemaError) Error() string { return "grammar: " + e.Msg + " at " + e.Path }

// Unwrap returns ErrUnsupported or ErrSchema.
func (e *SchemaError) Unwrap() error { return e.Err }

func unsupported(path, format string, args ...any) error {
	return &SchemaError{Err: ErrUnsupported, Path: path, Msg: fmt.Sprintf(format, args...)}
}

func malformed(path, format string, args ...any) error {
	return &SchemaError{Err: ErrSchema, Path: path, Msg: fmt.Sprintf(format, args...)}
}

// kind is what a compiled node matches.
type kind uint8

const (
	kNever   kind = iota // nothing (schema false, an empty enum intersection)
	kString              // any JSON string
	kNumber              // any JSON number
	kInteger             // a JSON number without fraction or exponent
	kLiteral             // one of a fixed set of byte strings (enum, const, true/false/null)
	kObject              // an object with declared properties only, in declaration order
	kMap                 // an object with any keys, every value matching elem
	kArray               // an array of elem, minItems..maxItems long
	kAnyOf               // any of alts
	kRef                 // alias of elem (only while compiling)
	kRoot                // the document: optional whitespace, elem, end of text
)

// node is one compiled schema. Nodes refer to each other by index into
// Grammar.nodes, so recursive schemas are cycles of indices.
type node struct {
	kind kind
	path string // where in the schema it came from (for messages)

	alts []int32 // kAnyOf
	elem int32   // kMap/kArray: the value/item node; kRoot/kRef: the target
	min  int32   // kArray: minItems
	max  int32   // kArray: maxItems, < 0 when unbounded

	lit     int32   // kLiteral: root of its trie in Grammar.lits
	litVals []*jval // kLiteral: the values (for oneOf disjointness)

	props []prop // kObject, in declaration order
	keys  int32  // kObject: root of the trie of its keys (JSON-encoded, tag: property index)
	// kObject, indexed by next, the first property not yet passed: lastKey,
	// the last property that may come next (the first required one at or
	// after next, else the last property); canEnd, whether '}' may come next
	// (no required property at or after next; len(props)+1 entries).
	lastKey []int32
	canEnd  []bool

	real tmask // types the schema accepts under JSON Schema semantics (oneOf checks)
}

type prop struct {
	name     string
	node     int32
	required bool
}

// lnode is a node of a literal trie (enum values, const, object keys): the
// edges out, sorted by byte, and the tag of the literal ending here (-1: none).
// In a key trie, tags lists (ascending) the tags of the keys below the node.
type lnode struct {
	edges []ledge
	term  int32
	tags  []int32
}

type ledge struct {
	b  byte
	to int32
}

// Grammar is a compiled constraint: a pushdown automaton over bytes. It is
// immutable once built, and safe for concurrent use; it holds the per-state
// mask caches of the vocabularies its matchers use.
type Grammar struct {
	nodes []node
	lits  []lnode
	root  int32 // the kRoot node

	mu     sync.Mutex
	caches map[*Vocab]*maskCache
}

func (g *Grammar) add(n node) int32 {
	g.nodes = append(g.nodes, n)
	return int32(len(g.nodes) - 1)
}

// litChild returns the child of literal trie node n along byte c, or -1.
func (g *Grammar) litChild(n int32, c int) int32 {
	es := g.lits[n].edges
	if len(es) <= 8 {
		for _, e := range es {
			if int(e.b) == c {
				return e.to
			}
		}
		return -1
	}
	lo, hi := 0, len(es)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if int(es[m].b) < c {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(es) && int(es[lo].b) == c {
		return es[lo].to
	}
	return -1
}

// addTrie adds a trie of the literals strs (tag tags[i] at the end of strs[i])
// and returns its root. With below, every node also lists the tags under it.
func (g *Grammar) addTrie(strs [][]byte, tags []int32, below bool) int32 {
	root := g.newLit()
	for i, s := range strs {
		cur := root
		if below {
			g.lits[cur].tags = append(g.lits[cur].tags, tags[i])
		}
		for _, b := range s {
			next := g.litChild(cur, int(b))
			if next < 0 {
				next = g.newLit()
				es := g.lits[cur].edges
				j := 0
				for j < len(es) && es[j].b < b {
					j++
				}
				es = append(es, ledge{})
				copy(es[j+1:], es[j:])
				es[j] = ledge{b: b, to: next}
				g.lits[cur].edges = es
			}
			cur = next
			if below {
				g.lits[cur].tags = append(g.lits[cur].tags, tags[i])
			}
		}
		g.lits[cur].term = tags[i]
	}
	return root
}

// keyViable reports whether key trie node n leads to a property in
// [next, last].
func (g *Grammar) keyViable(n int32, next, last int32) bool {
	tags := g.lits[n].tags
	i, _ := slices.BinarySearch(tags, next)
	return i < len(tags) && tags[i] <= last
}

func (g *Grammar) newLit() int32 {
	g.lits = append(g.lits, lnode{term: -1})
	return int32(len(g.lits) - 1)
}

var (
	anyObjectOnce sync.Once
	anyObject     *Grammar
)

// AnyJSONObject is the grammar of response_format {"type":"json_object"}: any
// JSON object at the top level. It is one shared Grammar, so its mask cache
// serves every request.
func AnyJSONObject() *Grammar {
	anyObjectOnce.Do(func() {
		g, err := compile(&jval{kind: '{', keys: []string{"type"}, vals: []*jval{{kind: 's', str: "object"}}})
		if err != nil {
			panic(err)
		}
		anyObject = g
	})
	return anyObject
}

// FromJSONSchema compiles a JSON Schema (the subset described in the package
// documentation). It also accepts the OpenAI wrappers around a schema:
// {"name":…,"schema":…,"strict":…} and {"type":"json_schema","json_schema":{…}}
// ({"type":"json_object"} gives AnyJSONObject). Errors are *SchemaError,
// wrapping ErrUnsupported or ErrSchema.
func FromJSONSchema(schema []byte) (*Grammar, error) {
	doc, err := parseJSON(schema, false)
	if err != nil {
		return nil, &SchemaError{Err: ErrSchema, Path: "#", Msg: "invalid JSON: " + err.Error()}
	}
	doc, jsonObject := unwrap(doc)
	if jsonObject {
		return AnyJSONObject(), nil
	}
	return compile(doc)
}

// unwrap strips the OpenAI response_format wrappers.
func unwrap(doc *jval) (*jval, bool) {
	if doc.kind != '{' {
		return doc, false
	}
	if t := doc.get("type"); t != nil && t.kind == 's' {
		switch t.str {
		case "json_object":
			if len(doc.keys) == 1 {
				return doc, true
			}
		case "json_schema":
			if js := doc.get("json_schema"); js != nil && js.kind == '{' {
				doc = js
			}
		}
	}
	if s := doc.get("schema"); s != nil {
		for _, k := range doc.keys {
			switch k {
			case "name", "description", "schema", "strict":
			default:
				return doc, false
			}
		}
		return s, false
	}
	return doc, false
}

// Validate reports whether doc is a complete document of the grammar, by
// running the same automaton as the matchers over its bytes. The language is
// the one generation produces: properties in schema order, whitespace runs of
// at most 2 bytes, none after the top-level value, enum values in their
// compact form. The error wraps ErrRejected and gives the byte offset.
func (g *Grammar) Validate(doc []byte) error {
	var m machine
	m.g = g
	tops := []int32{m.initial()}
	const chunk = 4096
	for off := 0; off < len(doc); off += chunk {
		end := min(off+chunk, len(doc))
		next, at := m.feed(tops, doc[off:end])
		if next == nil {
			return fmt.Errorf("%w: byte %d (%q) of the document", ErrRejected, off+at, doc[off+at])
		}
		tops = m.compact(next, nil, nil)
	}
	if !m.canEnd(tops) {
		return fmt.Errorf("%w: the document ends early (%d bytes)", ErrRejected, len(doc))
	}
	return nil
}
