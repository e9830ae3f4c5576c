package grammar

import "encoding/binary"

// The automaton. A state is a set of stacks (alternatives still alive, from
// anyOf); a stack is a chain of frames, one per open value, each naming its
// node and a small sub-state. Frames live in an arena and point at the frame
// below, so a step that changes the top shares everything under it, and
// backtracking (the vocabulary walk) is truncating the arena.

const (
	maxWS      = 2    // longest whitespace run between tokens (compact output: a model cannot loop on whitespace)
	eof        = 256  // the end-of-text pseudo byte
	maxStacks  = 32   // alternatives kept after each token
	maxInToken = 1024 // alternatives kept while stepping through one token
	acceptTop  = -2   // the "top" a stack becomes when it accepts end of text
	noFrame    = -1   // the frame below the root frame
)

// frame is one open value. What phase, a and b mean depends on the node:
//
//	kRoot:    phase phStart (ws: leading whitespace), phValue, phAfterValue
//	kString:  phase is the lexer state (lexNormal…)
//	kNumber, kInteger: phase is the number state (numMinus…), a the digits
//	          in its current part (integer, fraction or exponent)
//	kLiteral: a is the trie node reached
//	kObject:  phStart/phComma/phAfterValue: a = next, the first property not
//	          passed; phKey: that and b = key trie node; phAfterKey/phColon/phValue:
//	          a = the property being written
//	kMap:     phKey: b = lexer state of the key
//	kArray:   a = items completed (capped at minItems when unbounded)
//
// ws counts the whitespace run in the phases that allow whitespace.
type frame struct {
	node  int32
	a, b  int32
	phase uint8
	ws    uint8
}

// Container phases.
const (
	phStart      uint8 = iota // after '{' or '[' (root: before the value)
	phKey                     // inside a key
	phAfterKey                // after a key, before ':'
	phColon                   // after ':', before the value
	phValue                   // a value is open above this frame
	phAfterValue              // after a value: ',' or the close may come
	phComma                   // after ','
)

// Number states (the JSON number grammar).
const (
	numMinus   uint8 = iota // "-"
	numZero                 // "0" or "-0"; may end
	numInt                  // integer digits; may end
	numDot                  // "1."
	numFrac                 // fraction digits; may end
	numExp                  // "1e"
	numExpSign              // "1e+"
	numExpDig               // exponent digits; may end
)

// String lexer states. lexNormal is at a character boundary; the others are
// inside an escape or a multi-byte UTF-8 sequence (which a token may end in).
const (
	lexNormal uint8 = iota
	lexEsc          // after '\'
	lexHex0         // after "\u"
	lexHex1
	lexHex2
	lexHex3
	lexCont1 // one continuation byte (80–BF) to go
	lexCont2 // two
	lexCont3 // three
	lexE0    // after E0: A0–BF, then one more
	lexED    // after ED: 80–9F (no surrogates), then one more
	lexF0    // after F0: 90–BF, then two more
	lexF4    // after F4: 80–8F (≤ U+10FFFF), then two more
	numLex
)

// lexIn, lexClosed, lexBad: what a byte does to a string.
const (
	lexIn     = 0
	lexClosed = 1
	lexBad    = 2
)

// lexTab[s][c] is the next lexer state (low 4 bits) and the outcome (<<4).
var lexTab [numLex][257]uint8

func init() {
	for s := range numLex {
		for c := 0; c <= eof; c++ {
			ns, r := lexSlow(uint8(s), c)
			lexTab[s][c] = ns | uint8(r)<<4
		}
	}
}

func lex(s uint8, c int) (uint8, int) {
	v := lexTab[s][c]
	return v & 15, int(v >> 4)
}

