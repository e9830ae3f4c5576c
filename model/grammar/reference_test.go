package grammar

import "slices"

// refMask is the plain reference twin of Matcher.Mask: it runs every token's
// bytes through the automaton from the current state, with no trie, no
// shortcut and no cache. allowed[i] reports whether token i is allowed.
func refMask(mt *Matcher) []bool {
	v := mt.v
	allowed := make([]bool, v.n)
	if mt.ended {
		allowed[v.eos] = true
		return allowed
	}
	m := machine{g: mt.g, arena: slices.Clone(mt.m.arena)}
	mark := len(m.arena)
	for i, t := range v.tokens {
		switch {
		case i == v.eos:
			allowed[i] = m.canEnd(mt.tops)
		case v.special[i] || len(t) == 0:
		default:
			next, _ := m.feed(mt.tops, t)
			allowed[i] = next != nil
		}
		m.arena = m.arena[:mark]
	}
	return allowed
}
