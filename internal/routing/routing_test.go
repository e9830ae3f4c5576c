package routing

import (
	"errors"
	"testing"
)

func TestStaticAndValidate(t *testing.T) {
	nodes := []Node{{ID: "b", Addr: "h:2"}, {ID: "a", Addr: "h:1"}, {ID: "c", Addr: "h:3"}}
	tb, err := Static(7, 4, 10, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Validate(); err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for l := range 4 {
		for e := range 10 {
			r := tb.Lookup(l, e)
			if len(r) != 1 {
				t.Fatalf("layer %d expert %d: %v", l, e, r)
			}
			per[r[0].Node]++
		}
	}
	for _, n := range nodes {
		if per[n.ID] < 13 || per[n.ID] > 14 {
			t.Errorf("node %s holds %d of 40", n.ID, per[n.ID])
		}
	}
	if len(tb.Assigned("a")) != per["a"] {
		t.Errorf("Assigned(a) = %d, want %d", len(tb.Assigned("a")), per["a"])
	}
	b, _ := tb.Marshal()
	back, err := Unmarshal(b)
	if err != nil || back.Version != 7 || back.Lookup(3, 9)[0] != tb.Lookup(3, 9)[0] {
		t.Fatalf("round trip: %v %v", back, err)
	}
	if tb.Lookup(4, 0) != nil || tb.Lookup(0, -1) != nil {
		t.Error("out-of-range lookup returned replicas")
	}
	if _, err := Static(1, 1, 1, nil); !errors.Is(err, ErrTable) {
		t.Error("no nodes accepted")
	}
	bad := []func(*Table){
		func(t *Table) { t.Replicas[0][0] = nil },
		func(t *Table) { t.Replicas[1][2] = []Replica{{Node: "zz", Share: 1}} },
		func(t *Table) { t.Nodes[0].Addr = "" },
		func(t *Table) { t.Replicas = t.Replicas[:2] },
	}
	for i, mut := range bad {
		cp, _ := Unmarshal(b)
		mut(cp)
		if err := cp.Validate(); !errors.Is(err, ErrTable) {
			t.Errorf("mutation %d accepted", i)
		}
	}
	if _, err := Unmarshal([]byte("{")); err == nil {
		t.Error("bad JSON accepted")
	}
}
