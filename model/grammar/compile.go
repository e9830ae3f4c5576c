package grammar

import (
	"net/url"
	"strconv"
	"strings"
)

// tmask is a set of JSON types.
type tmask uint8

const (
	tNull tmask = 1 << iota
	tBool
	tObject
	tArray
	tString
	tNumber               // any number (the "integer" type is folded in for type sets)
	tInteger              // only while reading "type": integral numbers only
	tAll     tmask = 0x3f // every JSON type
	tUnknown tmask = 0x80 // node.real not computed yet (an anyOf)
)

var typeNames = map[string]tmask{
	"null": tNull, "boolean": tBool, "object": tObject, "array": tArray,
	"string": tString, "number": tNumber, "integer": tInteger,
}

// ignored keywords are annotations: they do not constrain values.
var ignored = map[string]bool{
	"title": true, "description": true, "default": true, "examples": true, "example": true,
	"$schema": true, "$id": true, "$comment": true, "$anchor": true, "deprecated": true,
	"readOnly": true, "writeOnly": true, "contentMediaType": true, "contentEncoding": true,
	// OpenAPI's hint on a oneOf (validation ignores it).
	"discriminator": true,
	// Containers, read through $ref.
	"$defs": true, "definitions": true,
}

// handled keywords constrain values and are compiled.
var handled = map[string]bool{
	"type": true, "properties": true, "required": true, "additionalProperties": true,
	"items": true, "minItems": true, "maxItems": true, "enum": true, "const": true,
	"anyOf": true, "oneOf": true, "allOf": true, "$ref": true,
}

// compiler turns a schema document into Grammar nodes. $ref targets are
// compiled once (memoised by pointer) behind a kRef placeholder, which is how
// recursive schemas become cycles; finish resolves the placeholders and checks
// the whole graph.
type compiler struct {
	g     *Grammar
	doc   *jval
	refs  map[string]int32
	oneOf []int32 // kAnyOf nodes that came from oneOf
	anyID int32   // the shared any-value node, -1 until needed
}

func compile(doc *jval) (*Grammar, error) {
	g := &Grammar{}
	c := &compiler{g: g, doc: doc, refs: map[string]int32{}, anyID: -1}
	top, err := c.ref("#", "#")
	if err != nil {
		return nil, err
	}
	g.root = g.add(node{kind: kRoot, elem: top, path: "#"})
	if err := c.finish(); err != nil {
		return nil, err
	}
	return g, nil
}

