package membership

import (
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/internal/testutil"
)

var waitFor = testutil.WaitFor

// Three members (encrypted gossip) find each other through one seed; a member
// that stops without leaving is reported dead to the others; rejoining clears it;
// a member with another key cannot join.
func TestFailureDetection(t *testing.T) {
	key := []byte("0123456789abcdef")
	start := func(id, role string, k []byte) *Membership {
		m, err := Start(Config{Meta: Meta{ID: id, Role: role, Addr: "127.0.0.1:1"}, SecretKey: k})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a, b, c := start("t0", "trunk", key), start("e0", "expert", key), start("e1", "expert", key)
	defer a.Shutdown()
	defer b.Shutdown()
	for _, m := range []*Membership{b, c} {
		if n, err := m.Join([]string{a.Addr()}); err != nil || n != 1 {
			t.Fatalf("join: %d %v", n, err)
		}
	}
	waitFor(t, "three members", func() bool { return len(a.Members()) == 3 && len(c.Members()) == 3 })
	c.Shutdown() // crash: no leave message
	waitFor(t, "e1 reported dead", func() bool { return a.Dead()["e1"] && b.Dead()["e1"] })
	if len(a.Members()) != 2 {
		t.Fatalf("members after failure: %v", a.Members())
	}
	// A restarted e1 (same id, new port) is accepted once the dead name may be
	// reclaimed; it keeps re-joining until then, as the node's join loop does.
	c2 := start("e1", "expert", key)
	defer c2.Shutdown()
	last := time.Time{}
	waitFor(t, "e1 back", func() bool {
		if time.Since(last) > 200*time.Millisecond {
			last = time.Now()
			c2.Join([]string{a.Addr()})
		}
		return !a.Dead()["e1"]
	})
	bad := start("x", "expert", []byte("fedcba9876543210"))
	defer bad.Shutdown()
	if n, err := bad.Join([]string{a.Addr()}); err == nil || n > 0 {
		t.Fatalf("member with the wrong gossip key joined %d nodes (err %v)", n, err)
	}
}