func lexSlow(s uint8, c int) (uint8, int) {
	in := func(lo, hi int) bool { return c >= lo && c <= hi }
	hex := in('0', '9') || in('a', 'f') || in('A', 'F')
	switch s {
	case lexNormal:
		switch {
		case c == '"':
			return 0, lexClosed
		case c == '\\':
			return lexEsc, lexIn
		case c < 0x20 || c == eof:
			return 0, lexBad
		case c < 0x80:
			return lexNormal, lexIn
		case in(0xC2, 0xDF):
			return lexCont1, lexIn
		case c == 0xE0:
			return lexE0, lexIn
		case c == 0xED:
			return lexED, lexIn
		case in(0xE1, 0xEF):
			return lexCont2, lexIn
		case c == 0xF0:
			return lexF0, lexIn
		case in(0xF1, 0xF3):
			return lexCont3, lexIn
		case c == 0xF4:
			return lexF4, lexIn
		}
	case lexEsc:
		switch c {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			return lexNormal, lexIn
		case 'u':
			return lexHex0, lexIn
		}
	case lexHex0, lexHex1, lexHex2:
		if hex {
			return s + 1, lexIn
		}
	case lexHex3:
		if hex {
			return lexNormal, lexIn
		}
	case lexCont1:
		if in(0x80, 0xBF) {
			return lexNormal, lexIn
		}
	case lexCont2:
		if in(0x80, 0xBF) {
			return lexCont1, lexIn
		}
	case lexCont3:
		if in(0x80, 0xBF) {
			return lexCont2, lexIn
		}
	case lexE0:
		if in(0xA0, 0xBF) {
			return lexCont1, lexIn
		}
	case lexED:
		if in(0x80, 0x9F) {
			return lexCont1, lexIn
		}
	case lexF0:
		if in(0x90, 0xBF) {
			return lexCont2, lexIn
		}
	case lexF4:
		if in(0x80, 0x8F) {
			return lexCont2, lexIn
		}
	}
	return 0, lexBad
}

func isWS(c int) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }

func isDigit(c int) bool { return c >= '0' && c <= '9' }

// Number length limits, so every generated number fits a float64 (and an
// integer an int64) and a model cannot loop on digits.
const (
	maxIntDigits  = 18
	maxFracDigits = 24
	maxExpDigits  = 2
)

// numStep feeds c to a number in state s with n digits in its current part:
// the next state and digit count and ok, or whether the number may end before
// c (c then belongs to what follows).
func numStep(s uint8, n int32, c int, integer bool) (next uint8, nn int32, ok, end bool) {
	switch s {
	case numMinus:
		switch {
		case c == '0':
			return numZero, 1, true, false
		case isDigit(c):
			return numInt, 1, true, false
		}
	case numZero, numInt:
		switch {
		case isDigit(c):
			if s == numInt && n < maxIntDigits {
				return numInt, n + 1, true, false
			}
			return 0, 0, false, false
		case !integer && c == '.':
			return numDot, 0, true, false
		case !integer && (c == 'e' || c == 'E'):
			return numExp, 0, true, false
		}
		return 0, 0, false, true
	case numDot:
		if isDigit(c) {
			return numFrac, 1, true, false
		}
	case numFrac:
		switch {
		case isDigit(c):
			if n < maxFracDigits {
				return numFrac, n + 1, true, false
			}
			return 0, 0, false, false
		case c == 'e' || c == 'E':
			return numExp, 0, true, false
		}
		return 0, 0, false, true
	case numExp:
		switch {
		case c == '+' || c == '-':
			return numExpSign, 0, true, false
		case isDigit(c):
			return numExpDig, 1, true, false
		}
	case numExpSign:
		if isDigit(c) {
			return numExpDig, 1, true, false
		}
	case numExpDig:
		if isDigit(c) {
			if n < maxExpDigits {
				return numExpDig, n + 1, true, false
			}
			return 0, 0, false, false
		}
		return 0, 0, false, true
	}
	return 0, 0, false, false
}

type slot struct {
	f  frame
	up int32 // the frame below, noFrame for the root
}