// schema compiles the schema s found at path.
func (c *compiler) schema(s *jval, path string) (int32, error) {
	switch s.kind {
	case 'b':
		if s.b {
			return c.any(), nil
		}
		return c.g.add(node{kind: kNever, path: path}), nil
	case '{':
	default:
		return 0, malformed(path, "a schema must be an object or a boolean")
	}
	kw := map[string]*jval{}
	var constraining []string // handled keywords, in schema order
	for i, k := range s.keys {
		v := s.vals[i]
		switch {
		case ignored[k], strings.HasPrefix(k, "x-"):
		case handled[k]:
			kw[k] = v
			constraining = append(constraining, k)
		case k == "uniqueItems" && v.kind == 'b' && !v.b:
		default:
			return 0, unsupported(path, "unsupported keyword %q", k)
		}
	}
	alone := func(key string) error {
		for _, k := range constraining {
			if k != key {
				return unsupported(path, "keyword %q alongside %q", k, key)
			}
		}
		return nil
	}
	if r, ok := kw["$ref"]; ok {
		if err := alone("$ref"); err != nil {
			return 0, err
		}
		if r.kind != 's' {
			return 0, malformed(path, `"$ref" must be a string`)
		}
		return c.ref(r.str, path)
	}
	if a, ok := kw["allOf"]; ok {
		if a.kind != '[' || len(a.items) == 0 {
			return 0, malformed(path, `"allOf" must be a non-empty array`)
		}
		if len(a.items) > 1 {
			return 0, unsupported(path, `"allOf" with more than one schema`)
		}
		if err := alone("allOf"); err != nil {
			return 0, err
		}
		return c.schema(a.items[0], path+"/allOf/0")
	}
	for _, key := range []string{"anyOf", "oneOf"} {
		a, ok := kw[key]
		if !ok {
			continue
		}
		if err := alone(key); err != nil {
			return 0, err
		}
		if a.kind != '[' || len(a.items) == 0 {
			return 0, malformed(path, "%q must be a non-empty array", key)
		}
		id := c.g.add(node{kind: kAnyOf, path: path, real: tUnknown})
		alts := make([]int32, len(a.items))
		for i, it := range a.items {
			alt, err := c.schema(it, path+"/"+key+"/"+strconv.Itoa(i))
			if err != nil {
				return 0, err
			}
			alts[i] = alt
		}
		c.g.nodes[id].alts = alts
		if key == "oneOf" {
			c.oneOf = append(c.oneOf, id)
		}
		return id, nil
	}

	var types tmask
	t, typed := kw["type"]
	if typed {
		var err error
		if types, err = parseTypes(t, path); err != nil {
			return 0, err
		}
	}
	_, hasEnum := kw["enum"]
	_, hasConst := kw["const"]
	if hasEnum || hasConst {
		for _, k := range constraining {
			if k != "enum" && k != "const" && k != "type" {
				key := "enum"
				if !hasEnum {
					key = "const"
				}
				return 0, unsupported(path, "keyword %q alongside %q", k, key)
			}
		}
		return c.enum(kw, types, typed, path)
	}
	real := types
	if !typed {
		real = tAll
		for _, k := range constraining {
			switch k {
			case "properties", "required", "additionalProperties":
				types |= tObject
			case "items", "minItems", "maxItems":
				types |= tArray
			}
		}
		if types == 0 {
			return c.any(), nil
		}
	}
	if real&tInteger != 0 {
		real = real&^tInteger | tNumber
	}

	var alts []int32
	if types&tObject != 0 {
		id, err := c.object(kw, path)
		if err != nil {
			return 0, err
		}
		alts = append(alts, id)
	}
	if types&tArray != 0 {
		id, err := c.array(kw, path)
		if err != nil {
			return 0, err
		}
		alts = append(alts, id)
	}
	if types&tString != 0 {
		alts = append(alts, c.g.add(node{kind: kString, path: path, real: tString}))
	}
	switch {
	case types&tNumber != 0:
		alts = append(alts, c.g.add(node{kind: kNumber, path: path, real: tNumber}))
	case types&tInteger != 0:
		alts = append(alts, c.g.add(node{kind: kInteger, path: path, real: tNumber}))
	}
	if types&(tBool|tNull) != 0 {
		var vals []*jval
		if types&tBool != 0 {
			vals = append(vals, &jval{kind: 'b', b: true}, &jval{kind: 'b', b: false})
		}
		if types&tNull != 0 {
			vals = append(vals, &jval{kind: 'z'})
		}
		alts = append(alts, c.literal(vals, path))
	}
	if len(alts) == 1 {
		c.g.nodes[alts[0]].real = real
		return alts[0], nil
	}
	return c.g.add(node{kind: kAnyOf, alts: alts, path: path, real: real}), nil
}

func parseTypes(t *jval, path string) (tmask, error) {
	names := []*jval{t}
	if t.kind == '[' {
		if len(t.items) == 0 {
			return 0, malformed(path, `"type" must not be an empty array`)
		}
		names = t.items
	}
	var m tmask
	for _, n := range names {
		if n.kind != 's' {
			return 0, malformed(path, `"type" must be a string or an array of strings`)
		}
		bit, ok := typeNames[n.str]
		if !ok {
			return 0, malformed(path, "unknown type %q", n.str)
		}
		m |= bit
	}
	return m, nil
}

