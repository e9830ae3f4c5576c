package trunknode

import (
	"os"
	"strconv"
	"strings"
)

// defaultMemory sizes the session budgets from the memory this process may
// use (the smaller of the host's available memory and the cgroup limit, as in
// a Kubernetes pod): half of it, split evenly between recurrent state and KV.
// Fixed budgets larger than the machine would let sessions be admitted until
// the kernel kills the process. Without a reading it falls back to 8+8 GiB.
func defaultMemory() (recurrent, kv int64) { return memoryFor(availableMemory()) }

// memoryFor is defaultMemory's sizing for a given reading of the available
// bytes (0 or less: no reading).
func memoryFor(avail int64) (recurrent, kv int64) {
	if avail <= 0 {
		return 8 << 30, 8 << 30
	}
	return avail / 4, avail / 4
}

// AvailableMemory is the memory this process may still use: min(MemAvailable,
// cgroup limit - cgroup usage), in bytes (0 when neither can be read). The
// CLI sizes its own choices by it too.
func AvailableMemory() int64 { return availableMemory() }

// availableMemory is min(MemAvailable, cgroup limit - cgroup usage), in bytes
// (0 when neither can be read).
func availableMemory() int64 {
	var best int64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					best = kb << 10
				}
			}
		}
	}
	limit, used := cgroupMemory()
	if limit > 0 {
		if left := limit - used; left > 0 && (best == 0 || left < best) {
			best = left
		}
	}
	return best
}

// cgroupMemory reads the cgroup v2 (or v1) memory limit and usage; limit 0
// means none.
func cgroupMemory() (limit, used int64) {
	read := func(path string) int64 {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v >= 1<<60 { // v1 reports "no limit" as a huge number
			return 0
		}
		return v
	}
	if limit = read("/sys/fs/cgroup/memory.max"); limit > 0 {
		return limit, read("/sys/fs/cgroup/memory.current")
	}
	return read("/sys/fs/cgroup/memory/memory.limit_in_bytes"), read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
}