// machine runs the automaton: the arena of frames and scratch space. Not safe
// for concurrent use.
type machine struct {
	g     *Grammar
	arena []slot
	sets  []int32 // scratch for sets of stack tops
	tmp   []int32
	chain []frame
}

// initial pushes the start state (the root frame) and returns its top.
func (m *machine) initial() int32 {
	return m.push(frame{node: m.g.root, phase: phStart}, noFrame)
}

func (m *machine) push(f frame, up int32) int32 {
	m.arena = append(m.arena, slot{f: f, up: up})
	return int32(len(m.arena) - 1)
}

// repl replaces the top t by f (t itself when f is unchanged, so string
// content allocates nothing).
func (m *machine) repl(t int32, f frame) int32 {
	if m.arena[t].f == f {
		return t
	}
	return m.push(f, m.arena[t].up)
}

// done completes the value open above frame up and returns the new top: up's
// frame moved past the value.
func (m *machine) done(up int32) int32 {
	s := m.arena[up]
	f := s.f
	switch n := &m.g.nodes[f.node]; n.kind {
	case kObject:
		f.a++
	case kArray:
		f.a++
		if n.max < 0 && f.a > n.min {
			f.a = n.min
		}
	}
	f.phase, f.ws = phAfterValue, 0
	return m.push(f, s.up)
}

// closeString returns the top after the closing quote of the string open at
// t: a string value is complete; a map key is followed by ':'.
func (m *machine) closeString(t int32) int32 {
	s := m.arena[t]
	if m.g.nodes[s.f.node].kind == kMap {
		return m.push(frame{node: s.f.node, phase: phAfterKey}, s.up)
	}
	return m.done(s.up)
}

// white handles a whitespace byte in a phase that allows a run of them.
func (m *machine) white(f frame, up int32, out []int32) []int32 {
	if f.ws < maxWS {
		f.ws++
		out = append(out, m.push(f, up))
	}
	return out
}

// start begins a value of node id with its first byte c, above frame up,
// appending the tops of the stacks that accept c (several for anyOf).
func (m *machine) start(id int32, c int, up int32, out []int32) []int32 {
	n := &m.g.nodes[id]
	switch n.kind {
	case kAnyOf:
		for _, a := range n.alts {
			out = m.start(a, c, up, out)
		}
	case kString:
		if c == '"' {
			out = append(out, m.push(frame{node: id, phase: lexNormal}, up))
		}
	case kNumber, kInteger:
		ph, digits := numMinus, int32(0)
		switch {
		case c == '-':
		case c == '0':
			ph, digits = numZero, 1
		case isDigit(c):
			ph, digits = numInt, 1
		default:
			return out
		}
		out = append(out, m.push(frame{node: id, phase: ph, a: digits}, up))
	case kLiteral:
		to := m.g.litChild(n.lit, c)
		switch {
		case to < 0:
		case m.g.lits[to].term >= 0 && len(m.g.lits[to].edges) == 0:
			out = append(out, m.done(up))
		default:
			out = append(out, m.push(frame{node: id, a: to}, up))
		}
	case kObject, kMap:
		if c == '{' {
			out = append(out, m.push(frame{node: id, phase: phStart}, up))
		}
	case kArray:
		if c == '[' {
			out = append(out, m.push(frame{node: id, phase: phStart}, up))
		}
	}
	return out
}

