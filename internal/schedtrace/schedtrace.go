// Package schedtrace summarises a Go execution trace (runtime/trace) by
// where the processors' time goes: how long 0, 1, 2, ... Ps ran goroutines
// at once, which goroutines ran, and which goroutines waited for a P once
// runnable (by where they had blocked). bench-cluster's --trace prints it
// for the cluster's and the in-process engine's repetitions: several nodes
// sharing a process's Ps show there as waits and idle Ps that a CPU profile
// does not see.
package schedtrace

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/exp/trace"
)

// Report is one region type's summary (or the whole trace's).
type Report struct {
	// Window is the time inside the regions.
	Window time.Duration
	// Busy[k] is the time exactly k Ps ran goroutines.
	Busy []time.Duration
	// Running is the running time of goroutines by their entry function,
	// longest first.
	Running []Share
	// Waits are the runnable-to-running delays, by the function where the
	// goroutine had last blocked ("descheduled in F" when it yielded or was
	// preempted while running F), longest total first.
	Waits []Wait
}

// Share is the running time of one kind of goroutine.
type Share struct {
	What string
	Time time.Duration
}

// Wait summarises the delays of goroutines that became runnable after
// blocking at Site, until a P ran them.
type Wait struct {
	Site            string
	N               int
	Total, P50, P99 time.Duration
}

// Read summarises the trace in r over the regions of type region
// (runtime/trace.StartRegion; "" means the whole trace).
func Read(r io.Reader, region string) (*Report, error) {
	reps, err := ReadRegions(r, region)
	if err != nil {
		return nil, err
	}
	return reps[0], nil
}

// acc accumulates one report while the trace is read.
type acc struct {
	region  string
	depth   int // open regions of this type
	busy    []time.Duration
	byEntry map[string]time.Duration
	delays  map[string][]time.Duration
	window  time.Duration
}

func (a *acc) active() bool { return a.region == "" || a.depth > 0 }

// ReadRegions summarises the trace in r once for each region type, in one
// pass over the trace: the i-th report covers regions[i].
func ReadRegions(r io.Reader, regions ...string) ([]*Report, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("schedtrace: %w", err)
	}
	accs := make([]*acc, len(regions))
	for i, rg := range regions {
		accs[i] = &acc{region: rg, byEntry: map[string]time.Duration{}, delays: map[string][]time.Duration{}}
	}
	var (
		last     trace.Time
		started  bool
		running  = map[trace.GoID]bool{}
		entry    = map[trace.GoID]string{}
		site     = map[trace.GoID]string{}
		runnable = map[trace.GoID]trace.Time{}
	)
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("schedtrace: %w", err)
		}
		now := ev.Time()
		if started && now > last {
			dt := now.Sub(last)
			for _, a := range accs {
				if !a.active() {
					continue
				}
				a.window += dt
				for len(a.busy) <= len(running) {
					a.busy = append(a.busy, 0)
				}
				a.busy[len(running)] += dt
				for g := range running {
					a.byEntry[entry[g]] += dt
				}
			}
		}
		last, started = now, true
		switch ev.Kind() {
		case trace.EventRegionBegin, trace.EventRegionEnd:
			for _, a := range accs {
				if a.region == "" || ev.Region().Type != a.region {
					continue
				}
				if ev.Kind() == trace.EventRegionBegin {
					a.depth++
				} else if a.depth > 0 {
					a.depth--
				}
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			g := st.Resource.Goroutine()
			from, to := st.Goroutine()
			if e, ok := entry[g]; !ok || e == unknown || from == trace.GoNotExist {
				entry[g] = entryOf(st.Stack, from == trace.GoNotExist)
			}
			switch {
			case to == trace.GoRunning:
				running[g] = true
				if t, ok := runnable[g]; ok {
					delete(runnable, g)
					s := site[g]
					if s == "" {
						s = unknown
					}
					for _, a := range accs {
						if a.active() {
							a.delays[s] = append(a.delays[s], now.Sub(t))
						}
					}
				}
			case from == trace.GoRunning:
				delete(running, g)
			}
			switch to {
			case trace.GoRunnable:
				runnable[g] = now
				if from == trace.GoRunning {
					site[g] = "descheduled in " + frameOf(st.Stack)
				} else if from == trace.GoNotExist {
					site[g] = "new goroutine"
				}
			case trace.GoWaiting, trace.GoSyscall:
				site[g] = frameOf(st.Stack)
			case trace.GoNotExist:
				delete(entry, g)
				delete(site, g)
			}
		}
	}
	reps := make([]*Report, len(accs))
	for i, a := range accs {
		reps[i] = a.report()
	}
	return reps, nil
}

