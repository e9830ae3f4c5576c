package hub

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// progress logs the files being downloaded, at most once per interval.
type progress struct {
	log    *slog.Logger
	mu     sync.Mutex
	active []*fileProg
}

// fileProg is one file being downloaded.
type fileProg struct {
	path  string
	size  int64
	began time.Time
	got   atomic.Int64 // bytes in the part file
	from  atomic.Int64 // bytes there before this run (resumed)

	// Guarded by progress.mu: the last report.
	lastAt  time.Time
	lastGot int64
}

func newProgress(log *slog.Logger) *progress { return &progress{log: log} }

func (p *progress) start(f *file) *fileProg {
	fp := &fileProg{path: f.Path, size: f.Size, began: time.Now()}
	p.mu.Lock()
	defer p.mu.Unlock()
	fp.lastAt = fp.began
	fp.lastGot = -1 // first report: rate since the start
	p.active = append(p.active, fp)
	return fp
}

func (p *progress) finish(fp *fileProg) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active = slices.DeleteFunc(p.active, func(x *fileProg) bool { return x == fp })
}

// run reports every interval until ctx ends.
func (p *progress) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.report()
		}
	}
}

func (p *progress) report() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for _, fp := range p.active {
		got := fp.got.Load()
		since := fp.lastGot
		if since < 0 {
			since = fp.from.Load()
		}
		pct := 100.0
		if fp.size > 0 {
			pct = 100 * float64(got) / float64(fp.size)
		}
		p.log.Info("hub: progress", "file", fp.path,
			"bytes", humanBytes(got)+" / "+humanBytes(fp.size),
			"percent", fmt.Sprintf("%.1f", pct),
			"rate", humanBytes(rate(got-since, now.Sub(fp.lastAt)))+"/s")
		fp.lastAt, fp.lastGot = now, got
	}
}

// rate is n bytes over d, per second.
func rate(n int64, d time.Duration) int64 {
	if d <= 0 || n <= 0 {
		return 0
	}
	return int64(float64(n) / d.Seconds())
}

// humanBytes formats n with a binary unit: "512 B", "1.5 KiB", "4.71 GiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, units := float64(n), []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	u := -1
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	s := fmt.Sprintf("%.2f", v)
	if v >= 100 {
		s = fmt.Sprintf("%.0f", v)
	} else if v >= 10 {
		s = fmt.Sprintf("%.1f", v)
	}
	return strings.TrimSuffix(s, ".0") + " " + units[u]
}
