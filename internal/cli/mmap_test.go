package cli

import (
	"os"
	"path/filepath"
	"testing"

	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// TestFitsInMemory: generate copies a model's weights only when its files
// take at most 80% of the available memory; a (sparse) file four times that
// size is read through the map.
func TestFitsInMemory(t *testing.T) {
	avail := trunknode.AvailableMemory()
	if avail <= 0 {
		t.Skip("available memory cannot be read here")
	}
	dir := t.TempDir()
	small := filepath.Join(dir, "small.gguf")
	if err := os.WriteFile(small, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if !fitsInMemory(small) {
		t.Errorf("a 4 KiB model does not fit in %d bytes", avail)
	}
	big := filepath.Join(dir, "big.gguf")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 * avail); err != nil {
		f.Close()
		t.Skipf("cannot make a sparse file of %d bytes: %v", 4*avail, err)
	}
	f.Close()
	if fitsInMemory(big) {
		t.Errorf("a model of %d bytes fits in %d", 4*avail, avail)
	}
}
