//go:build amd64

// Package streamexp is a stand-alone experiment (its own module, outside
// the engine): how fast one core streams memory as the number of streams,
// software prefetches and vector work per cache line change, in loops
// shaped like the packed kernels. See run.sh and the README's "Two-stream
// kernels on AVX2" section.
package streamexp

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestStreams reads a 256 MiB buffer with every generated loop whose name
// contains $F, three rounds, and prints each loop's GB/s (min, median,
// max).
func TestStreams(t *testing.T) {
	const n = 256 << 20
	buf := make([]byte, n+4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	p := unsafe.Pointer(&buf[0])
	var names []string
	for k := range fns {
		if strings.Contains(k, os.Getenv("F")) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	res := map[string][]float64{}
	for r := 0; r < 3; r++ {
		for _, k := range names {
			t0 := time.Now()
			fns[k](p, n)
			res[k] = append(res[k], n/time.Since(t0).Seconds()/1e9)
		}
	}
	for _, k := range names {
		v := res[k]
		sort.Float64s(v)
		fmt.Printf("%-20s %6.1f %6.1f %6.1f GB/s\n", k, v[0], v[1], v[2])
	}
}