// enum compiles enum and/or const (values of other types than "type" allows
// are dropped).
func (c *compiler) enum(kw map[string]*jval, types tmask, typed bool, path string) (int32, error) {
	var vals []*jval
	if e, ok := kw["enum"]; ok {
		if e.kind != '[' || len(e.items) == 0 {
			return 0, malformed(path, `"enum" must be a non-empty array`)
		}
		vals = e.items
	}
	if k, ok := kw["const"]; ok {
		if vals == nil {
			vals = []*jval{k}
		} else {
			var both []*jval
			for _, v := range vals {
				if jsonEqual(v, k) {
					both = append(both, v)
				}
			}
			vals = both
		}
	}
	var kept []*jval
	for _, v := range vals {
		if !typed || types&typeOf(v) != 0 {
			kept = append(kept, v)
		}
	}
	if len(kept) == 0 {
		return c.g.add(node{kind: kNever, path: path}), nil
	}
	return c.literal(kept, path), nil
}

// typeOf is the type set a value belongs to (an integral number is both
// "number" and "integer").
func typeOf(v *jval) tmask {
	switch v.kind {
	case '{':
		return tObject
	case '[':
		return tArray
	case 's':
		return tString
	case 'n':
		if isInteger(v.num) {
			return tNumber | tInteger
		}
		return tNumber
	case 'b':
		return tBool
	}
	return tNull
}

// literal makes a kLiteral node generating the compact encodings of vals.
func (c *compiler) literal(vals []*jval, path string) int32 {
	var strs [][]byte
	var kept []*jval
	var real tmask
	seen := map[string]bool{}
	for _, v := range vals {
		b := appendCompact(nil, v)
		if seen[string(b)] {
			continue
		}
		seen[string(b)] = true
		strs = append(strs, b)
		kept = append(kept, v)
		real |= typeOf(v) &^ tInteger
	}
	root := c.g.addTrie(strs, make([]int32, len(strs)), false)
	return c.g.add(node{kind: kLiteral, lit: root, litVals: kept, path: path, real: real})
}

// any returns the shared node for "any JSON value".
func (c *compiler) any() int32 {
	if c.anyID >= 0 {
		return c.anyID
	}
	g := c.g
	id := g.add(node{kind: kAnyOf, path: "#", real: tAll})
	c.anyID = id
	obj := g.add(node{kind: kMap, elem: id, path: "#", real: tObject})
	arr := g.add(node{kind: kArray, elem: id, max: -1, path: "#", real: tArray})
	str := g.add(node{kind: kString, path: "#", real: tString})
	num := g.add(node{kind: kNumber, path: "#", real: tNumber})
	lit := c.literal([]*jval{{kind: 'b', b: true}, {kind: 'b', b: false}, {kind: 'z'}}, "#")
	g.nodes[id].alts = []int32{obj, arr, str, num, lit}
	return id
}