// report sorts what a accumulated into a Report.
func (a *acc) report() *Report {
	rep := &Report{Window: a.window, Busy: a.busy}
	for what, d := range a.byEntry {
		rep.Running = append(rep.Running, Share{what, d})
	}
	// Longest first; ties by name, so that a report does not depend on the
	// map's order (ReadRegions and Read must agree).
	slices.SortFunc(rep.Running, func(x, y Share) int { return cmp.Or(cmp.Compare(y.Time, x.Time), strings.Compare(x.What, y.What)) })
	for s, d := range a.delays {
		slices.Sort(d)
		w := Wait{Site: s, N: len(d), P50: d[len(d)/2], P99: d[min(len(d)-1, len(d)*99/100)]}
		for _, x := range d {
			w.Total += x
		}
		rep.Waits = append(rep.Waits, w)
	}
	slices.SortFunc(rep.Waits, func(x, y Wait) int { return cmp.Or(cmp.Compare(y.Total, x.Total), strings.Compare(x.Site, y.Site)) })
	return rep
}

// skipped frames: the runtime's and the standard library's waiting machinery.
var skipped = []string{"runtime.", "sync.", "internal/", "time.", "context.", "syscall."}

// frameOf names the innermost frame of s outside the runtime's machinery.
func frameOf(s trace.Stack) string {
	first := ""
	for f := range s.Frames() {
		if first == "" {
			first = f.Func
		}
		if !hasAnyPrefix(f.Func, skipped) {
			return short(f.Func)
		}
	}
	if first == "" {
		return "(no stack)"
	}
	return short(first)
}

// unknown names what the trace has not shown: a goroutine seen without a
// stack yet (running since before the trace started; its next transition
// with a stack names it), or where a goroutine blocked before the trace.
const unknown = "(unknown)"

// entryOf names a goroutine by its entry function: the stack of its
// creation's transition is its start, otherwise the outermost frame.
func entryOf(s trace.Stack, created bool) string {
	name := ""
	for f := range s.Frames() {
		if created {
			return short(f.Func)
		}
		name = f.Func
	}
	if name == "" {
		return unknown
	}
	return short(name)
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// short drops the import path up to the package name.
func short(fn string) string {
	if i := strings.LastIndexByte(fn, '/'); i >= 0 {
		return fn[i+1:]
	}
	return fn
}

// Write prints the report: the Ps' occupancy, then the top goroutines by
// running time and by waits for a P.
func (r *Report) Write(w io.Writer, top int) error {
	if r.Window <= 0 {
		_, err := fmt.Fprintln(w, "  (no events in the window)")
		return err
	}
	share := func(d time.Duration) float64 { return 100 * float64(d) / float64(r.Window) }
	var b strings.Builder
	fmt.Fprintf(&b, "  window %v; Ps running goroutines:", r.Window.Round(time.Millisecond))
	for k, d := range r.Busy {
		fmt.Fprintf(&b, " %d: %.0f%%", k, share(d))
	}
	fmt.Fprintln(&b)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  running\tof window\tgoroutine (entry)\t")
	for _, s := range r.Running[:min(top, len(r.Running))] {
		fmt.Fprintf(tw, "  %v\t%.1f%%\t%s\t\n", s.Time.Round(100*time.Microsecond), share(s.Time), s.What)
	}
	tw.Flush()
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  waited for a P\tof window\ttimes\tp50\tp99\tafter blocking in\t")
	for _, s := range r.Waits[:min(top, len(r.Waits))] {
		fmt.Fprintf(tw, "  %v\t%.1f%%\t%d\t%v\t%v\t%s\t\n", s.Total.Round(100*time.Microsecond), share(s.Total), s.N,
			s.P50.Round(time.Microsecond), s.P99.Round(time.Microsecond), s.Site)
	}
	tw.Flush()
	_, err := io.WriteString(w, b.String())
	return err
}
