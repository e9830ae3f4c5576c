// Package routing defines the routing table that trunk nodes follow: for every
// (layer, expert) the expert nodes that hold a replica and the share of traffic each
// should take, plus the nodes' addresses. The coordinator publishes versions of it
// in etcd; trunk nodes switch to a new version at a step boundary. The type is pure
// data with JSON encoding; it does no I/O.
package routing

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// ErrTable reports an inconsistent routing table.
var ErrTable = errors.New("routing: invalid table")

// Replica is one copy of an expert on a node.
type Replica struct {
	Node  string  `json:"node"`  // expert node id
	Share float64 `json:"share"` // fraction of the expert's traffic this replica should take
}

// Node is an expert node as the data plane needs it.
type Node struct {
	ID   string `json:"id"`
	Addr string `json:"addr"` // host:port of its ExpertService
}

// Table is one version of the routing table. Treat it as immutable once published.
type Table struct {
	Version uint64 `json:"version"`
	Layers  int    `json:"layers"`
	Experts int    `json:"experts"`
	Nodes   []Node `json:"nodes"`
	// Replicas[layer][expert] lists the replicas of that expert, never empty for a
	// complete table.
	Replicas [][][]Replica `json:"replicas"`
	// Imbalance is the placement's predicted max/mean node load (0: unknown).
	Imbalance float64 `json:"imbalance,omitempty"`
}

// NewTable returns an empty table for the given model shape.
func NewTable(version uint64, layers, experts int) *Table {
	t := &Table{Version: version, Layers: layers, Experts: experts, Replicas: make([][][]Replica, layers)}
	for l := range t.Replicas {
		t.Replicas[l] = make([][]Replica, experts)
	}
	return t
}

// Lookup returns the replicas of (layer, expert); nil when out of range.
func (t *Table) Lookup(layer, expert int) []Replica {
	if t == nil || layer < 0 || layer >= len(t.Replicas) || expert < 0 || expert >= len(t.Replicas[layer]) {
		return nil
	}
	return t.Replicas[layer][expert]
}

// Addr returns the address of a node id.
func (t *Table) Addr(node string) (string, bool) {
	for _, n := range t.Nodes {
		if n.ID == node {
			return n.Addr, true
		}
	}
	return "", false
}

// Assigned returns, for one node, the (layer, expert) pairs it must hold.
func (t *Table) Assigned(node string) map[[2]int]bool {
	out := map[[2]int]bool{}
	for l, row := range t.Replicas {
		for e, reps := range row {
			for _, r := range reps {
				if r.Node == node {
					out[[2]int{l, e}] = true
				}
			}
		}
	}
	return out
}

// Validate checks shape, that every replica names a known node, and that every
// expert has at least one replica.
func (t *Table) Validate() error {
	if t.Layers != len(t.Replicas) {
		return fmt.Errorf("%w: %d layers but %d replica rows", ErrTable, t.Layers, len(t.Replicas))
	}
	known := map[string]bool{}
	for _, n := range t.Nodes {
		if n.ID == "" || n.Addr == "" {
			return fmt.Errorf("%w: node %q has no id or address", ErrTable, n.ID)
		}
		known[n.ID] = true
	}
	for l, row := range t.Replicas {
		if len(row) != t.Experts {
			return fmt.Errorf("%w: layer %d has %d experts, want %d", ErrTable, l, len(row), t.Experts)
		}
		for e, reps := range row {
			if len(reps) == 0 {
				return fmt.Errorf("%w: layer %d expert %d has no replica", ErrTable, l, e)
			}
			for _, r := range reps {
				if !known[r.Node] {
					return fmt.Errorf("%w: layer %d expert %d on unknown node %q", ErrTable, l, e, r.Node)
				}
			}
		}
	}
	return nil
}

// Marshal encodes the table as JSON (its etcd form).
func (t *Table) Marshal() ([]byte, error) { return json.Marshal(t) }

// Unmarshal decodes and validates a table.
func Unmarshal(b []byte) (*Table, error) {
	var t Table
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTable, err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// Static spreads every expert of every layer across the given nodes round-robin
// (one replica each, offset per layer so each node gets a mix), the assignment used
// until measured load is available.
func Static(version uint64, layers, experts int, nodes []Node) (*Table, error) {
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%w: no expert nodes", ErrTable)
	}
	ns := append([]Node(nil), nodes...)
	sort.Slice(ns, func(a, b int) bool { return ns[a].ID < ns[b].ID })
	t := NewTable(version, layers, experts)
	t.Nodes = ns
	for l := range layers {
		for e := range experts {
			t.Replicas[l][e] = []Replica{{Node: ns[(e+l)%len(ns)].ID, Share: 1}}
		}
	}
	return t, nil
}

// Union returns a table holding every replica of a and b (b's version, nodes of
// both): during a make-before-break rollout expert nodes load the union so both
// the old and the new routing are served.
func Union(a, b *Table) *Table {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	u := NewTable(b.Version, b.Layers, b.Experts)
	seen := map[string]bool{}
	for _, t := range []*Table{b, a} {
		for _, n := range t.Nodes {
			if !seen[n.ID] {
				seen[n.ID] = true
				u.Nodes = append(u.Nodes, n)
			}
		}
	}
	for l := range u.Replicas {
		for e := range u.Replicas[l] {
			has := map[string]bool{}
			for _, t := range []*Table{b, a} {
				for _, r := range t.Lookup(l, e) {
					if !has[r.Node] {
						has[r.Node] = true
						u.Replicas[l][e] = append(u.Replicas[l][e], r)
					}
				}
			}
		}
	}
	return u
}
