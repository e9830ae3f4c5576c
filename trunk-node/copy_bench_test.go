package trunknode

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// BenchmarkAcquireDuringReplicaCopy: how long another session's Acquire and
// Release take while a replicator copies an idle session over and over
// (cloneIdle), at H-Tiny's Mamba widths (48 heads of 64, state 128, hidden
// 1536) and 40 layers: a 55 MiB recurrent state. Reports the p50 and p99 in
// µs. The copy is made outside the store's lock, so they do not wait for it.
func BenchmarkAcquireDuringReplicaCopy(b *testing.B) {
	c, err := config.Load(filepath.Join(fixtureHF(b), "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	c.Hidden, c.MambaExpand, c.MambaHeads, c.MambaHeadDim, c.MambaDState, c.MambaGroups = 1536, 2, 48, 64, 128, 1
	c.LayerTypes = nil
	for i := range 40 {
		if i%10 == 5 {
			c.LayerTypes = append(c.LayerTypes, config.Attention)
		} else {
			c.LayerTypes = append(c.LayerTypes, config.Mamba)
		}
	}
	rec := hybrid.SizeOf(c).RecurrentBytes
	st := NewStore(MemoryConfig{RecurrentBytes: 1 << 40, KVBytes: 1 << 30}, func() *hybrid.State { return hybrid.NewState(c) }, rec, 1)
	copied, err := st.Create(false)
	if err != nil {
		b.Fatal(err)
	}
	other, err := st.Create(false)
	if err != nil {
		b.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, release, err := st.cloneIdle(copied.ID); err == nil {
				release()
			}
		}
	}()
	lat := make([]float64, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if err := st.Acquire(other, 0); err != nil {
			b.Fatal(err)
		}
		st.Release(other)
		lat = append(lat, float64(time.Since(t0).Nanoseconds())/1e3)
		time.Sleep(200 * time.Microsecond) // a step's work between two
	}
	b.StopTimer()
	close(stop)
	<-done
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-µs")
	b.ReportMetric(lat[len(lat)*99/100], "p99-µs")
	b.ReportMetric(float64(rec>>20), "state-MiB")
}