func (c *compiler) object(kw map[string]*jval, path string) (int32, error) {
	var props []prop
	if p, ok := kw["properties"]; ok {
		if p.kind != '{' {
			return 0, malformed(path, `"properties" must be an object`)
		}
		for i, name := range p.keys {
			id, err := c.schema(p.vals[i], path+"/properties/"+escapePointer(name))
			if err != nil {
				return 0, err
			}
			props = append(props, prop{name: name, node: id})
		}
	}
	var required []string
	if r, ok := kw["required"]; ok {
		if r.kind != '[' {
			return 0, malformed(path, `"required" must be an array of strings`)
		}
		for _, it := range r.items {
			if it.kind != 's' {
				return 0, malformed(path, `"required" must be an array of strings`)
			}
			required = append(required, it.str)
		}
	}
	// additional: -1 absent or true, -2 false, else the schema's node.
	additional := int32(-1)
	if a, ok := kw["additionalProperties"]; ok {
		switch {
		case a.kind == 'b' && a.b:
		case a.kind == 'b':
			additional = -2
		case a.kind == '{':
			id, err := c.schema(a, path+"/additionalProperties")
			if err != nil {
				return 0, err
			}
			additional = id
		default:
			return 0, malformed(path, `"additionalProperties" must be a boolean or a schema`)
		}
	}
	if len(props) == 0 && len(required) == 0 {
		switch additional {
		case -1:
			return c.g.add(node{kind: kMap, elem: c.any(), path: path}), nil
		case -2:
			return c.g.add(node{kind: kObject, path: path}), nil
		}
		return c.g.add(node{kind: kMap, elem: additional, path: path}), nil
	}
	// Required names not declared are added after the declared ones, with the
	// additionalProperties schema (none allowed when it is false).
	for _, name := range required {
		found := false
		for i := range props {
			if props[i].name == name {
				props[i].required, found = true, true
			}
		}
		if found {
			continue
		}
		var id int32
		switch additional {
		case -1:
			id = c.any()
		case -2:
			id = c.g.add(node{kind: kNever, path: path})
		default:
			id = additional
		}
		props = append(props, prop{name: name, node: id, required: true})
	}
	return c.g.add(node{kind: kObject, props: props, path: path}), nil
}

func (c *compiler) array(kw map[string]*jval, path string) (int32, error) {
	n := node{kind: kArray, max: -1, path: path}
	if it, ok := kw["items"]; ok {
		switch it.kind {
		case '{', 'b':
			id, err := c.schema(it, path+"/items")
			if err != nil {
				return 0, err
			}
			n.elem = id
		case '[':
			return 0, unsupported(path, `array form of "items" (tuples)`)
		default:
			return 0, malformed(path, `"items" must be a schema`)
		}
	} else {
		n.elem = c.any()
	}
	for _, key := range []string{"minItems", "maxItems"} {
		v, ok := kw[key]
		if !ok {
			continue
		}
		if v.kind != 'n' || !isInteger(v.num) || strings.HasPrefix(v.num, "-") {
			return 0, malformed(path, "%q must be a non-negative integer", key)
		}
		d := parseDecimal(v.num)
		val := int64(0)
		if d.digits != "" {
			if d.exp > 7 {
				return 0, unsupported(path, "%q above %d", key, maxCount)
			}
			for i := int64(0); i < d.exp; i++ {
				val *= 10
				if i < int64(len(d.digits)) {
					val += int64(d.digits[i] - '0')
				}
			}
		}
		if val > maxCount {
			return 0, unsupported(path, "%q above %d", key, maxCount)
		}
		if key == "minItems" {
			n.min = int32(val)
		} else {
			n.max = int32(val)
		}
	}
	if n.max >= 0 && n.min > n.max {
		return c.g.add(node{kind: kNever, path: path}), nil
	}
	return c.g.add(n), nil
}

// maxCount bounds minItems/maxItems: the item count is part of the automaton
// state, so every count is a separate set of cached masks.
const maxCount = 1 << 16

// ref compiles the target of a local $ref (memoised by target).
func (c *compiler) ref(ref, path string) (int32, error) {
	if !strings.HasPrefix(ref, "#") {
		return 0, unsupported(path, "non-local \"$ref\" %q", ref)
	}
	frag, err := url.PathUnescape(ref[1:])
	if err != nil {
		return 0, malformed(path, "bad \"$ref\" %q", ref)
	}
	if id, ok := c.refs[frag]; ok {
		return id, nil
	}
	target := c.doc
	if frag != "" {
		if !strings.HasPrefix(frag, "/") {
			return 0, unsupported(path, "\"$ref\" to an anchor %q", ref)
		}
		for _, tok := range strings.Split(frag[1:], "/") {
			tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
			var next *jval
			switch target.kind {
			case '{':
				next = target.get(tok)
			case '[':
				if i, ok := atoi(tok); ok && i < len(target.items) {
					next = target.items[i]
				}
			}
			if next == nil {
				return 0, malformed(path, "unresolvable \"$ref\" %q", ref)
			}
			target = next
		}
	}
	id := c.g.add(node{kind: kRef, path: path})
	c.refs[frag] = id
	t, err := c.schema(target, "#"+frag)
	if err != nil {
		return 0, err
	}
	c.g.nodes[id].elem = t
	return id, nil
}

