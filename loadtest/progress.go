package loadtest

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progressInterval is the shortest time between two progress lines.
const progressInterval = 500 * time.Millisecond

// progressLoop rewrites one status line on w until done is closed, then
// writes the last one and a newline.
func (r *runner) progressLoop(w io.Writer, done <-chan struct{}) {
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	var prevTok int64
	var prevDone int64
	prevAt := r.start
	for {
		select {
		case <-done:
			// The last line shows the averages over the whole run.
			prevAt, prevTok, prevDone = r.start, 0, 0
			fmt.Fprintf(w, "\r%s\x1b[K\n", r.progressLine(time.Now(), &prevAt, &prevTok, &prevDone))
			return
		case now := <-t.C:
			fmt.Fprintf(w, "\r%s\x1b[K", r.progressLine(now, &prevAt, &prevTok, &prevDone))
		}
	}
}

// progressLine formats the status: a bar (of the duration or request count,
// whichever is further along), counts, and rates since the previous line.
func (r *runner) progressLine(now time.Time, prevAt *time.Time, prevTok, prevDone *int64) string {
	el := now.Sub(r.start)
	frac := 0.0
	if total := r.cfg.Warmup + r.cfg.Duration; r.cfg.Duration > 0 {
		frac = el.Seconds() / total.Seconds()
	}
	if r.cfg.Requests > 0 {
		frac = max(frac, float64(r.measured.Load())/float64(r.cfg.Requests))
	}
	frac = min(max(frac, 0), 1)
	const width = 20
	fill := int(frac * width)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	tok, completed, failed := r.tokens.Load(), r.completed.Load(), r.failed.Load()
	dt := now.Sub(*prevAt).Seconds()
	tps, rps := 0.0, 0.0
	if dt > 0 {
		tps = float64(tok-*prevTok) / dt
		rps = float64(completed+failed-*prevDone) / dt
	}
	*prevAt, *prevTok, *prevDone = now, tok, completed+failed
	phase := ""
	if el < r.cfg.Warmup || int(r.seq.Load()) <= r.cfg.WarmupRequests && r.cfg.WarmupRequests > 0 {
		phase = "  (warm-up)"
	}
	line := fmt.Sprintf("[%s] %3.0f%% %6.1fs  done %d  errors %d  in-flight %d req / %d sessions  %.0f tok/s  %.1f req/s",
		bar, frac*100, el.Seconds(), completed, failed, r.inReq.Load(), r.inSess.Load(), tps, rps)
	if d := r.dropped.Load(); d > 0 {
		line += fmt.Sprintf("  dropped %d", d)
	}
	return line + phase
}
