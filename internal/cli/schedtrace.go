package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/switchyard-serving/switchyard/internal/schedtrace"
)

func init() {
	register("schedtrace", "summarise a Go execution trace (a node's /debug/pprof/trace, bench-cluster --trace): busy Ps, running goroutines, waits for a P", runSchedtrace)
}

func runSchedtrace(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("schedtrace", stderr)
	file := fs.String("trace", "", "the trace file, e.g. curl -o node.trace 'http://NODE:9090/debug/pprof/trace?seconds=5' from a node run with --enable-pprof (required)")
	region := fs.String("region", "", "summarise only the time inside trace regions of this type (bench-cluster --trace marks \"cluster\" and \"in-process\"; default: the whole trace)")
	top := fs.Int("top", 12, "goroutines listed in each table")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		fmt.Fprintln(stderr, "switchyard schedtrace: --trace is required")
		fs.Usage()
		return errUsage
	}
	if *top < 1 {
		return fmt.Errorf("--top is %d, want at least 1", *top)
	}
	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := schedtrace.Read(f, *region)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	what := "the whole trace"
	if *region != "" {
		what = fmt.Sprintf("its %q regions", *region)
	}
	fmt.Fprintf(stdout, "execution trace %s, %s:\n", *file, what)
	return rep.Write(stdout, *top)
}