// finish resolves $ref placeholders, refuses left recursion, removes what can
// never complete (so every state the automaton reaches can still finish a
// document), checks oneOf exclusivity and builds the object key tries.
func (c *compiler) finish() error {
	g := c.g
	resolve := func(id int32) (int32, error) {
		for i := 0; g.nodes[id].kind == kRef; i++ {
			if i > len(g.nodes) {
				return 0, malformed(g.nodes[id].path, "\"$ref\" cycle with no schema")
			}
			id = g.nodes[id].elem
		}
		return id, nil
	}
	var err error
	for i := range g.nodes {
		n := &g.nodes[i]
		if n.kind == kRef {
			continue
		}
		for j := range n.alts {
			if n.alts[j], err = resolve(n.alts[j]); err != nil {
				return err
			}
		}
		for j := range n.props {
			if n.props[j].node, err = resolve(n.props[j].node); err != nil {
				return err
			}
		}
		switch n.kind {
		case kMap, kArray, kRoot:
			if n.elem, err = resolve(n.elem); err != nil {
				return err
			}
		}
	}

	// Left recursion: an anyOf that reaches itself through alternatives alone
	// would expand forever before reading a byte.
	color := make([]uint8, len(g.nodes))
	var visit func(id int32) error
	visit = func(id int32) error {
		if g.nodes[id].kind != kAnyOf {
			return nil
		}
		switch color[id] {
		case 1:
			return unsupported(g.nodes[id].path, "left-recursive schema (a \"$ref\" cycle through anyOf/oneOf)")
		case 2:
			return nil
		}
		color[id] = 1
		for _, a := range g.nodes[id].alts {
			if err := visit(a); err != nil {
				return err
			}
		}
		color[id] = 2
		return nil
	}
	for i := range g.nodes {
		if err := visit(int32(i)); err != nil {
			return err
		}
	}

	// Productive nodes derive at least one finite document (least fixpoint).
	prod := make([]bool, len(g.nodes))
	for changed := true; changed; {
		changed = false
		for i := range g.nodes {
			if prod[i] {
				continue
			}
			n := &g.nodes[i]
			p := false
			switch n.kind {
			case kString, kNumber, kInteger, kLiteral, kMap:
				p = true
			case kAnyOf:
				for _, a := range n.alts {
					p = p || prod[a]
				}
			case kObject:
				p = true
				for _, pr := range n.props {
					p = p && (!pr.required || prod[pr.node])
				}
			case kArray:
				p = n.min == 0 || prod[n.elem]
			case kRoot:
				p = prod[n.elem]
			}
			if p {
				prod[i], changed = true, true
			}
		}
	}
	if !prod[g.root] {
		return malformed("#", "the schema admits no document")
	}
	for i := range g.nodes {
		n := &g.nodes[i]
		switch n.kind {
		case kAnyOf:
			alts := n.alts[:0:0]
			for _, a := range n.alts {
				if prod[a] {
					alts = append(alts, a)
				}
			}
			n.alts = alts
		case kObject:
			props := n.props[:0:0]
			for _, p := range n.props {
				if prod[p.node] {
					props = append(props, p)
				}
			}
			n.props = props
		case kArray:
			if !prod[n.elem] {
				n.max = 0
			}
		case kMap:
			if !prod[n.elem] {
				*n = node{kind: kObject, path: n.path, real: n.real}
			}
		}
	}

	for _, id := range c.oneOf {
		if err := c.exclusive(id); err != nil {
			return err
		}
	}

	for i := range g.nodes {
		n := &g.nodes[i]
		if n.kind != kObject {
			continue
		}
		np := len(n.props)
		strs := make([][]byte, np)
		tags := make([]int32, np)
		for j, p := range n.props {
			strs[j], tags[j] = appendString(nil, p.name), int32(j)
		}
		n.keys = g.addTrie(strs, tags, true)
		n.lastKey = make([]int32, np)
		n.canEnd = make([]bool, np+1)
		firstReq := np
		n.canEnd[np] = true
		for next := np - 1; next >= 0; next-- {
			if n.props[next].required {
				firstReq = next
			}
			n.canEnd[next] = firstReq == np
			n.lastKey[next] = int32(min(firstReq, np-1))
		}
	}
	return nil
}

