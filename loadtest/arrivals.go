package loadtest

import (
	"math/rand/v2"
	"time"
)

// Arrivals generates open-loop arrival times: a Poisson process of the given
// rate (exponential inter-arrival gaps), merged with bursts of BurstSize
// simultaneous arrivals at BurstEvery, 2·BurstEvery, ... It is deterministic
// for a seed and not safe for concurrent use.
type Arrivals struct {
	r          *rand.Rand
	rate       float64       // Poisson arrivals per second
	every      time.Duration // burst period (0 = none)
	size       int           // arrivals per burst
	poisson    time.Duration // next Poisson arrival
	nextBurst  time.Duration // time of the next burst
	burstsLeft int           // arrivals still due at nextBurst
}

// NewArrivals returns the arrival process. rate must be > 0; burstEvery and
// burstSize may be 0 for no bursts.
func NewArrivals(rate float64, burstEvery time.Duration, burstSize int, seed uint64) *Arrivals {
	a := &Arrivals{r: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), rate: rate, every: burstEvery, size: burstSize}
	a.poisson = a.gap()
	if a.every > 0 && a.size > 0 {
		a.nextBurst, a.burstsLeft = a.every, a.size
	}
	return a
}

func (a *Arrivals) gap() time.Duration {
	return time.Duration(a.r.ExpFloat64() / a.rate * float64(time.Second))
}

// Next returns the offset from the start of the next arrival; offsets never
// decrease.
func (a *Arrivals) Next() time.Duration {
	if a.burstsLeft > 0 && a.nextBurst <= a.poisson {
		t := a.nextBurst
		if a.burstsLeft--; a.burstsLeft == 0 {
			a.nextBurst += a.every
			a.burstsLeft = a.size
		}
		return t
	}
	t := a.poisson
	a.poisson += a.gap()
	return t
}
