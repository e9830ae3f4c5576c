package kernels

import (
	"sync/atomic"
	"testing"
	"time"
)

type dbgTask struct {
	t0    time.Time
	start [4]time.Duration
	ids   atomic.Int64
}

func (d *dbgTask) run(s *scratch) {
	id := d.ids.Add(1) - 1
	d.start[id] = time.Since(d.t0)
	for time.Since(d.t0) < time.Millisecond {
	}
}

func TestDbgPool(t *testing.T) {
	for k := 0; k < 8; k++ {
		d := &dbgTask{t0: time.Now()}
		var s scratch
		parallel(d, 2, &s)
		t.Logf("total %v starts %v %v", time.Since(d.t0), d.start[0], d.start[1])
		if k%2 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}
