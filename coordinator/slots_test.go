package coordinator

import (
	"testing"

	"github.com/switchyard-serving/switchyard/internal/cluster"
)

func TestNodeSlots(t *testing.T) {
	for _, tc := range []struct {
		meta  map[string]string
		slots int
		want  int
	}{
		{nil, 40, 40},
		{map[string]string{cluster.SlotsMetaKey: "12"}, 40, 12}, // a GPU node's budget
		{map[string]string{cluster.SlotsMetaKey: "90"}, 40, 40}, // the cluster setting still caps
		{map[string]string{cluster.SlotsMetaKey: "0"}, 40, 40},
		{map[string]string{cluster.SlotsMetaKey: "many"}, 40, 40},
	} {
		if got := nodeSlots(cluster.NodeInfo{ID: "e", Meta: tc.meta}, tc.slots); got != tc.want {
			t.Errorf("nodeSlots(%v, %d) = %d, want %d", tc.meta, tc.slots, got, tc.want)
		}
	}
}
