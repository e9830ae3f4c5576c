package expertnode

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-serving/switchyard/internal/routing"
)

func healthOf(t *testing.T, e *env, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health Check(%q): %v", service, err)
	}
	return r.Status
}

func TestHealthFollowsReadiness(t *testing.T) {
	checkGoroutines(t)
	e := startEnv(t, testConfig(fixtureHF), hooks{})
	services := []string{"", "switchyard.v1.ExpertService"}
	expect := func(want healthpb.HealthCheckResponse_ServingStatus, ready bool) {
		t.Helper()
		for _, svc := range services {
			if got := healthOf(t, e, svc); got != want {
				t.Fatalf("health(%q) = %v, want %v", svc, got, want)
			}
		}
		if e.node.Ready() != ready {
			t.Fatalf("Ready() = %v, want %v", !ready, ready)
		}
		if st := e.stats(t, false); st.Ready != ready {
			t.Fatalf("Stats.Ready = %v, want %v", st.Ready, ready)
		}
	}

	expect(healthpb.HealthCheckResponse_NOT_SERVING, false)
	// A chunk before the first assignment is answered with an error.
	s := e.stream(t)
	mustSend(t, s, randomBatch(rand.New(rand.NewPCG(1, 1)), 1, 0, 2, []uint32{0, 2}))
	wantErrorResult(t, recvAll(t, s, 1)[resultKey{1, 0, 0}], "not ready")

	e.assign(t, staticTable(t, 7))
	expect(healthpb.HealthCheckResponse_SERVING, true)
	st := e.stats(t, false)
	if st.Node != "a" || st.TableVersion != 7 || st.ExpertsLoaded != fxLayers*fxExperts/2 {
		t.Fatalf("Stats = node %q version %d experts %d; want a, 7, %d", st.Node, st.TableVersion, st.ExpertsLoaded, fxLayers*fxExperts/2)
	}

	if err := e.node.Close(); err != nil {
		t.Fatal(err)
	}
	expect(healthpb.HealthCheckResponse_NOT_SERVING, false)
	// The stream stays up; chunks are answered with an error.
	mustSend(t, s, randomBatch(rand.New(rand.NewPCG(1, 1)), 2, 0, 2, []uint32{0, 2}))
	wantErrorResult(t, recvAll(t, s, 1)[resultKey{2, 0, 0}], "closed")
	closeAndDrain(t, s)
	if err := e.node.SetAssignment(staticTable(t, 8)); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetAssignment after Close = %v, want ErrClosed", err)
	}
}

func TestSetAssignmentRejects(t *testing.T) {
	checkGoroutines(t)
	n, err := New(testConfig(fixtureHF))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	wrongShape, err := routing.Static(1, fxLayers, fxExperts+1, []routing.Node{{ID: "a", Addr: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	incomplete := routing.NewTable(1, fxLayers, fxExperts)
	for _, tc := range []struct {
		name string
		tb   *routing.Table
	}{
		{"nil table", nil},
		{"incomplete table", incomplete},
		{"shape differs from model", wrongShape},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := n.SetAssignment(tc.tb); !errors.Is(err, ErrAssignment) {
				t.Fatalf("SetAssignment = %v, want ErrAssignment", err)
			}
			if n.Ready() {
				t.Fatal("node ready after a refused table")
			}
		})
	}
}

// TestSetAssignmentSwap checks the make-before-break swap: a round that started
// on the old assignment finishes on it, the old mapping is closed only after
// that round, and later chunks see the new assignment.
func TestSetAssignmentSwap(t *testing.T) {
	for _, dev := range testDevices() {
		t.Run(dev, func(t *testing.T) { testSetAssignmentSwap(t, dev) })
	}
}

func testSetAssignmentSwap(t *testing.T, dev string) {
	checkGoroutines(t)
	g := newGate()
	cfg := testConfig(fixtureHF)
	cfg.Device = dev
	e := startEnv(t, cfg, g.hooks())
	t.Cleanup(g.open) // runs before the env's cleanups
	full := fullModel(t)
	v1, v2 := staticTable(t, 1), swappedTable(t, 2)
	e.assign(t, v1)
	half := fxLayers * fxExperts / 2
	// A CPU node copies its assignment into memory (the default) through its
	// expert cache; a GPU node maps the file and copies nothing.
	wantCopied := func(when string, n int) {
		t.Helper()
		if e.node.gpu != nil {
			n = 0
		}
		if got := e.node.experts.Len(); got != n {
			t.Errorf("%s: %d experts copied, want %d", when, got, n)
		}
	}
	wantCopied("v1", half)
	held1, held2 := heldBy(v1, "a"), heldBy(v2, "a")
	rng := rand.New(rand.NewPCG(2, 2))

	s := e.stream(t)
	old := randomBatch(rng, 1, 3, 5, held1[3])
	mustSend(t, s, old)
	// The round has taken a reference to the v1 shard and waits at the gate.
	waitFor(t, 10*time.Second, "chunk queued", func() bool { n, _ := e.node.q.state(); return n == 1 })
	e.node.mu.Lock()
	sh1 := e.node.cur
	e.node.mu.Unlock()

	e.assign(t, v2)
	select {
	case <-sh1.closed:
		t.Fatal("old mapping closed while a round still uses it")
	default:
	}
	wantCopied("v2 while a round holds v1", 2*half) // disjoint assignments
	g.open()
	checkResultOn(t, dev, full, old, recvAll(t, s, 1)[resultKey{1, 3, 0}])
	waitFor(t, 10*time.Second, "old mapping closed", func() bool {
		select {
		case <-sh1.closed:
			return true
		default:
			return false
		}
	})

	wantCopied("v2 after v1 closed", half)

	// New chunks see the v2 assignment.
	mustSend(t, s, randomBatch(rng, 2, 3, 5, held1[3]))
	wantErrorResult(t, recvAll(t, s, 1)[resultKey{2, 3, 0}], "not assigned")
	fresh := randomBatch(rng, 3, 3, 5, held2[3])
	mustSend(t, s, fresh)
	checkResultOn(t, dev, full, fresh, recvAll(t, s, 1)[resultKey{3, 3, 0}])

	// Stale and repeated versions; a new version with the same assignment keeps the mapping.
	if err := e.node.SetAssignment(v1); !errors.Is(err, ErrStaleTable) {
		t.Fatalf("SetAssignment(v1 after v2) = %v, want ErrStaleTable", err)
	}
	e.node.mu.Lock()
	sh2 := e.node.cur
	e.node.mu.Unlock()
	e.assign(t, swappedTable(t, 2))
	e.assign(t, swappedTable(t, 3))
	e.node.mu.Lock()
	same := e.node.cur == sh2
	e.node.mu.Unlock()
	if !same {
		t.Fatal("same assignment under a new version reloaded the checkpoint")
	}
	if st := e.stats(t, false); st.TableVersion != 3 || st.ExpertsLoaded != fxLayers*fxExperts/2 {
		t.Fatalf("Stats: version %d experts %d, want 3 and %d", st.TableVersion, st.ExpertsLoaded, fxLayers*fxExperts/2)
	}
	if e.node.gpu != nil {
		// Only the current assignment's experts stay on the GPU once the old
		// shard is released.
		if got := e.node.gpu.experts.Resident(); got != fxLayers*fxExperts/2 {
			t.Fatalf("%d experts resident on the GPU, want %d", got, fxLayers*fxExperts/2)
		}
	}
	closeAndDrain(t, s)
}