// exclusive checks that the alternatives of a oneOf are pairwise disjoint, so
// treating it as anyOf cannot produce a document matching two of them.
func (c *compiler) exclusive(id int32) error {
	alts := c.g.nodes[id].alts
	for i := range alts {
		for j := i + 1; j < len(alts); j++ {
			if !c.disjoint(alts[i], alts[j], 0) || !c.disjoint(alts[j], alts[i], 0) {
				return unsupported(c.g.nodes[id].path,
					"oneOf alternatives %d and %d may overlap (only disjoint alternatives are supported; use anyOf)", i, j)
			}
		}
	}
	return nil
}

// disjoint reports whether no document generated from node a is accepted by
// the schema node b came from (false when unsure).
func (c *compiler) disjoint(a, b int32, depth int) bool {
	if depth > 8 {
		return false
	}
	g := c.g
	if c.genTypes(a, 0)&c.realTypes(b, 0) == 0 {
		return true
	}
	na, nb := &g.nodes[a], &g.nodes[b]
	if na.kind == kAnyOf {
		for _, x := range na.alts {
			if !c.disjoint(x, b, depth+1) {
				return false
			}
		}
		return true
	}
	if nb.kind == kAnyOf && nb.real != tAll {
		// b accepts what its alternatives accept (it came from anyOf/oneOf or
		// a list of types; an inferred type accepts every type: tAll).
		for _, y := range nb.alts {
			if !c.disjoint(a, y, depth+1) {
				return false
			}
		}
		return true
	}
	switch {
	case na.kind == kLiteral && nb.kind == kLiteral:
		for _, x := range na.litVals {
			for _, y := range nb.litVals {
				if jsonEqual(x, y) {
					return false
				}
			}
		}
		return true
	case na.kind == kObject && nb.kind == kObject:
		// A discriminator: a property both require, with disjoint values.
		for _, pa := range na.props {
			if !pa.required {
				continue
			}
			for _, pb := range nb.props {
				if pb.required && pb.name == pa.name && c.disjoint(pa.node, pb.node, depth+1) {
					return true
				}
			}
		}
	}
	return false
}

// genTypes is the set of types node id generates.
func (c *compiler) genTypes(id int32, depth int) tmask {
	n := &c.g.nodes[id]
	switch n.kind {
	case kNever:
		return 0
	case kString:
		return tString
	case kNumber, kInteger:
		return tNumber
	case kObject, kMap:
		return tObject
	case kArray:
		return tArray
	case kLiteral:
		return n.real
	case kAnyOf:
		if depth > 16 {
			return tAll
		}
		var m tmask
		for _, a := range n.alts {
			m |= c.genTypes(a, depth+1)
		}
		return m
	}
	return tAll
}

// realTypes is the set of types the schema node id came from accepts.
func (c *compiler) realTypes(id int32, depth int) tmask {
	n := &c.g.nodes[id]
	if n.kind == kNever {
		return 0
	}
	if n.real != tUnknown {
		if n.real == 0 {
			return tAll
		}
		return n.real
	}
	if depth > 16 {
		return tAll
	}
	var m tmask
	for _, a := range n.alts {
		m |= c.realTypes(a, depth+1)
	}
	return m
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func atoi(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
