package grammar

import (
	"bytes"
	"fmt"
	"slices"
)

// Vocab is a model's vocabulary as bytes, with a byte trie of it built once.
// It is immutable and safe for concurrent use; share one per model.
//
// The trie is a slice of nodes; the children of a node are a contiguous block
// (first, n), so scanning them reads memory in order. Tokens are numbered in
// depth-first order ("positions"): the tokens ending at a node are positions
// [lo, end) and its whole subtree is [lo, hi), so accepting a subtree is
// setting a range.
type Vocab struct {
	tokens  [][]byte
	special []bool
	eos     int
	n       int // len(tokens)
	words   int // mask words: (n+63)/64

	trie  []tnode // trie[0] is the root
	order []int32 // [position] token id
	// inTrie has the bits of the tokens in the trie (not special, not empty).
	inTrie []uint64
}

// tnode is a trie node.
type tnode struct {
	lo, end, hi int32 // positions: subtree start, end of those ending here, subtree end
	first       int32 // index of the first child
	n           uint16
	// The children whose whole subtree a string in lexNormal (the usual state
	// inside a string) accepts come first: nSafe of them, at positions
	// [end, safeHi), so walkString takes them as one range.
	nSafe  uint16
	safeHi int32
	// safe bit s: every token below the node, its bytes after the node's
	// prefix lexed from string state s, stays inside the string (no closing
	// quote, nothing invalid). A string state with its bit set accepts the
	// whole subtree without walking it.
	safe uint16
	by   byte // the byte leading to the node (root: 0)
}

// NewVocab builds the vocabulary. tokens[i] is the bytes token i decodes to
// (byte-level: it may be part of a UTF-8 sequence; empty tokens are never
// allowed). special[i] marks control tokens, which are never allowed except
// eos, allowed exactly when the document is complete; special may be shorter
// than tokens (missing entries are false). The slices are kept, not copied:
// do not modify them afterwards. eos must index tokens.
func NewVocab(tokens [][]byte, special []bool, eos int) *Vocab {
	if eos < 0 || eos >= len(tokens) {
		panic(fmt.Sprintf("grammar: eos %d outside the vocabulary of %d tokens", eos, len(tokens)))
	}
	v := &Vocab{tokens: tokens, special: make([]bool, len(tokens)), eos: eos, n: len(tokens), words: (len(tokens) + 63) / 64}
	copy(v.special, special)
	v.special[eos] = true
	ids := make([]int32, 0, len(tokens))
	for i, t := range tokens {
		if !v.special[i] && len(t) > 0 {
			ids = append(ids, int32(i))
		}
	}
	slices.SortFunc(ids, func(a, b int32) int {
		if c := bytes.Compare(tokens[a], tokens[b]); c != 0 {
			return c
		}
		return int(a - b)
	})
	v.trie = append(v.trie, tnode{})
	v.build(ids, 0, 0)
	v.order = make([]int32, 0, len(ids))
	v.number(ids, 0)
	v.inTrie = make([]uint64, v.words)
	for _, id := range ids {
		v.inTrie[id>>6] |= 1 << (id & 63)
	}
	return v
}

// Len is the number of tokens.
func (v *Vocab) Len() int { return v.n }

// build fills node me for ids[lo:hi] (sorted), which share their first depth
// bytes, and its subtree; lo and end are left as the range of ids of the
// tokens ending at the node, for number.
func (v *Vocab) build(ids []int32, depth int, me int32) {
	v.buildRange(ids, 0, int32(len(ids)), depth, me)
}

func (v *Vocab) buildRange(ids []int32, lo, hi int32, depth int, me int32) {
	i := lo
	for i < hi && len(v.tokens[ids[i]]) == depth {
		i++
	}
	end := i
	type group struct{ lo, hi int32 }
	var groups []group
	for i < hi {
		c := v.tokens[ids[i]][depth]
		j := i + 1
		for j < hi && v.tokens[ids[j]][depth] == c {
			j++
		}
		groups = append(groups, group{i, j})
		i = j
	}
	first := int32(len(v.trie))
	for _, grp := range groups {
		v.trie = append(v.trie, tnode{by: v.tokens[ids[grp.lo]][depth]})
	}
	safe := uint16(1<<numLex - 1)
	for k, grp := range groups {
		child := first + int32(k)
		v.buildRange(ids, grp.lo, grp.hi, depth+1, child)
		// States from which the child's byte, then any of its suffixes, stays inside.
		var ok uint16
		for s := range numLex {
			ns, r := lex(uint8(s), int(v.trie[child].by))
			if r == lexIn && v.trie[child].safe&(1<<ns) != 0 {
				ok |= 1 << s
			}
		}
		safe &= ok
	}
	// Children safe from lexNormal first (stable, so still by byte otherwise).
	block := v.trie[first : first+int32(len(groups))]
	slices.SortStableFunc(block, func(a, b tnode) int {
		return boolInt(!safeFromNormal(a)) - boolInt(!safeFromNormal(b))
	})
	n := &v.trie[me]
	n.lo, n.end = lo, end
	n.first, n.n, n.safe = first, uint16(len(groups)), safe
	for _, ch := range block {
		if safeFromNormal(ch) {
			n.nSafe++
		}
	}
}

// safeFromNormal: a string in lexNormal accepts the node's whole subtree.
func safeFromNormal(n tnode) bool {
	ns, r := lex(lexNormal, int(n.by))
	return r == lexIn && n.safe&(1<<ns) != 0
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// number assigns positions depth-first, children in block order.
func (v *Vocab) number(ids []int32, me int32) {
	n := &v.trie[me]
	idsLo, idsEnd := n.lo, n.end
	n.lo = int32(len(v.order))
	v.order = append(v.order, ids[idsLo:idsEnd]...)
	n.end = int32(len(v.order))
	first, cnt, nSafe := n.first, int32(n.n), int32(n.nSafe)
	for k := range cnt {
		v.number(ids, first+k)
		if k == nSafe-1 {
			v.trie[me].safeHi = int32(len(v.order))
		}
	}
	n = &v.trie[me]
	if nSafe == 0 {
		n.safeHi = n.end
	}
	n.hi = int32(len(v.order))
}
