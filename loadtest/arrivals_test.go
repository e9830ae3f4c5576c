package loadtest

import (
	"math"
	"testing"
	"time"
)

func TestArrivalsPoissonRate(t *testing.T) {
	const rate, n = 200.0, 10000
	a := NewArrivals(rate, 0, 0, 42)
	times := make([]time.Duration, n)
	for i := range times {
		times[i] = a.Next()
		if i > 0 && times[i] < times[i-1] {
			t.Fatalf("arrival %d at %s precedes the previous one at %s", i, times[i], times[i-1])
		}
	}
	// Mean inter-arrival gap: 1/rate within 5%.
	mean := times[n-1].Seconds() / float64(n-1)
	if want := 1 / rate; math.Abs(mean-want) > 0.05*want {
		t.Fatalf("mean gap %.6fs, want %.6fs ± 5%%", mean, want)
	}
	// Exponential gaps: coefficient of variation 1.
	var ss float64
	for i := 1; i < n; i++ {
		d := (times[i] - times[i-1]).Seconds() - mean
		ss += d * d
	}
	if cv := math.Sqrt(ss/float64(n-2)) / mean; math.Abs(cv-1) > 0.05 {
		t.Fatalf("gap coefficient of variation %.3f, want 1 ± 0.05", cv)
	}
	// Poisson counts: in 100ms windows (20 expected each) variance ≈ mean.
	window := 100 * time.Millisecond
	counts := make([]float64, int(times[n-1]/window))
	for _, at := range times {
		if i := int(at / window); i < len(counts) {
			counts[i]++
		}
	}
	var m, v float64
	for _, c := range counts {
		m += c
	}
	m /= float64(len(counts))
	for _, c := range counts {
		v += (c - m) * (c - m)
	}
	v /= float64(len(counts) - 1)
	if d := v / m; d < 0.85 || d > 1.15 {
		t.Fatalf("index of dispersion %.3f (mean %.2f, variance %.2f), want 1 ± 0.15", d, m, v)
	}
}

func TestArrivalsBursts(t *testing.T) {
	const rate, size = 100.0, 25
	a := NewArrivals(rate, time.Second, size, 7)
	at := map[time.Duration]int{}
	var last time.Duration
	n := 0
	for last < 20*time.Second {
		next := a.Next()
		if next < last {
			t.Fatalf("arrival at %s precedes the previous one at %s", next, last)
		}
		last = next
		at[next]++
		n++
	}
	for k := 1; k < 20; k++ {
		if got := at[time.Duration(k)*time.Second]; got < size {
			t.Fatalf("burst %d: %d arrivals at %ds, want >= %d", k, got, k, size)
		}
	}
	// Overall rate: Poisson plus one burst per second.
	if got, want := float64(n)/last.Seconds(), rate+size; math.Abs(got-want) > 0.1*want {
		t.Fatalf("rate %.1f/s, want %.1f/s ± 10%%", got, want)
	}
}

func TestArrivalsDeterministic(t *testing.T) {
	a, b := NewArrivals(50, 0, 0, 3), NewArrivals(50, 0, 0, 3)
	for i := range 100 {
		if x, y := a.Next(), b.Next(); x != y {
			t.Fatalf("draw %d differs for one seed: %s vs %s", i, x, y)
		}
	}
}
