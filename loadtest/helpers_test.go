package loadtest

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// goroutines returns the stacks of every goroutine but the caller's.
func goroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	stacks := strings.Split(strings.TrimSpace(string(buf)), "\n\n")
	return stacks[1:] // the first is the calling goroutine
}

// ours reports the goroutines running this package's non-test code.
func ours() []string {
	var out []string
	for _, g := range goroutines() {
		for _, ln := range strings.Split(g, "\n") {
			if strings.Contains(ln, "/loadtest/") && strings.Contains(ln, ".go:") && !strings.Contains(ln, "_test.go:") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// checkLeaks fails the test if, at cleanup, a goroutine of this package still
// runs or more goroutines run than when it was called, after waiting up to 10s
// for them to end.
func checkLeaks(t *testing.T) { leakCheck(t, true) }

// checkOurLeaks is checkLeaks for tests beside a live cluster, whose nodes
// start and end goroutines of their own (expert streams, gossip, etcd
// watches): only goroutines of this package count.
func checkOurLeaks(t *testing.T) { leakCheck(t, false) }

func leakCheck(t *testing.T, strict bool) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var left []string
		ok := func() bool {
			left = ours()
			return len(left) == 0 && (!strict || runtime.NumGoroutine() <= before)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				if len(left) == 0 {
					left = goroutines()
				}
				t.Errorf("goroutine leak: %d goroutines before, %d after; suspects:\n%s",
					before, runtime.NumGoroutine(), strings.Join(left, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
