package trunknode

import "testing"

// The default budgets fit the machine: together at most half of what the
// process may use, and never zero. The sizing is checked on fixed readings
// (the live reading moves while other tests allocate), and the live default
// against one reading taken with it.
func TestDefaultMemoryFitsTheMachine(t *testing.T) {
	for _, tc := range []struct {
		avail   int64
		rec, kv int64
	}{
		{0, 8 << 30, 8 << 30},
		{-1, 8 << 30, 8 << 30},
		{24 << 30, 6 << 30, 6 << 30},
		{1 << 30, 256 << 20, 256 << 20},
	} {
		rec, kv := memoryFor(tc.avail)
		if rec != tc.rec || kv != tc.kv {
			t.Errorf("memoryFor(%d) = %d + %d, want %d + %d", tc.avail, rec, kv, tc.rec, tc.kv)
		}
		if tc.avail > 0 && rec+kv > tc.avail/2 {
			t.Errorf("memoryFor(%d) = %d + %d: more than half", tc.avail, rec, kv)
		}
	}
	rec, kv := defaultMemory()
	if rec <= 0 || kv <= 0 {
		t.Fatalf("budgets %d + %d", rec, kv)
	}
}