// step feeds byte c (or eof) to the stack whose top is t, appending the tops
// of the resulting stacks to out (none: rejected).
func (m *machine) step(t int32, c int, out []int32) []int32 {
	s := m.arena[t]
	f, up := s.f, s.up
	n := &m.g.nodes[f.node]
	switch n.kind {
	case kString:
		ns, r := lex(f.phase, c)
		switch r {
		case lexIn:
			f.phase = ns
			return append(out, m.repl(t, f))
		case lexClosed:
			return append(out, m.closeString(t))
		}
		return out

	case kNumber, kInteger:
		ns, nd, ok, end := numStep(f.phase, f.a, c, n.kind == kInteger)
		switch {
		case ok:
			f.phase, f.a = ns, nd
			return append(out, m.repl(t, f))
		case end:
			return m.step(m.done(up), c, out)
		}
		return out

	case kLiteral:
		if c != eof {
			if to := m.g.litChild(f.a, c); to >= 0 {
				if m.g.lits[to].term >= 0 && len(m.g.lits[to].edges) == 0 {
					return append(out, m.done(up))
				}
				f.a = to
				return append(out, m.push(f, up))
			}
		}
		if m.g.lits[f.a].term >= 0 { // a number literal that may end here
			return m.step(m.done(up), c, out)
		}
		return out

	case kObject:
		switch f.phase {
		case phStart, phComma:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == '}' && f.phase == phStart:
				if n.canEnd[0] {
					out = append(out, m.done(up))
				}
				return out
			case int(f.a) >= len(n.props) || c == eof:
				return out
			}
			if to := m.g.litChild(n.keys, c); to >= 0 && m.g.keyViable(to, f.a, n.lastKey[f.a]) {
				out = append(out, m.push(frame{node: f.node, phase: phKey, a: f.a, b: to}, up))
			}
		case phKey:
			if c == eof {
				return out
			}
			to := m.g.litChild(f.b, c)
			switch {
			case to < 0 || !m.g.keyViable(to, f.a, n.lastKey[f.a]):
			case m.g.lits[to].term >= 0: // keys are strings: a complete one has no continuation
				out = append(out, m.push(frame{node: f.node, phase: phAfterKey, a: m.g.lits[to].term}, up))
			default:
				f.b = to
				out = append(out, m.push(f, up))
			}
		case phAfterKey:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == ':':
				out = append(out, m.push(frame{node: f.node, phase: phColon, a: f.a}, up))
			}
		case phColon:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == eof:
				return out
			}
			p := m.push(frame{node: f.node, phase: phValue, a: f.a}, up)
			return m.start(n.props[f.a].node, c, p, out)
		case phAfterValue:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == ',' && int(f.a) < len(n.props):
				out = append(out, m.push(frame{node: f.node, phase: phComma, a: f.a}, up))
			case c == '}' && n.canEnd[f.a]:
				out = append(out, m.done(up))
			}
		}
		return out

	case kMap:
		switch f.phase {
		case phStart, phComma:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == '}' && f.phase == phStart:
				out = append(out, m.done(up))
			case c == '"':
				out = append(out, m.push(frame{node: f.node, phase: phKey, b: int32(lexNormal)}, up))
			}
		case phKey:
			ns, r := lex(uint8(f.b), c)
			switch r {
			case lexIn:
				f.b = int32(ns)
				out = append(out, m.repl(t, f))
			case lexClosed:
				out = append(out, m.closeString(t))
			}
		case phAfterKey:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == ':':
				out = append(out, m.push(frame{node: f.node, phase: phColon}, up))
			}
		case phColon:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == eof:
				return out
			}
			p := m.push(frame{node: f.node, phase: phValue}, up)
			return m.start(n.elem, c, p, out)
		case phAfterValue:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == ',':
				out = append(out, m.push(frame{node: f.node, phase: phComma}, up))
			case c == '}':
				out = append(out, m.done(up))
			}
		}
		return out

	case kArray:
		switch f.phase {
		case phStart, phComma:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == ']' && f.phase == phStart:
				if n.min == 0 {
					out = append(out, m.done(up))
				}
				return out
			case c == eof || n.max == 0:
				return out
			}
			p := m.push(frame{node: f.node, phase: phValue, a: f.a}, up)
			return m.start(n.elem, c, p, out)
		case phAfterValue:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == ',' && (n.max < 0 || f.a < n.max):
				out = append(out, m.push(frame{node: f.node, phase: phComma, a: f.a}, up))
			case c == ']' && f.a >= n.min:
				out = append(out, m.done(up))
			}
		}
		return out

	case kRoot:
		switch f.phase {
		case phStart:
			switch {
			case isWS(c):
				return m.white(f, up, out)
			case c == eof:
				return out
			}
			p := m.push(frame{node: f.node, phase: phValue}, up)
			return m.start(n.elem, c, p, out)
		case phAfterValue:
			if c == eof {
				out = append(out, acceptTop)
			}
		}
	}
	return out
}

