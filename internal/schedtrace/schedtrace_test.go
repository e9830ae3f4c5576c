package schedtrace

import (
	"bytes"
	"context"
	"reflect"
	"runtime"
	"runtime/trace"
	"strings"
	"testing"
	"time"
)

//go:noinline
func waitHere(ch chan struct{}) { <-ch }

// spin keeps its P for d without a scheduling point the runtime uses
// before async preemption (10 ms).
//
//go:noinline
func spin(d time.Duration) int {
	n := 0
	for start := time.Now(); time.Since(start) < d; n++ {
	}
	return n
}

// TestWaitForP traces, on one P, a goroutine made runnable while the
// running one keeps the P for 5 ms: its wait shows at the site where it
// blocked, and the P runs goroutines for at least that long.
func TestWaitForP(t *testing.T) {
	if trace.IsEnabled() {
		t.Skip("a trace is already running")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Fatal(err)
	}
	const hold = 5 * time.Millisecond
	func() {
		defer trace.StartRegion(context.Background(), "measured").End()
		ch, done := make(chan struct{}), make(chan struct{})
		go func() { waitHere(ch); close(done) }()
		for deadline := time.Now().Add(time.Second); ; { // until it blocks in waitHere
			runtime.Gosched()
			var st [4096]byte
			if strings.Contains(string(st[:runtime.Stack(st[:], true)]), "waitHere") || time.Now().After(deadline) {
				break
			}
		}
		close(ch)  // runnable, on this P
		spin(hold) // which this goroutine keeps
		<-done
	}()
	spin(2 * time.Millisecond) // outside the region: not counted
	trace.Stop()

	rep, err := Read(bytes.NewReader(buf.Bytes()), "measured")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := rep.Write(&out, 5); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	var w *Wait
	for i := range rep.Waits {
		if rep.Waits[i].Site == "schedtrace.waitHere" {
			w = &rep.Waits[i]
		}
	}
	if w == nil || w.Total < hold || w.N != 1 {
		t.Fatalf("waits %+v: want one wait of at least %v after blocking in schedtrace.waitHere", rep.Waits, hold)
	}
	if len(rep.Busy) < 2 || rep.Busy[1] < hold {
		t.Fatalf("busy %v: want at least %v with one P running", rep.Busy, hold)
	}
	if len(rep.Running) == 0 || rep.Running[0].What != "testing.tRunner" || rep.Running[0].Time < hold {
		t.Fatalf("running %+v: want the test's goroutine (testing.tRunner) first, at least %v", rep.Running, hold)
	}
	if rep.Window < hold || rep.Window > hold+time.Second {
		t.Fatalf("window %v: want the region's time only", rep.Window)
	}
	// One pass for several region types gives each the report of its own pass.
	both, err := ReadRegions(bytes.NewReader(buf.Bytes()), "measured", "")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(both[0], rep) {
		t.Fatalf("ReadRegions' report of the region differs from Read's:\n%+v\n%+v", both[0], rep)
	}
	if all := both[1]; all.Window < rep.Window+2*time.Millisecond {
		t.Fatalf("whole trace %v, region %v: want the spin outside the region counted in the whole trace only", all.Window, rep.Window)
	}
}

// TestReportOrderTies: entries and wait sites with the same time come in
// name order, whatever the maps' iteration order (TestWaitForP once failed
// when Read and ReadRegions listed two 3.136µs entries the other way round).
func TestReportOrderTies(t *testing.T) {
	a := &acc{
		byEntry: map[string]time.Duration{"c": time.Millisecond, "a": time.Microsecond, "b": time.Microsecond, "d": time.Microsecond},
		delays:  map[string][]time.Duration{"y": {time.Microsecond}, "x": {time.Microsecond}, "z": {time.Second}},
	}
	for range 50 {
		rep := a.report()
		var got []string
		for _, r := range rep.Running {
			got = append(got, r.What)
		}
		for _, w := range rep.Waits {
			got = append(got, w.Site)
		}
		if want := []string{"c", "a", "b", "d", "z", "x", "y"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("order %q, want %q", got, want)
		}
	}
}
