package cli

import (
	"os"
	"path/filepath"
	"runtime/trace"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSchedtraceCommand summarises a trace written here, whole and by
// region, and rejects a file that is not a trace and a missing --trace.
func TestSchedtraceCommand(t *testing.T) {
	if trace.IsEnabled() {
		t.Skip("a trace is already running")
	}
	path := filepath.Join(t.TempDir(), "x.trace")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	r := trace.StartRegion(t.Context(), "work")
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := time.Now(); time.Since(start) < 5*time.Millisecond; {
			}
		}()
	}
	wg.Wait()
	r.End()
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--trace", path}, []string{"the whole trace", "Ps running goroutines: 0:", "waited for a P"}},
		{[]string{"--trace", path, "--region", "work", "--top", "3"}, []string{`its "work" regions`, "TestSchedtraceCommand.func1"}},
	} {
		code, out, errOut := run(append([]string{"schedtrace"}, tc.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Fatalf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
	if code, _, errOut := run("schedtrace", "--trace", "schedtrace.go"); code == 0 || !strings.Contains(errOut, "not a Go execution trace") {
		t.Fatalf("a Go source file as a trace: exit %d, %s", code, errOut)
	}
	if code, _, errOut := run("schedtrace"); code == 0 || !strings.Contains(errOut, "--trace is required") {
		t.Fatalf("no --trace: exit %d, %s", code, errOut)
	}
}
