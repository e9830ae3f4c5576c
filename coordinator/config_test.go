package coordinator

import (
	"flag"
	"testing"
)

// The coordinator keeps every expert on two nodes by default (one expert
// node's death then stalls no session), and --min-replicas changes it.
func TestMinReplicasDefaultAndFlag(t *testing.T) {
	c := DefaultConfig()
	if c.Placement.MinReplicas != 2 {
		t.Fatalf("default MinReplicas %d, want 2", c.Placement.MinReplicas)
	}
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse([]string{"--min-replicas=3"}); err != nil {
		t.Fatal(err)
	}
	if c.Placement.MinReplicas != 3 {
		t.Fatalf("--min-replicas=3 gave %d", c.Placement.MinReplicas)
	}
}