// dedup removes stacks equal to an earlier one (anyOf alternatives that
// converged) and returns the number kept.
func (m *machine) dedup(s []int32) int {
	k := 0
outer:
	for i := range s {
		for j := 0; j < k; j++ {
			if m.same(s[j], s[i]) {
				continue outer
			}
		}
		s[k] = s[i]
		k++
	}
	return k
}

func (m *machine) same(a, b int32) bool {
	for a != b {
		if a < 0 || b < 0 {
			return false
		}
		sa, sb := m.arena[a], m.arena[b]
		if sa.f != sb.f {
			return false
		}
		a, b = sa.up, sb.up
	}
	return true
}

// feed steps every stack of tops through bs. It returns the surviving tops (a
// slice of m.sets, valid until the next use of m) or, when nothing survives,
// nil and the offset of the byte that killed the last stack. tops must not be
// a slice of m.sets.
func (m *machine) feed(tops []int32, bs []byte) ([]int32, int) {
	m.sets = append(m.sets[:0], tops...)
	for i, c := range bs {
		hi := len(m.sets)
		for j := 0; j < hi; j++ {
			m.sets = m.step(m.sets[j], int(c), m.sets)
		}
		k := m.dedup(m.sets[hi:])
		if k == 0 {
			m.sets = m.sets[:0]
			return nil, i
		}
		k = min(k, maxInToken)
		copy(m.sets, m.sets[hi:hi+k])
		m.sets = m.sets[:k]
	}
	return m.sets, 0
}

// canEnd reports whether some stack of tops accepts end of text.
func (m *machine) canEnd(tops []int32) bool {
	mark := len(m.arena)
	defer func() { m.arena = m.arena[:mark] }()
	for _, t := range tops {
		m.tmp = m.step(t, eof, m.tmp[:0])
		for _, r := range m.tmp {
			if r == acceptTop {
				return true
			}
		}
	}
	return false
}

// compact copies the stacks of tops into a fresh arena (spare's storage), so
// the arena holds only live frames, and appends their new tops to dst. tops
// and dst must not share storage.
func (m *machine) compact(tops []int32, spare []slot, dst []int32) []int32 {
	old := m.arena
	m.arena = spare[:0]
	for _, t := range tops {
		m.chain = m.chain[:0]
		for x := t; x >= 0; x = old[x].up {
			m.chain = append(m.chain, old[x].f)
		}
		up := int32(noFrame)
		for i := len(m.chain) - 1; i >= 0; i-- {
			up = m.push(m.chain[i], up)
		}
		dst = append(dst, up)
	}
	return dst
}

// appendKey appends the encoding of the stack with top t (bottom first) to
// dst: the frames' fields as varints. Equal stacks encode equally, so the
// encoding (of all the stacks, in order) is the mask cache key.
func (m *machine) appendKey(dst []byte, t int32) []byte {
	m.chain = m.chain[:0]
	for x := t; x >= 0; x = m.arena[x].up {
		m.chain = append(m.chain, m.arena[x].f)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.chain)))
	for j := len(m.chain) - 1; j >= 0; j-- {
		f := m.chain[j]
		dst = binary.AppendUvarint(dst, uint64(f.node))
		dst = append(dst, f.phase, f.ws)
		dst = binary.AppendUvarint(dst, uint64(f.a))
		dst = binary.AppendUvarint(dst, uint64(f.b))
	}
	return dst
}
