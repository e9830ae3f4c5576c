package trunknode

import "testing"

// The default budgets fit the machine: together at most half of what the
// process may use, and never zero.
func TestDefaultMemoryFitsTheMachine(t *testing.T) {
	rec, kv := defaultMemory()
	if rec <= 0 || kv <= 0 {
		t.Fatalf("budgets %d + %d", rec, kv)
	}
	if avail := availableMemory(); avail > 0 && rec+kv > avail/2+1 {
		t.Fatalf("budgets %d + %d exceed half of the %d bytes available", rec, kv, avail)
	}
}
