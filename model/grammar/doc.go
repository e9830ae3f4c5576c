// Package grammar owns constrained decoding for JSON output: it compiles an
// OpenAI-style response_format (a JSON Schema, or "any JSON object") into a
// pushdown automaton over bytes and masks a model's logits so that generation
// always produces a document of that schema.
//
// # Use
//
//	v := grammar.NewVocab(tokenBytes, special, eos) // once per model
//	g, err := grammar.FromJSONSchema(schema)        // or grammar.AnyJSONObject()
//	m := g.NewMatcher(v)                            // once per generation
//	// per step: m.Mask(logits); sample; m.Accept(tok)
//
// *Matcher has the methods of the decode loop's Constraint (model/engine):
// Mask sets disallowed logits to -Inf, Accept advances past the sampled token.
// When the document is complete, only the EOS token is allowed. g.Validate
// runs the same automaton over a whole document.
//
// # Supported JSON Schema
//
// type (object, array, string, number, integer, boolean, null, and lists of
// them), properties, required, additionalProperties, items, minItems,
// maxItems, enum, const, anyOf, oneOf (see below), allOf with one schema,
// $ref to any local JSON pointer ("#/$defs/x", "#/definitions/x", "#"),
// recursion included, and the booleans true (any value) and false. Annotations
// are ignored (title, description, default, examples, $schema, $id, $comment,
// $anchor, deprecated, readOnly, writeOnly, contentMediaType, contentEncoding,
// OpenAPI's discriminator, x-*), as are the OpenAI wrappers {"name":…,"schema":…,"strict":…} and
// {"type":"json_schema","json_schema":…}. Everything else that constrains
// values is refused with ErrUnsupported and a message naming the keyword and
// its JSON pointer (`unsupported keyword "pattern" at #/properties/zip`):
// pattern, format, minLength, maxLength, minimum, maximum, exclusive*,
// multipleOf, patternProperties, propertyNames, dependent*, if/then/else,
// not, allOf with several schemas, unevaluated*, contains, prefixItems,
// array-form items, uniqueItems (unless false), min/maxProperties, remote or
// anchor $refs, unknown keywords, and $ref, anyOf, oneOf, allOf or enum/const
// next to other constraining keywords. Malformed schemas, and schemas that
// admit no document, give ErrSchema.
//
// The language generated is a subset of what the schema accepts, chosen so
// that every output is valid:
//
//   - An object with properties (or required names) has exactly those
//     properties, in schema order; required ones always, optional ones may be
//     skipped. additionalProperties is only used when there are no
//     properties: false gives {}, a schema gives a map with any keys (which may
//     repeat) and values of that schema, absent or true any object.
//   - Without "type", keywords imply it (properties → object, items →
//     array); with neither, any JSON value.
//   - oneOf is accepted only when its alternatives are provably disjoint
//     (different JSON types, different literal sets, or objects with a common
//     required property whose values are disjoint: a discriminator); it is then
//     the same as anyOf. Otherwise it is refused (use anyOf).
//   - enum and const values are produced in one form: compact JSON, strings
//     with only the escapes JSON requires. Values of other types than "type"
//     allows are dropped.
//   - Whitespace (space, tab, CR, LF) is allowed between tokens in runs of at
//     most 2 bytes (a newline and one space of indent, or ", " and ": "), and
//     not after the top-level value: output stays compact and a model cannot
//     spend its tokens on whitespace (a weak model otherwise does).
//   - Strings are any valid JSON string: escapes \" \\ \/ \b \f \n \r \t
//     \uXXXX, no raw control characters, valid UTF-8 (no overlongs, no
//     surrogates, nothing above U+10FFFF), which a token may end in the middle
//     of.
//   - Numbers follow the JSON grammar (integer: no fraction or exponent), with
//     at most 18 integer digits, 24 fraction digits and 2 exponent digits, so
//     every number fits a float64 (and every integer an int64) and a model
//     cannot loop on digits.
//
// # Design
//
// Compile (compile.go) turns the schema into nodes: string, number, integer,
// literal (a byte trie of the allowed encodings: enum, const, true/false/null),
// object (declared properties, with a key trie), map, array, anyOf, and the
// root. $ref targets are compiled once, so recursion is a cycle of node
// indices. Compile then drops what can never complete (so every reachable
// state can still finish a document and Mask never leaves nothing allowed),
// and refuses left recursion and overlapping oneOf.
//
// The automaton (automaton.go) is a pushdown machine. Its state is a set of
// stacks (the anyOf alternatives still alive; usually one); a stack is a
// chain of frames, one per open value, each a node and a small sub-state: the
// container phase and whitespace count, the next property, the item count,
// the key or literal trie node, the string lexer state (13 states: normal,
// escapes, \u digits, UTF-8 continuations), or the number state and digit
// count. The state never includes the text of a string, so the number of
// distinct states stays small. Frames live in an arena and point at the frame
// below; a step that changes the top shares the rest, and backtracking is
// truncating the arena. A value without a closing delimiter (a number) ends
// when a byte that cannot continue it arrives; the byte then goes to the
// frame below.
//
// Masking (matcher.go, vocab.go) follows llguidance and XGrammar. NewVocab
// builds a byte trie of the vocabulary once per model, numbering tokens in
// depth-first order so every subtree is a range of positions. Mask walks the
// trie with the automaton from the current state: a child byte no stack
// accepts prunes its subtree. Two shortcuts make the walk inside strings
// cheap: each trie node records, per string lexer state, whether every token
// below it stays inside the string (its whole range is then allowed at once),
// and children are ordered so the ones safe from the usual lexer state come
// first, as one range; inside a string the walk only moves the lexer state
// (a table lookup) until a closing quote hands the subtree back to the full
// automaton. The walk's result is translated from positions to token ids and
// cached per state, keyed by the encoding of the stacks, in an LRU of at most
// 32 MiB per (Grammar, Vocab), shared by all matchers and safe for concurrent
// use; a state seen before costs a map lookup and applying the mask. A mask
// with few allowed tokens is kept as their ids (apply: save them, fill with
// -Inf, restore), others as a bitset (apply: skip full words, block-copy -Inf
// into empty ones). The reference twin of Mask, which runs every token
// through the automaton, is in reference_test.go; the tests and FuzzMask
// compare the two at every step of random walks.
//
// # Limits
//
// At most 32 alternative stacks are kept after a token (1,024 while stepping
// through one), in a fixed order. If an anyOf stays ambiguous beyond that,
// some parses are dropped. Output stays valid; only some documents become
// unreachable. minItems/maxItems are capped at 65,536, and the item count is
// part of the state, so each count has its own cached masks. A cold mask
// inside a string walks every token that contains a quote, a backslash or a
// control byte.
//
// BenchmarkMask100K and BenchmarkDecodeLoop (both run by make bench) measure
// masks and a constrained decode loop over a 100K-token vocabulary,
// BenchmarkNewVocab100K building its trie.
package grammar
