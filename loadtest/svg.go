package loadtest

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// A small SVG line-chart writer for the HTML report: linear axes with "nice"
// ticks, several named lines, a legend and optional vertical markers.

// line is one named polyline of a chart.
type line struct {
	name   string
	color  string
	pts    [][2]float64 // (x, y) in data units
	dashed bool
}

// chart describes one SVG plot.
type chart struct {
	title, xLabel, yLabel string
	width, height         int       // pixels
	lines                 []line    //
	vlines                []float64 // x positions of dotted markers
	vlabel                string    // label of the markers
	yMin, yMax            float64   // fixed y range when yMax > yMin
	hlines                []float64 // y positions of faint reference lines
}

const (
	padLeft, padRight, padTop, padBottom = 64, 16, 42, 44
)

// niceTicks returns about n round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if !(hi > lo) {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(max(n, 1))
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var ticks []float64
	first, last := math.Floor(lo/step+1e-9), math.Ceil(hi/step-1e-9)
	for k := first; k <= last; k++ {
		ticks = append(ticks, k*step)
	}
	return ticks
}

func fmtTick(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

// svg renders the chart.
func (c *chart) svg() string {
	w, h := c.width, c.height
	if w == 0 {
		w = 560
	}
	if h == 0 {
		h = 320
	}
	xMin, xMax, yMin, yMax := math.Inf(1), math.Inf(-1), 0.0, math.Inf(-1)
	for _, l := range c.lines {
		for _, p := range l.pts {
			xMin, xMax = math.Min(xMin, p[0]), math.Max(xMax, p[0])
			yMax = math.Max(yMax, p[1])
		}
	}
	for _, v := range c.vlines {
		xMin, xMax = math.Min(xMin, v), math.Max(xMax, v)
	}
	if math.IsInf(xMin, 1) {
		xMin, xMax = 0, 1
	}
	if xMin > 0 && xMin < xMax/4 {
		xMin = 0
	}
	if math.IsInf(yMax, -1) || yMax <= 0 {
		yMax = 1
	}
	if c.yMax > c.yMin {
		yMin, yMax = c.yMin, c.yMax
	}
	xt := niceTicks(xMin, xMax, 6)
	yt := niceTicks(yMin, yMax, 5)
	if c.yMax <= c.yMin {
		yMin, yMax = yt[0], yt[len(yt)-1]
	}
	xMin, xMax = xt[0], xt[len(xt)-1]
	if xMax <= xMin {
		xMax = xMin + 1
	}
	pw, ph := float64(w-padLeft-padRight), float64(h-padTop-padBottom)
	px := func(x float64) float64 { return padLeft + (x-xMin)/(xMax-xMin)*pw }
	py := func(y float64) float64 { return padTop + ph - (y-yMin)/(yMax-yMin)*ph }
	esc := html.EscapeString

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`, w, h, w, h)
	fmt.Fprintf(&b, `<title>%s</title>`, esc(c.title))
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="13" font-weight="bold">%s</text>`, padLeft, esc(c.title))
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`, padLeft, padTop, pw, ph)
	for _, t := range xt {
		if t < xMin || t > xMax {
			continue
		}
		x := px(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#eee"/>`, x, padTop, x, padTop+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x, padTop+ph+14, fmtTick(t))
	}
	for _, t := range yt {
		if t < yMin || t > yMax {
			continue
		}
		y := py(t)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`, padLeft, y, padLeft+pw, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`, padLeft-4, y+4, fmtTick(t))
	}
	for _, v := range c.hlines {
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ccc" stroke-dasharray="2,3"/>`, padLeft, y, padLeft+pw, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#888">%s</text>`, padLeft+pw-2, y-2, fmtTick(v))
	}
	for _, v := range c.vlines {
		x := px(v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#888" stroke-dasharray="4,3"/>`, x, padTop, x, padTop+ph)
		if c.vlabel != "" {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#666">%s</text>`, x+3, padTop+12, esc(c.vlabel))
		}
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, padLeft+pw/2, h-6, esc(c.xLabel))
	fmt.Fprintf(&b, `<text transform="translate(14 %.1f) rotate(-90)" text-anchor="middle">%s</text>`, padTop+ph/2, esc(c.yLabel))
	for i, l := range c.lines {
		if len(l.pts) == 0 {
			continue
		}
		var pts strings.Builder
		for _, p := range l.pts {
			fmt.Fprintf(&pts, "%.1f,%.1f ", px(p[0]), py(p[1]))
		}
		dash := ""
		if l.dashed {
			dash = ` stroke-dasharray="6,3"`
		}
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="%s" stroke-width="1.6"%s points="%s"><title>%s</title></polyline>`,
			esc(l.color), dash, strings.TrimSpace(pts.String()), esc(l.name))
		// The legend is one row between the title and the plot.
		ly, lx := 32, padLeft+160*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`, lx, ly-4, lx+18, ly-4, esc(l.color), dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`, lx+22, ly, esc(l.name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// cdfLine turns a Latency's quantile values into CDF points (x = latency, y = fraction).
func cdfLine(name, color string, l Latency) line {
	ln := line{name: name, color: color}
	for i, v := range l.CDF {
		ln.pts = append(ln.pts, [2]float64{v, float64(i) / float64(len(l.CDF)-1)})
	}
	return ln
}
